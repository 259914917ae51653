"""No length in a request means no body (RFC 9112 6.3); what follows is no request."""

error = (400, 'after')
