"""The smallest HTTP/1.1 request."""

requests = [{'method': 'GET',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True,
  'target': b'/',
  'content_length': None,
  'chunked': False,
  'expect_continue': False,
  'upgrade': False}]
