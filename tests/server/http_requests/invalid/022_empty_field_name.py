"""A field line with an empty name."""

error = (400, 'header')
