"""Whitespace between field name and colon MUST be rejected (RFC 9112 5.1)."""

error = (400, 'header')
