"""A bare CR (RFC 9112 2.2)."""

error = (400, 'CRLF')
