"""An expectation other than 100-continue: 417 (RFC 9110 10.1.1)."""

error = (417, 'Expect')
