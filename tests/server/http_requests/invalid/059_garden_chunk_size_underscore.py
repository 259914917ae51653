"""HTTP Garden: chunk size '1_0'; h11: 400."""

error = (400, 'chunk size')
