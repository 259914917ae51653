"""A Starlette app for tests/e2e/test_asgi_apps.py: ``starlette_app:app``.

* ``GET /``: ``hello from starlette <pid>`` (text)
* ``GET /json``: ``{"hello": "world", "pid": <pid>}``
* ``GET /stream?n=N&delay=S``: a streamed response of N chunks
  ``chunk <i>\\n`` (default 5), S seconds (default 0.01) before each next one
* ``POST /echo``: reads the body with ``await request.body()``, answers
  ``{"length": <bytes>, "sha256": <hex>}``
* ``WS /ws``: echoes every text frame as text and every binary frame as bytes

Lifespan: appends ``startup <pid>`` / ``shutdown <pid>`` lines to the file
named by ``STARLETTE_LIFESPAN_LOG`` (if set).  With
``STARLETTE_LIFESPAN_FAIL`` set, startup raises ``RuntimeError`` whose
message contains that variable's value.
"""

import asyncio
import contextlib
import hashlib
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect


def _log(event):
    path = os.environ.get("STARLETTE_LIFESPAN_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{event} {os.getpid()}\n")


@contextlib.asynccontextmanager
async def lifespan(app):
    fail = os.environ.get("STARLETTE_LIFESPAN_FAIL")
    if fail:
        raise RuntimeError(f"lifespan startup failed: {fail}")
    _log("startup")
    yield
    _log("shutdown")


async def homepage(request: Request):
    return PlainTextResponse(f"hello from starlette {os.getpid()}")


async def json_route(request: Request):
    return JSONResponse({"hello": "world", "pid": os.getpid()})


async def stream(request: Request):
    n = int(request.query_params.get("n", "5"))
    delay = float(request.query_params.get("delay", "0.01"))

    async def chunks():
        for i in range(n):
            if i:
                await asyncio.sleep(delay)
            yield f"chunk {i}\n".encode()

    return StreamingResponse(chunks(), media_type="text/plain")


async def echo(request: Request):
    body = await request.body()
    return JSONResponse({"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})


async def ws_echo(websocket: WebSocket):
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            elif message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        pass


app = Starlette(
    routes=[
        Route("/", homepage),
        Route("/json", json_route),
        Route("/stream", stream),
        Route("/echo", echo, methods=["POST"]),
        WebSocketRoute("/ws", ws_echo),
    ],
    lifespan=lifespan,
)
