"""A percent-encoded path that does not decode as UTF-8."""

error = (400, 'not UTF-8')
