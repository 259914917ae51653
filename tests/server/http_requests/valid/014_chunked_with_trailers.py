"""Trailer fields end the chunked body; they are not header fields of the request (RFC 9112 7.1.2)."""

requests = [{'method': 'POST',
  'path': '/',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com'),
              (b'transfer-encoding', b'chunked'),
              (b'trailer', b'X-Checksum')],
  'body': b'abc',
  'keep_alive': True,
  'chunked': True}]
