"""HEAD."""

requests = [{'method': 'HEAD',
  'path': '/doc',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True}]
