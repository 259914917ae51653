"""HTTP Garden: whitespace after a chunk size; h11 0.16 accepts it (BWS before an extension), llhttp answers 400 'Invalid character in chunk size'."""

requests = [{'method': 'POST', 'path': '/', 'query_string': b'', 'version': '1.1', 'headers': [(b'host', b'a'), (b'transfer-encoding', b'chunked')], 'body': b'x', 'keep_alive': True}]
xfail = "h11 accepts it; llhttp refuses it with 400 and has no leniency for it"
