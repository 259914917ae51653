"""Transfer-Encoding in HTTP/1.0 means faulty framing (RFC 9112 6.1)."""

error = (400, 'Transfer-Encoding')
xfail = 'the parser decodes a chunked body sent with HTTP/1.0 instead of treating the framing as faulty'
