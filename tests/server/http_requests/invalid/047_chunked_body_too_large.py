"""A chunked body that grows past limit_request_body."""

error = (413, 'request body too large')
limits = {'limit_request_line': 32,
 'limit_request_fields': 3,
 'limit_request_field_size': 32,
 'limit_request_body': 10}
