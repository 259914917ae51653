"""A query on the root."""

requests = [{'method': 'GET',
  'path': '/',
  'query_string': b'a=1&b=%20&c',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True}]
