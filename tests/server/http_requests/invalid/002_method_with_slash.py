"""No space after the method."""

error = (400, 'method')
