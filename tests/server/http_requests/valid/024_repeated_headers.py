"""Repeated field lines keep their order and stay separate."""

requests = [{'method': 'GET',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'),
              (b'x-forwarded-for', b'10.0.0.1'),
              (b'cookie', b'a=1'),
              (b'x-forwarded-for', b'10.0.0.2'),
              (b'cookie', b'b=2')],
  'body': b'',
  'keep_alive': True}]
