"""HTTP Garden: 'Transfer-Encoding: chun ked'; h11: 501 Only Transfer-Encoding: chunked is supported."""

error = (501, 'chunked')
