"""The demo's consumers: ordinary ``def consumer(message)`` functions."""

import json
from importlib import resources

from shmchannels import Group

_PAGE = None


def _page():
    global _PAGE
    if _PAGE is None:
        _PAGE = resources.files("shmchannels.demo").joinpath("index.html").read_bytes()
    return _PAGE


def http(message):
    """``/``: the demo page; ``/healthz``: ok; anything else: 404."""
    path = message["path"]
    if path in ("/", "/index.html"):
        body, ctype, status = _page(), b"text/html; charset=utf-8", 200
    elif path == "/healthz":
        body, ctype, status = b"ok\n", b"text/plain", 200
    else:
        body, ctype, status = b"Not found\n", b"text/plain", 404
    message.reply_channel.send({"status": status, "headers": [[b"content-type", ctype]], "content": body})


def echo_connect(message):
    message.reply_channel.send({"accept": True})


def echo_receive(message):
    if message.get("text") is not None:
        message.reply_channel.send({"text": message["text"]})
    else:
        message.reply_channel.send({"bytes": message["bytes"]})


def _room(room):
    return Group(f"room-{room}")


def room_connect(message, room):
    _room(room).add(message.reply_channel)
    message.reply_channel.send({"accept": True})
    _room(room).send({"text": json.dumps({"system": "someone joined", "room": room})})


def room_receive(message, room):
    text = message.get("text") or ""
    try:
        payload = json.loads(text)
    except ValueError:
        payload = {"message": text}
    line = {"room": room, "name": str(payload.get("name", "anonymous"))[:40], "message": str(payload.get("message", ""))[:2000]}
    _room(room).send({"text": json.dumps(line)})


def room_disconnect(message, room):
    _room(room).discard(message.reply_channel)
