"""HTTP Garden: a hex Content-Length; h11: 400."""

error = (400, 'Content-Length')
