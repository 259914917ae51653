"""``room1`` (Channels-1 chat rooms at ``/ws/<room>/``) plus ``GET /`` -> 200,
so that tests/serving.py's ``serving()`` can see it is up:
``--routing room1_http:routes``."""

from room1 import routes as room_routes

from shmchannels.workers.routing import route


def hello(message):
    message.reply_channel.send({"status": 200, "headers": [[b"content-type", b"text/plain"]], "content": b"ok"})


routes = [*room_routes, route("http.request", hello)]
