"""Connection: close ends keep-alive."""

requests = [{'method': 'GET',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'), (b'connection', b'close')],
  'body': b'',
  'keep_alive': False}]
