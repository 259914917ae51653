"""An HTTP/1.1 request without Host MUST get 400 (RFC 9112 3.2)."""

error = (400, 'host')
