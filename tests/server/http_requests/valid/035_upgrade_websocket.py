"""An upgrade stops HTTP parsing; the bytes after the head are handed back."""

requests = [{'method': 'GET',
  'path': '/ws',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'),
              (b'connection', b'Upgrade'),
              (b'upgrade', b'websocket'),
              (b'sec-websocket-key', b'dGhlIHNhbXBsZSBub25jZQ=='),
              (b'sec-websocket-version', b'13')],
  'body': b'',
  'keep_alive': True,
  'upgrade': True}]
upgrade_rest = b'\x81\x85abcd'
