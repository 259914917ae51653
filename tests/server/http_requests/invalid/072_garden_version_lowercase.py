"""HTTP Garden: 'http/1.1'; h11: 400 illegal request line."""

error = (400, 'HTTP/')
