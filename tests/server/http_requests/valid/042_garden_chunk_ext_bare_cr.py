"""HTTP Garden: a bare CR in a chunk extension; h11 0.16 accepts it (extensions are skipped), llhttp answers 400 'Expected LF after chunk size' (stricter, harmless: nothing is run)."""

requests = [{'method': 'POST', 'path': '/', 'query_string': b'', 'version': '1.1', 'headers': [(b'host', b'a'), (b'transfer-encoding', b'chunked')], 'body': b'x', 'keep_alive': True}]
xfail = "h11 accepts it; llhttp refuses it with 400 and has no leniency for it"
