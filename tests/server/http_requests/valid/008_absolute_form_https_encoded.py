"""absolute-form with https and an encoded path."""

requests = [{'method': 'GET',
  'path': '/x y',
  'query_string': b'q=1',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True}]
