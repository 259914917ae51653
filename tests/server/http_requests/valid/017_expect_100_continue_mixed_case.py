"""The expectation is case-insensitive (RFC 9110 10.1.1)."""

requests = [{'method': 'POST',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'), (b'expect', b'100-Continue'), (b'content-length', b'2')],
  'body': b'ok',
  'keep_alive': True,
  'expect_continue': True}]
