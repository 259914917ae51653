"""The WSGI version of the benchmark's HTTP logic (gunicorn sync, shmchannels --wsgi).

    gunicorn -w 1 -k sync --pythonpath bench/apps bench_wsgi:app
    shmchannels serve --pythonpath bench/apps --wsgi bench_wsgi:app
"""

BODY = b"Hello, world!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
