"""The query string stays raw bytes, the path is split off at the first '?'."""

requests = [{'method': 'GET',
  'path': '/search',
  'query_string': b'q=shm+channels&lang=en&empty=',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True}]
