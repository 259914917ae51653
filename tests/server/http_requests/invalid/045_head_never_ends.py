"""A field that never ends is refused before it is complete."""

error = (431, 'request head too large')
limits = {'limit_request_line': 32,
 'limit_request_fields': 3,
 'limit_request_field_size': 32,
 'limit_request_body': 10}
