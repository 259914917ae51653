"""NUL in a field name."""

error = (400, 'header')
