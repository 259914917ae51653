"""Two different lengths (RFC 9112 6.3)."""

error = (400, 'Content-Length')
