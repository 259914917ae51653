"""HTTP Garden: 'Content-Length\x85' (a name that strips to Content-Length); h11: 400."""

error = (400, 'header')
