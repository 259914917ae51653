"""A Channels-1 style chat for `shmchannels serve` in the lifecycle tests
(tests/test_lifecycle_servers.py): ``--routing room1:routes``.

``/ws/<room>/``: ``websocket.connect`` adds the connection's reply channel to
the Group of the room, then accepts (so a completed handshake means a member);
``websocket.receive`` sends the text to the Group; ``websocket.disconnect``
leaves it."""

from shmchannels import Group
from shmchannels.workers.routing import route

ROOM = r"^/ws/(?P<room>[A-Za-z0-9_.-]{1,80})/$"


def _group(room):
    return Group(f"room1-{room}")


def connect(message, room):
    _group(room).add(message.reply_channel)
    message.reply_channel.send({"accept": True})


def receive(message, room):
    _group(room).send({"text": message["text"]})


def disconnect(message, room):
    _group(room).discard(message.reply_channel)


routes = [
    route("websocket.connect", connect, path=ROOM),
    route("websocket.receive", receive, path=ROOM),
    route("websocket.disconnect", disconnect, path=ROOM),
]
