"""A raw ASGI 3 app for the metrics of hosted apps (tests/runtime/test_metrics.py):
HTTP ``/`` answers 200 and ``/raise`` raises; WebSocket ``/echo`` echoes each
text, and closes with 4000 on ``bye``."""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
    elif scope["type"] == "http":
        await receive()
        if scope["path"] == "/raise":
            raise RuntimeError("asked to")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})
    else:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (event := await receive())["type"] == "websocket.receive":
            if event.get("text") == "bye":
                await send({"type": "websocket.close", "code": 4000})
            else:
                await send({"type": "websocket.send", "text": event.get("text")})
