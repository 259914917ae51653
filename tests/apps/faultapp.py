"""Consumers that misbehave, for tests/test_worker_death.py: replies the
protocol server must refuse or fix, consumers that raise, and consumers that
hang (until the test kills their worker).

Before hanging, a consumer tells the test which process it runs in, on the
``fault.started`` channel (a plain layer send: not held until the consumer
returns, as ``Channel.send`` is).
"""

import os
import time


def _started(message, what):
    message.channel_layer.send("fault.started", {"pid": os.getpid(), "what": what})


def http(message):
    path = message["path"]
    reply = message.reply_channel
    if path == "/str":  # the talk's raw-layer example: content as a str
        reply.send({"content": "Hello World! é", "status": 200})
    elif path == "/bad-status":
        reply.send({"status": "200 OK", "content": b"x"})
    elif path == "/raise":
        raise RuntimeError("consumer failure on purpose")
    elif path == "/hang":
        _started(message, "http")
        time.sleep(60)
    elif path == "/slow":  # busy long enough for requests to queue behind it
        _started(message, "slow")
        time.sleep(2)
        reply.send({"status": 200, "content": b"slow done"})
    else:
        reply.send({"status": 200, "headers": [[b"content-type", b"text/plain"]],
                    "content": f"pid {os.getpid()}".encode()})


def ws_connect(message):
    if message["path"] == "/ws/hang-connect":
        _started(message, "connect")
        time.sleep(60)
    if message["path"] == "/ws/raise-connect":
        raise RuntimeError("connect failure on purpose")
    message.reply_channel.send({"accept": True})


def ws_receive(message):
    text = message["text"]
    if text == "hang":
        _started(message, "receive")
        time.sleep(60)
    elif text == "raise":
        raise RuntimeError("receive failure on purpose")
    elif text == "bad-text":
        message.reply_channel.send({"text": b"bytes where text belongs"})
    else:
        message.reply_channel.send({"text": f"{text} from {os.getpid()}"})


def ws_disconnect(message):
    pass


routes = {
    "http.request": http,
    "websocket.connect": ws_connect,
    "websocket.receive": ws_receive,
    "websocket.disconnect": ws_disconnect,
}
