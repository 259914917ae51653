"""A CR inside a field value."""

error = (400, 'LF')
