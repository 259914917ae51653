"""A raw ASGI 3 app for the WebSocket handshake features a hosted app can use
(tests/e2e/test_asgi_apps.py): ``/deny`` refuses the handshake with its own
HTTP response (the ``websocket.http.response`` extension), ``/proto`` picks
the last subprotocol the client offered and adds a header to the 101, and
HTTP ``/state`` answers with what the lifespan startup put in the state;
``/raw/...`` (HTTP and WebSocket) answers with the scope's path and raw_path."""


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                scope["state"]["greeting"] = "hello from lifespan"
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"].startswith("/raw/"):
        answer = f"{scope['path']}|{scope['raw_path'].decode('ascii')}"
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": answer.encode()})
        else:
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.send", "text": answer})
            await send({"type": "websocket.close"})
        return
    if scope["type"] == "http":
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": scope["state"]["greeting"].encode()})
        return
    await receive()  # websocket.connect
    if scope["path"] == "/deny":
        assert "websocket.http.response" in scope["extensions"]
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain"), (b"www-authenticate", b"Token")]})
        await send({"type": "websocket.http.response.body", "body": b"no token, ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"no socket"})
        return
    await send({"type": "websocket.accept", "subprotocol": scope["subprotocols"][-1],
                "headers": [(b"x-accepted", b"yes")]})
    while True:
        event = await receive()
        if event["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": f"{scope['subprotocols']}|{event.get('text')}"})
