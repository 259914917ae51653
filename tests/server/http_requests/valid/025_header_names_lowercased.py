"""Names are lower-cased, values are kept as sent."""

requests = [{'method': 'GET',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'), (b'content-type', b'Text/HTML')],
  'body': b'',
  'keep_alive': True}]
