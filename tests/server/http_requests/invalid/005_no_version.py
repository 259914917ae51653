"""A request line without HTTP-version."""

error = (400, 'HTTP/')
