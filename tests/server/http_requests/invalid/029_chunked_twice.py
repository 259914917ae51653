"""chunked applied twice (RFC 9112 6.1)."""

error = (400, 'Transfer-Encoding')
