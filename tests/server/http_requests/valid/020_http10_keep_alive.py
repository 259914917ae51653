"""HTTP/1.0 keep-alive (RFC 9112 9.3 / Appendix C.2.2) for one request, then a plain HTTP/1.0 one."""

requests = [{'method': 'GET',
  'path': '/',
  'query_string': b'',
  'version': '1.0',
  'headers': [(b'connection', b'Keep-Alive')],
  'body': b'',
  'keep_alive': True},
 {'method': 'GET',
  'path': '/2',
  'query_string': b'',
  'version': '1.0',
  'headers': [],
  'body': b'',
  'keep_alive': False}]
