"""A TLS ClientHello on the plain-text port."""

error = (400, 'method')
