"""Trailing whitespace is not part of a field value either (RFC 9112 5.1, RFC 9110 5.5)."""

requests = [{'method': 'GET',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'), (b'content-length', b'3')],
  'body': b'abc',
  'keep_alive': True,
  'content_length': 3}]
