"""A hex length."""

error = (400, 'Content-Length')
