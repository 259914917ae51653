"""Bare LF in chunked framing."""

error = (400, 'CR')
