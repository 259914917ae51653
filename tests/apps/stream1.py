"""Streamed HTTP responses from a Channels-1 consumer and from WSGI
(tests/e2e/test_http_backpressure.py).

``GET /stream?mb=N`` sends N MiB (default 256) in 256 KiB chunks, each with
``immediately=True``; the WSGI app does the same from a generator.  Both
write how many bytes they have handed over so far to
``$STREAM_DIR/<kind>-<pid>-<thread>`` (one number, rewritten), so a test can
see whether a client that does not read holds its worker back.
``GET /`` answers ``ok``.
"""

import os
import threading
from urllib.parse import parse_qs

from shmchannels.workers.routing import route

CHUNK = b"x" * (256 << 10)


def _count(kind, n):
    where = os.environ.get("STREAM_DIR")
    if not where:
        return
    path = os.path.join(where, f"{kind}-{os.getpid()}-{threading.get_ident()}")
    with open(path + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(path + ".tmp", path)


def _mib(query):
    values = parse_qs(query.decode() if isinstance(query, bytes) else query).get("mb")
    return int(values[0]) if values else 256


def stream(message):
    if message["path"] != "/stream":
        message.reply_channel.send({"status": 200, "headers": [[b"content-type", b"text/plain"]], "content": b"ok"})
        return
    chunks = _mib(message["query_string"]) * 4
    reply = message.reply_channel
    reply.send({"status": 200, "headers": [[b"content-type", b"application/octet-stream"],
                                           [b"content-length", str(len(CHUNK) * chunks).encode()]],
                "more_content": True}, immediately=True)
    for i in range(chunks):
        reply.send({"content": CHUNK, "more_content": i < chunks - 1}, immediately=True)
        _count("channels", (i + 1) * len(CHUNK))


routes = [route("http.request", stream)]


def wsgi_app(environ, start_response):
    if environ["PATH_INFO"] != "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]
    chunks = _mib(environ.get("QUERY_STRING", "")) * 4
    start_response("200 OK", [("Content-Type", "application/octet-stream")])

    def body():
        for i in range(chunks):
            yield CHUNK
            _count("wsgi", (i + 1) * len(CHUNK))

    return body()
