"""absolute-form (RFC 9112 3.2.2): path and query come from the URI."""

requests = [{'method': 'GET',
  'path': '/a/b',
  'query_string': b'c=d',
  'version': '1.1',
  'headers': [(b'host', b'example.com:8080')],
  'body': b'',
  'keep_alive': True,
  'target': b'http://example.com:8080/a/b?c=d'}]
