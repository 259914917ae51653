"""An HTTP/0.9 simple request is not HTTP/1.1 (RFC 9112 3, Appendix C.1)."""

error = (400, 'version')
xfail = 'llhttp accepts a request line without HTTP-version as an HTTP/0.9 request'
