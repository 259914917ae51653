"""shmchannels routing of the HTTP and WebSocket benchmarks (Channels-1 consumers).

    shmchannels serve --pythonpath bench/apps --routing bench_shm:routes

* ``http.request``: 200 text/plain "Hello, world!" (the same logic as
  ``bench_asgi.app`` and ``bench_wsgi.app``);
* ``/echo/``: accept, then send every text/bytes frame back;
* ``/room/``: join the group "room" on connect (then accept), send every
  received text into the room, leave it on disconnect.
"""

from shmchannels import Group
from shmchannels.workers.routing import route

HELLO = {
    "status": 200,
    "headers": [[b"content-type", b"text/plain"]],
    "content": b"Hello, world!",
}


def hello(message):
    message.reply_channel.send(HELLO)


def accept(message):
    message.reply_channel.send({"accept": True})


def echo(message):
    text = message.content.get("text")
    if text is not None:
        message.reply_channel.send({"text": text})
    else:
        message.reply_channel.send({"bytes": message.content.get("bytes")})


def room_connect(message):
    Group("room").add(message.reply_channel)
    message.reply_channel.send({"accept": True})


def room_receive(message):
    Group("room").send({"text": message.content["text"]})


def room_disconnect(message):
    Group("room").discard(message.reply_channel)


routes = [
    route("http.request", hello),
    route("websocket.connect", accept, path=r"^/echo/?$"),
    route("websocket.receive", echo, path=r"^/echo/?$"),
    route("websocket.connect", room_connect, path=r"^/room/?$"),
    route("websocket.receive", room_receive, path=r"^/room/?$"),
    route("websocket.disconnect", room_disconnect, path=r"^/room/?$"),
]
