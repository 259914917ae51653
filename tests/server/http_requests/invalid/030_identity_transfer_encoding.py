"""A coding that is not chunked: the length cannot be determined (RFC 9112 6.3); h11 0.16 answers 501 (Only Transfer-Encoding: chunked is supported), so do we."""

error = (501, 'chunked')
