"""A coding that is not chunked last: the length cannot be determined (RFC 9112 6.3)."""

error = (400, 'Transfer-Encoding')
