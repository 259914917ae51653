"""A field line without ':'."""

error = (400, 'header')
