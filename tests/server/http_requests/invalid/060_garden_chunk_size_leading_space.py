"""HTTP Garden: whitespace before a chunk size; h11: 400."""

error = (400, 'chunk size')
