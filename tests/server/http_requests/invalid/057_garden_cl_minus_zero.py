"""HTTP Garden: Content-Length '-0'; h11: 400."""

error = (400, 'Content-Length')
