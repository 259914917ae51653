"""Percent-encoded UTF-8 in the path is decoded to str; the query string is left encoded."""

requests = [{'method': 'GET',
  'path': '/café/✓/🚀',
  'query_string': b'q=%C3%A9',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True}]
