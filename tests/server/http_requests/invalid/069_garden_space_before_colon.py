"""HTTP Garden: whitespace between name and colon (RFC 9112 5.1: 400); h11: 400."""

error = (400, 'header')
