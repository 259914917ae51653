"""Encoded '/', '?', '#' and space decode into the path; they split nothing."""

requests = [{'method': 'GET',
  'path': '/a/b?c#d e',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True}]
