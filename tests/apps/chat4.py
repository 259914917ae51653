"""A Channels 4 chat for the lifecycle tests (tests/test_lifecycle_servers.py),
served by uvicorn or daphne: ``chat4:application``.

No Django project: the settings are configured here, with one channel layer,
``SharedMemoryChannelLayer`` on the prefix named by ``CHAT4_PREFIX``.

* ``/ws/<room>/``: on connect the consumer joins the group ``<room>`` (before
  accepting, so a completed handshake means a member); every text frame it
  receives is ``group_send`` to the room; every group message is forwarded to
  the socket.
* Any HTTP request: 200 ``ok <pid>`` (a readiness probe).
"""

import os

import django
from django.conf import settings

if not settings.configured:
    settings.configure(
        SECRET_KEY="chat4-lifecycle-tests",
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        ROOT_URLCONF=__name__,
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "shmchannels.layers.SharedMemoryChannelLayer",
                "CONFIG": {"prefix": os.environ["CHAT4_PREFIX"], "capacity": 1000},
            }
        },
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

urlpatterns = []


class ChatConsumer(AsyncWebsocketConsumer):
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


async def http_ok(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"ok {os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


application = ProtocolTypeRouter({
    "http": http_ok,
    "websocket": URLRouter([re_path(r"^ws/(?P<room>[A-Za-z0-9_.-]{1,80})/$", ChatConsumer.as_asgi())]),
})
