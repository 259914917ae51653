"""A fragment is not part of the path or the query (clients should not send one; it is dropped)."""

requests = [{'method': 'GET',
  'path': '/page',
  'query_string': b'x=1',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True,
  'target': b'/page?x=1#frag?not=query'}]
