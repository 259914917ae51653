"""A framing field in the trailer section."""

error = (400, 'Content-Length')
