"""Whitespace between version and CRLF."""

error = (400, 'CRLF')
