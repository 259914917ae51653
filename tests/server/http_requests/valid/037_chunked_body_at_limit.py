"""A chunked body of exactly limit_request_body bytes."""

requests = [{'method': 'POST',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'), (b'transfer-encoding', b'chunked')],
  'body': b'0123456789',
  'keep_alive': True,
  'chunked': True}]
limits = {'limit_request_body': 10}
