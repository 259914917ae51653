"""A list as Content-Length: rejected, which RFC 9110 8.6 allows."""

error = (400, 'Content-Length')
