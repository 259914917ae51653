"""Target, field size, field count and body exactly at their limits are accepted."""

requests = [{'method': 'POST',
  'path': '/ppppppppppppppppppppppppppppppp',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'),
              (b'x-f', b'vvvvvvvvvvvvvvvvvvvvvvvvvvvvv'),
              (b'content-length', b'10')],
  'body': b'0123456789',
  'keep_alive': True}]
limits = {'limit_request_line': 32,
 'limit_request_fields': 3,
 'limit_request_field_size': 32,
 'limit_request_body': 10}
