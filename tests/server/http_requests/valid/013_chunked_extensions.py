"""Chunk extensions (RFC 9112 7.1.1) are ignored, quoted ones included."""

requests = [{'method': 'POST',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'), (b'transfer-encoding', b'chunked')],
  'body': b'hello world',
  'keep_alive': True,
  'chunked': True}]
