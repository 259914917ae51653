"""DEL is not a field-vchar."""

error = (400, 'header value')
