"""HTTP Garden: Content-Length '+1_0' (Python int() accepts it); h11: 400 bad Content-Length."""

error = (400, 'Content-Length')
