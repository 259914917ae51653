"""The ASGI 3 version of the benchmark's logic (uvicorn, daphne).

    uvicorn --app-dir bench/apps bench_asgi:app
    PYTHONPATH=bench/apps daphne bench_asgi:app

HTTP: 200 text/plain "Hello, world!".  WebSocket: accept, echo every frame
(the path is not looked at).
"""

BODY = b"Hello, world!"
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"13")],
}
RESPONSE = {"type": "http.response.body", "body": BODY}


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "http":
        # read the (empty) request body, as a framework would
        while True:
            event = await receive()
            if not event.get("more_body"):
                break
        await send(START)
        await send(RESPONSE)
    elif kind == "websocket":
        while True:
            event = await receive()
            t = event["type"]
            if t == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif t == "websocket.receive":
                if event.get("text") is not None:
                    await send({"type": "websocket.send", "text": event["text"]})
                else:
                    await send({"type": "websocket.send", "bytes": event.get("bytes")})
            elif t == "websocket.disconnect":
                return
    elif kind == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
