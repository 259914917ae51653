"""A target one byte over limit_request_line."""

error = (414, 'request target too long')
limits = {'limit_request_line': 32,
 'limit_request_fields': 3,
 'limit_request_field_size': 32,
 'limit_request_body': 10}
