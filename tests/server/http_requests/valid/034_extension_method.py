"""Any token is a method (RFC 9112 3.1, RFC 9110 9.1); one the server does not know deserves 501, not a parse error."""

requests = [{'method': 'BREW',
  'path': '/pot',
  'query_string': b'',
  'version': '1.1',
  'headers': [(b'host', b'example.com')],
  'body': b'',
  'keep_alive': True}]
xfail = ("llhttp knows a fixed list of methods and rejects any other token with 400 'Invalid method "
 "encountered'")
