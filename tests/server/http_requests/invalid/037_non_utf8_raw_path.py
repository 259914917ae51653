"""A raw non-ASCII byte in the target."""

error = (400, 'url')
