"""Bare LF line ends: rejected (RFC 9112 2.2 only MAY accept them)."""

error = (400, 'CRLF')
