"""An ASGI 3 app that sends as fast as it is let (tests/e2e/test_asgi_flow.py).

``GET /flood`` streams 256 KiB chunks without end; a WebSocket at ``/ws``
sends 256 KiB binary messages without end once accepted.  Each counts what
it sent into ``$FLOOD_DIR/<kind>-<pid>`` (one number, rewritten), so a test
can see whether a client that does not read holds the application back.
"""

import os

CHUNK = b"x" * (256 << 10)


def _count(kind, n):
    path = os.path.join(os.environ["FLOOD_DIR"], f"{kind}-{os.getpid()}")
    with open(path + ".tmp", "w") as f:
        f.write(str(n))
    os.replace(path + ".tmp", path)


async def app(scope, receive, send):
    if scope["type"] == "http":
        await receive()
        if scope["path"] != "/flood":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]})
        n = 0
        while True:
            await send({"type": "http.response.body", "body": CHUNK, "more_body": True})
            n += 1
            _count("http", n)
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        n = 0
        while True:
            await send({"type": "websocket.send", "bytes": CHUNK})
            n += 1
            _count("ws", n)
