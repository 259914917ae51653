"""A space inside the request target."""

error = (400, 'HTTP/')
