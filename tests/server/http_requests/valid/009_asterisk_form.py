"""asterisk-form (RFC 9112 3.2.4)."""

requests = [{'method': 'OPTIONS',
  'path': '*',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True,
  'target': b'*'}]
