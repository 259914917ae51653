"""Expect: 100-continue on HTTP/1.1 asks for an interim response."""

requests = [{'method': 'POST',
  'path': '/upload',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'), (b'expect', b'100-continue'), (b'content-length', b'5')],
  'body': b'hello',
  'keep_alive': True,
  'expect_continue': True,
  'content_length': 5}]
