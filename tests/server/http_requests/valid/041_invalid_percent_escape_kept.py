"""'%25' decodes to '%'; an invalid escape is kept as it is."""

requests = [{'method': 'GET',
  'path': '/100%/%zz',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True}]
