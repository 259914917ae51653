"""A Channels-1 echo consumer for the Autobahn conformance run
(tests/e2e/test_autobahn.py, bench/autobahn.py): ``--routing echo1:routes``.

Every WebSocket is accepted; each ``websocket.receive`` is sent back as it
came (text as text, bytes as bytes); ``GET /`` -> 200 so that
tests/serving.py's ``serving()`` sees the server is up."""

from shmchannels.workers.routing import route


def connect(message):
    message.reply_channel.send({"accept": True})


def receive(message):
    text = message.get("text")
    if text is not None:
        message.reply_channel.send({"text": text})
    else:
        message.reply_channel.send({"bytes": message["bytes"]})


def hello(message):
    message.reply_channel.send({"status": 200, "headers": [[b"content-type", b"text/plain"]], "content": b"ok"})


routes = [
    route("websocket.connect", connect),
    route("websocket.receive", receive),
    route("http.request", hello),
]
