"""Both framings: a request smuggling vector, rejected (RFC 9112 6.1 allows it; gunicorn and h11 do)."""

error = (400, 'Content-Length')
