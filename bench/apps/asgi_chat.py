"""The Channels 4 app of bench/asgi.py: one ASGI 3 application served by
uvicorn (in its process) and by ``shmchannels serve asgi_chat:application``
(in the worker processes), unchanged.

    BENCH_ASGI_LAYER=shm BENCH_SHM_PREFIX=bench PYTHONPATH=bench/apps uvicorn asgi_chat:application
    BENCH_ASGI_LAYER=redis BENCH_REDIS_URL=redis://127.0.0.1:6379 PYTHONPATH=bench/apps uvicorn asgi_chat:application
    BENCH_ASGI_LAYER=shm BENCH_SHM_PREFIX=bench PYTHONPATH=bench/apps \\
        shmchannels serve asgi_chat:application --prefix bench

No Django project: the settings are configured here (as tests/apps/chat4.py
does).  The channel layer is chosen by ``BENCH_ASGI_LAYER``:

* ``shm`` (the default): ``shmchannels.layers.SharedMemoryChannelLayer`` on
  the prefix ``BENCH_SHM_PREFIX`` (else ``SHMCHANNELS_PREFIX``, else
  ``asgi``); under ``shmchannels serve`` it must be the prefix of the serve;
* ``redis``: channels_redis' ``RedisChannelLayer`` on ``BENCH_REDIS_URL``.

Both with their default capacity (100 messages a channel).

* ``/ws/echo/``: an ``AsyncWebsocketConsumer`` that sends every frame back;
* ``/ws/room/<name>/``: ``group_add(<name>)`` on connect (before accepting,
  so a completed handshake means a member), ``group_send`` of every text
  frame to the room, ``chat_message`` forwards each group message to the
  socket; ``group_discard`` on disconnect;
* ``/hello/``: a Django view through ``get_asgi_application()``: 200
  text/plain ``Hello, world!`` (no middleware);
* lifespan: startup and shutdown completed at once (so a server that sends
  lifespan events gets an answer; uvicorn runs with ``--lifespan off``).
"""

import os

import django
from django.conf import settings

LAYER = os.environ.get("BENCH_ASGI_LAYER", "shm")
if LAYER == "redis":
    LAYERS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                          "CONFIG": {"hosts": [os.environ["BENCH_REDIS_URL"]]}}}
elif LAYER == "shm":
    PREFIX = os.environ.get("BENCH_SHM_PREFIX") or os.environ.get("SHMCHANNELS_PREFIX") or "asgi"
    LAYERS = {"default": {"BACKEND": "shmchannels.layers.SharedMemoryChannelLayer", "CONFIG": {"prefix": PREFIX}}}
else:
    raise RuntimeError(f"BENCH_ASGI_LAYER={LAYER!r}: use 'shm' or 'redis'")

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-not-secret",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=["channels"],
        MIDDLEWARE=[],
        DATABASES={},
        ROOT_URLCONF=__name__,
        CHANNEL_LAYERS=LAYERS,
        USE_TZ=True,
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.urls import path, re_path  # noqa: E402

BODY = "Hello, world!"


def hello(request):
    response = HttpResponse(BODY, content_type="text/plain")
    response["Content-Length"] = str(len(BODY))  # as bench_asgi.app does (no chunked encoding)
    return response


urlpatterns = [path("hello/", hello)]


class EchoConsumer(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        if text_data is not None:
            await self.send(text_data=text_data)
        else:
            await self.send(bytes_data=bytes_data)


class RoomConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.room, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        await self.channel_layer.group_send(self.room, {"type": "chat.message", "text": text_data})

    async def chat_message(self, event):
        await self.send(text_data=event["text"])


async def lifespan(scope, receive, send):
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


application = ProtocolTypeRouter({
    "http": get_asgi_application(),
    "websocket": URLRouter([
        re_path(r"^ws/echo/$", EchoConsumer.as_asgi()),
        re_path(r"^ws/room/(?P<room>[A-Za-z0-9_.-]{1,80})/$", RoomConsumer.as_asgi()),
    ]),
    "lifespan": lifespan,
})
