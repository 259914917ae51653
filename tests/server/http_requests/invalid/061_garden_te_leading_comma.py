"""HTTP Garden: 'Transfer-Encoding: ,chunked' (llhttp took it for chunked, a proxy may not); h11: 501."""

error = (501, 'chunked')
