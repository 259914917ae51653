"""HTTP Garden: \xa0 after a name; h11: 400."""

error = (400, 'header')
