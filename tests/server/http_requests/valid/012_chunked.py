"""Chunked body; upper- and lower-case hex sizes; chunk data may contain CRLF."""

requests = [{'method': 'PUT',
  'path': '/up',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'), (b'transfer-encoding', b'chunked')],
  'body': b'Wikipedia in \r\nchunks....',
  'keep_alive': True,
  'chunked': True,
  'content_length': None}]
