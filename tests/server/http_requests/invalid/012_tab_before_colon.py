"""A tab between name and colon."""

error = (400, 'header')
