"""HTTP-name is case-sensitive (RFC 9112 2.3)."""

error = (400, 'HTTP/')
