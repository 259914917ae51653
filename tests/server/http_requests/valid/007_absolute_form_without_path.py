"""absolute-form with an empty path means '/'."""

requests = [{'method': 'GET',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True}]
