"""HTTP Garden: chunk data ended by a bare LF; h11: 400 malformed chunk footer."""

error = (400, 'CR')
