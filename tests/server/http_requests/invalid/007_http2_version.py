"""A major version this server does not implement: 505 (RFC 9110 15.6.6)."""

error = (505, 'version')
