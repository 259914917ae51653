"""A control character in a value."""

error = (400, 'header value')
