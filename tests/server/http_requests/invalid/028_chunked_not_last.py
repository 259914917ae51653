"""chunked must be the final coding of a request (RFC 9112 6.3)."""

error = (400, 'Transfer-Encoding')
