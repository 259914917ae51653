"""obs-text (0x80-0xFF) in a field value is allowed and kept as bytes (RFC 9110 5.5)."""

requests = [{'method': 'GET',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'), (b'x-name', b'caf\xe9 \xff')],
  'body': b'',
  'keep_alive': True}]
