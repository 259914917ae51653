"""A chunk size that is not hex."""

error = (400, 'chunk size')
