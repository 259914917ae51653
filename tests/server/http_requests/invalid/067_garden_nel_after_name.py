"""HTTP Garden: \x85 (NEL) after a name; h11: 400."""

error = (400, 'header')
