"""obs-fold: rejected with 400, which RFC 9112 5.2 allows."""

error = (400, 'whitespace')
