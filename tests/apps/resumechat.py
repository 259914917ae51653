"""A Channels 4 room chat for the resume tests (tests/e2e/test_asgi_resume.py),
hosted by ``shmchannels serve resumechat:application``.

The test copies this module and rewrites ``VERSION`` between HUPs, so what
answers tells which code runs.  No Django project: settings are configured
here, with ``SharedMemoryChannelLayer`` on the prefix named by
``RESUMECHAT_PREFIX`` (serve's own bus).

* ``/ws/<room>/``: connect joins the group ``<room>`` and accepts; a text
  frame ``whoami`` is answered to the sender alone with
  ``<VERSION>|resume=<count>`` (the ``shmchannels.resume`` extension); any
  other frame is ``group_send`` to the room as ``<VERSION>|<frame>``; group
  messages are forwarded to the socket.  A disconnect appends a line to the
  file named by ``RESUMECHAT_DISCONNECTS`` (when set).
* HTTP: 200 ``<VERSION> <pid>``; ``/block?s=N`` first blocks the worker's
  event loop for N seconds (``time.sleep``: a stuck worker).
"""

import os
import time

import django
from django.conf import settings

VERSION = "v0"

if not settings.configured:
    settings.configure(
        SECRET_KEY="resumechat-tests",
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        ROOT_URLCONF=__name__,
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "shmchannels.layers.SharedMemoryChannelLayer",
                "CONFIG": {"prefix": os.environ["RESUMECHAT_PREFIX"], "capacity": 10_000},
            }
        },
    )
    django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

urlpatterns = []


class RoomConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.room = self.scope["url_route"]["kwargs"]["room"]
        await self.channel_layer.group_add(self.room, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(self.room, self.channel_name)
        path = os.environ.get("RESUMECHAT_DISCONNECTS")
        if path:
            with open(path, "a") as f:
                f.write(f"{self.room} {code}\n")

    async def receive(self, text_data=None, bytes_data=None):
        if text_data == "whoami":
            count = self.scope["extensions"].get("shmchannels.resume", {}).get("count", 0)
            await self.send(text_data=f"{VERSION}|resume={count}")
            return
        await self.channel_layer.group_send(self.room, {"type": "chat.message", "text": f"{VERSION}|{text_data}"})

    async def chat_message(self, event):
        await self.send(text_data=event["text"])


async def http_version(scope, receive, send):
    if scope["path"] == "/block":
        time.sleep(float(scope["query_string"].decode().partition("s=")[2] or 1))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": f"{VERSION} {os.getpid()}".encode()})


application = ProtocolTypeRouter({
    "http": http_version,
    "websocket": URLRouter([re_path(r"^ws/(?P<room>\w+)/$", RoomConsumer.as_asgi())]),
})
