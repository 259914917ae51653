"""Names with '_' are dropped (they would collide with '-' in WSGI-style keys, CVE-2015-0219)."""

requests = [{'method': 'GET',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'), (b'x-auth-user', b'alice')],
  'body': b'',
  'keep_alive': True}]
