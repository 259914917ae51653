"""Empty field values."""

requests = [{'method': 'GET',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'), (b'x-empty', b''), (b'x-blank', b'')],
  'body': b'',
  'keep_alive': True}]
