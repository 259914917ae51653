"""HTTP Garden: a bare CR in a value; h11: 400."""

error = (400, 'LF')
