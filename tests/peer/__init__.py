"""Runners for published peer test suites, run against shmchannels at test time.

Nothing from those suites is committed: each runner downloads the published
distribution from PyPI into ``.cache/peer/`` (git-ignored), extracts the test
file it needs into a temporary directory, adds our own adapter next to it
(the templates in this directory) and runs it with pytest in a subprocess.
"""
