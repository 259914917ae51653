from shmchannels.workers.routing import route

from . import consumers

ROOM = r"^/ws/room/(?P<room>[A-Za-z0-9_-]{1,50})/?$"
ECHO = r"^/ws/echo/?$"

routes = [
    route("http.request", consumers.http),
    route("websocket.connect", consumers.echo_connect, path=ECHO),
    route("websocket.receive", consumers.echo_receive, path=ECHO),
    route("websocket.connect", consumers.room_connect, path=ROOM),
    route("websocket.receive", consumers.room_receive, path=ROOM),
    route("websocket.disconnect", consumers.room_disconnect, path=ROOM),
]
