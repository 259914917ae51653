"""An HTTP/1.0 client's 100-continue is ignored (RFC 9110 10.1.1)."""

requests = [{'method': 'POST',
  'path': '/',
  'query_string': b'',
  'version': '1.0',
  'headers': [(b'expect', b'100-continue'), (b'content-length', b'1')],
  'body': b'x',
  'keep_alive': False,
  'expect_continue': False}]
