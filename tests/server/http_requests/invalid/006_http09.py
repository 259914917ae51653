"""An HTTP/0.9 simple request is not HTTP/1.1 (RFC 9112 3, Appendix C.1)."""

error = (400, 'version')
