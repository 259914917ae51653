"""Whitespace after a chunk size without an extension."""

error = (400, 'chunk size')
