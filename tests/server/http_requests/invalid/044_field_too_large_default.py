"""A field over the default limit_request_field_size (8190)."""

error = (431, 'header field too large')
