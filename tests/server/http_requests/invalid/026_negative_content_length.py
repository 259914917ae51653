"""A negative length."""

error = (400, 'Content-Length')
