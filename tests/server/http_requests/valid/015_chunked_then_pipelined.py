"""A request after a chunked body on the same connection."""

requests = [{'method': 'POST',
  'path': '/a',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'), (b'transfer-encoding', b'chunked')],
  'body': b'hi',
  'keep_alive': True,
  'chunked': True},
 {'method': 'GET',
  'path': '/b',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True}]
