"""HTTP Garden: an empty field name; h11: 400 illegal header line."""

error = (400, 'header')
