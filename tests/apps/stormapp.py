"""An ASGI app that leaves its worker's event loop with a full self-pipe
(tests/e2e/test_asgi_supervision.py), the state thousands of ``sync_to_async``
calls coming back at once leave it in: ``GET /storm`` fills the pipe asyncio
wakes itself through, then blocks the loop for 2 s.  A SIGTERM that arrives
meanwhile must still stop the worker."""

import asyncio
import time


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/storm":
        pipe = asyncio.get_running_loop()._csock  # the loop's self-pipe (write end)
        try:
            while True:
                pipe.send(b"\0" * 4096)
        except BlockingIOError:
            pass
        time.sleep(2.0)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
