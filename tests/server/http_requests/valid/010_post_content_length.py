"""A body framed by Content-Length."""

requests = [{'method': 'POST',
  'path': '/submit',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'),
              (b'content-type', b'application/x-www-form-urlencoded'),
              (b'content-length', b'11')],
  'body': b'a=1&b=hello',
  'keep_alive': True,
  'content_length': 11,
  'chunked': False}]
