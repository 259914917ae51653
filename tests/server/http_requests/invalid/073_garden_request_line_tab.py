"""HTTP Garden: a tab between method and target; h11: 400."""

error = (400, 'space')
