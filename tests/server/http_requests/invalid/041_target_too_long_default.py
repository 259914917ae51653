"""A target over the default limit_request_line (4094)."""

error = (414, 'too long')
