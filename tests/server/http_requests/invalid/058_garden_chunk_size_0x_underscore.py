"""HTTP Garden: chunk size '0x2_e' (int(x, 16) accepts it); h11: 400 illegal chunk header."""

error = (400, 'chunk size')
