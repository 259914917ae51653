"""'(' is not a token character."""

error = (400, 'method')
