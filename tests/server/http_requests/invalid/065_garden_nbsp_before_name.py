"""HTTP Garden: \xa0 before a name (str.strip() removes it); h11: 400."""

error = (400, 'header')
