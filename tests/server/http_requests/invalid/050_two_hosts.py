"""More than one Host field line MUST get 400 (RFC 9112 3.2)."""

error = (400, 'host')
