"""The gunicorn runtime: ``shmchannels serve`` and friends.

The only package that imports gunicorn: configuration (``config``), the
application and master (``application``, ``arbiter``), both child process
kinds (``protocol_process``, ``worker_process``), what they share
(``processes``) and the command line (``cli``: serve, worker, dev, status,
gc, send).
"""
