"""shmchannels: Django Channels' channel layer on one host, in shared memory.

The synchronous ASGI 1 layer and the talk's objects live here::

    from shmchannels import ChannelLayer, Channel, Group

The Channels 4 backend is ``shmchannels.layers.SharedMemoryChannelLayer``.
"""

from .asgi1 import ChannelLayer
from .exceptions import BusError, ChannelFull, MessageTooLarge
from .objects import Channel, Group, configure, default_layer

__version__ = "0.1.0"

__all__ = [
    "BusError",
    "Channel",
    "ChannelFull",
    "ChannelLayer",
    "Group",
    "MessageTooLarge",
    "configure",
    "default_layer",
]
