"""HTTP-version must be HTTP/DIGIT.DIGIT."""

error = (400, 'version')
