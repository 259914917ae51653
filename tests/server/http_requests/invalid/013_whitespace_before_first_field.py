"""Whitespace between the start line and the first field line (RFC 9112 2.2)."""

error = (400, 'space')
