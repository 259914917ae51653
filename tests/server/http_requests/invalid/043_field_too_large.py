"""name + value one byte over limit_request_field_size."""

error = (431, 'header field too large')
limits = {'limit_request_line': 32,
 'limit_request_fields': 3,
 'limit_request_field_size': 32,
 'limit_request_body': 10}
