"""A chunk size past 64 bits."""

error = (400, 'overflow')
