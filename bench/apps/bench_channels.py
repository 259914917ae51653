"""Django Channels 4 version of the WebSocket benchmark's logic (run by daphne).

    BENCH_REDIS_URL=redis://127.0.0.1:6379 PYTHONPATH=bench/apps daphne bench_channels:application

* ``/echo/``: an AsyncWebsocketConsumer that sends every frame back (no
  channel layer involved);
* ``/room/``: an AsyncWebsocketConsumer that does ``group_add("room")`` on
  connect, ``group_send("room", ...)`` on receive, and whose ``chat_message``
  handler sends the text to its socket (the Channels tutorial's chat room).
* HTTP: the plain ASGI "Hello, world!" of ``bench_asgi`` (used only to see
  that the server is up).

The channel layer is channels_redis' ``RedisChannelLayer`` on
``BENCH_REDIS_URL`` (``BENCH_LAYER=pubsub`` selects ``RedisPubSubChannelLayer``);
without ``BENCH_REDIS_URL`` there is no channel layer (the echo run: an echo
consumer does not need one, and without one Channels does not start a
per-connection receive loop on the layer).
"""

import os

import django
from django.conf import settings

REDIS_URL = os.environ.get("BENCH_REDIS_URL")
if REDIS_URL:
    backend = (
        "channels_redis.pubsub.RedisPubSubChannelLayer"
        if os.environ.get("BENCH_LAYER") == "pubsub"
        else "channels_redis.core.RedisChannelLayer"
    )
    LAYERS = {"default": {"BACKEND": backend, "CONFIG": {"hosts": [REDIS_URL]}}}
else:
    LAYERS = {}

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-not-secret",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["channels"],
        CHANNEL_LAYERS=LAYERS,
        USE_TZ=True,
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

import bench_asgi  # noqa: E402

ROOM = "room"


class EchoConsumer(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        if text_data is not None:
            await self.send(text_data=text_data)
        else:
            await self.send(bytes_data=bytes_data)


class RoomConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add(ROOM, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(ROOM, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send(ROOM, {"type": "chat.message", "text": text_data})

    async def chat_message(self, event):
        await self.send(text_data=event["text"])


application = ProtocolTypeRouter({
    "http": bench_asgi.app,
    "websocket": URLRouter([
        re_path(r"^echo/?$", EchoConsumer.as_asgi()),
        re_path(r"^room/?$", RoomConsumer.as_asgi()),
    ]),
})
