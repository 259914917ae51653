"""Transfer-Encoding in HTTP/1.0 means faulty framing (RFC 9112 6.1)."""

error = (400, 'Transfer-Encoding')
