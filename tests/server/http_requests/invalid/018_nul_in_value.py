"""NUL in a field value (RFC 9110 5.5)."""

error = (400, 'header value')
