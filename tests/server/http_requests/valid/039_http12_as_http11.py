"""A higher minor version is processed as the highest one the server implements (RFC 9110 2.5)."""

requests = [{'method': 'GET',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True}]
xfail = "llhttp refuses HTTP/1.2 with 400 'Invalid HTTP version' instead of treating it as HTTP/1.1"
