"""More data than the chunk size said."""

error = (400, 'chunk data')
