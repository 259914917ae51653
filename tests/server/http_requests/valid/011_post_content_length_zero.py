"""An empty body framed by Content-Length: 0."""

requests = [{'method': 'POST',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'), (b'content-length', b'0')],
  'body': b'',
  'keep_alive': True,
  'content_length': 0}]
