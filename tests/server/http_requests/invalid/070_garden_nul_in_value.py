"""HTTP Garden: NUL in a value; h11: 400."""

error = (400, 'header value')
