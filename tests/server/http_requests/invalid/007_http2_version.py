"""A major version this server does not implement: 505 (RFC 9110 15.6.6)."""

error = (505, 'version')
xfail = "the parser accepts 'HTTP/2.0' as an HTTP/1.x request (version '2.0')"
