"""One field over limit_request_fields."""

error = (431, 'too many header fields')
limits = {'limit_request_line': 32,
 'limit_request_fields': 3,
 'limit_request_field_size': 32,
 'limit_request_body': 10}
