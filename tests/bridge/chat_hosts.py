"""tests/apps/chat4.py (a Channels 4 chat) with the bridge on: the layer's
CONFIG takes ``hosts`` from ``CHAT_REDIS`` and ``redis_prefix`` from
``CHAT_NAMESPACE``; the host identity is the hostname.  Served by uvicorn
or daphne: ``chat_hosts:application``."""

import os
import sys

import django
from django.conf import settings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "apps"))

settings.configure(
    SECRET_KEY="chat-hosts-tests",
    INSTALLED_APPS=[],
    DATABASES={},
    USE_TZ=True,
    ROOT_URLCONF="chat4",
    CHANNEL_LAYERS={"default": {
        "BACKEND": "shmchannels.layers.SharedMemoryChannelLayer",
        "CONFIG": {"prefix": "chathosts", "capacity": 1000, "hosts": [os.environ["CHAT_REDIS"]],
                   "redis_prefix": os.environ["CHAT_NAMESPACE"]},
    }},
)
django.setup()

from chat4 import application  # noqa: E402 - configured above, so chat4 keeps these settings

__all__ = ["application"]
