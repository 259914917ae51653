"""HTTP/1.0 without Host; the connection closes after it."""

requests = [{'method': 'GET',
  'path': '/old',
  'query_string': b'',
  'version': '1.0',
  'headers': [],
  'body': b'',
  'keep_alive': False}]
