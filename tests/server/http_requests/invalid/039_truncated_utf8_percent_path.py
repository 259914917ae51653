"""An invalid UTF-8 sequence."""

error = (400, 'not UTF-8')
