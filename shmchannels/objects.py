"""``Channel`` and ``Group``: the 2016 talk's objects, usable from anywhere.

    Channel("thumbnail").send({"id": 42})
    Group("liveblog").add(message.reply_channel)
    Group("liveblog").send({"text": "New post"})

They talk to the process's default layer (see ``default_layer``), which is
the same bus the server's workers and protocol servers use, so a Django
model's ``save()``, a management command or a cron script can reach them.

Inside a consumer run by a shmchannels worker, sends are held until the
consumer returns (as in Channels 1), so a consumer that raises sends
nothing; pass ``immediately=True`` to send at once.
"""

import os
import threading

from . import names
from .asgi1 import ChannelLayer

_default = None
_default_lock = threading.Lock()
_deferred = threading.local()


def configure(**config):
    """Set the options of the default layer (prefix, expiry, capacity, ...)."""
    global _default
    with _default_lock:
        _default = ChannelLayer(**config)
    return _default


def use_layer(layer):
    """Make ``layer`` the default (workers do this with their own layer)."""
    global _default
    with _default_lock:
        _default = layer
    return layer


def _django_config():
    try:
        from django.conf import settings

        layers = getattr(settings, "CHANNEL_LAYERS", {}) if settings.configured else {}
    except ImportError:
        return None
    default = layers.get("default", {})
    if default.get("BACKEND", "").startswith("shmchannels."):
        return dict(default.get("CONFIG", {}))
    return None


def default_layer():
    """The default ASGI 1 layer.

    Its options come from ``configure()``, else from Django's
    ``CHANNEL_LAYERS["default"]["CONFIG"]`` when that backend is shmchannels,
    else from ``SHMCHANNELS_PREFIX`` (default ``asgi``).
    """
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                config = _django_config()
                if config is None:
                    config = {"prefix": os.environ.get("SHMCHANNELS_PREFIX", "asgi")}
                _default = ChannelLayer(**config)
    return _default


def _send(layer, channel, content, immediately):
    if not isinstance(content, dict):
        raise TypeError(f"You can only send dicts as content on channels, not {type(content).__name__}")
    pending = getattr(_deferred, "messages", None)
    if pending is not None and not immediately:
        pending.append((layer, channel, content))
    elif channel.startswith("group:"):
        layer.send_group(channel[6:], content)
    else:
        layer.send(channel, content)


class deferred_sends:
    """Context manager the worker wraps around a consumer: hold sends, then flush or drop."""

    def __enter__(self):
        self.outer = getattr(_deferred, "messages", None)
        _deferred.messages = []
        return self

    def __exit__(self, exc_type, exc, tb):
        pending, _deferred.messages = _deferred.messages, self.outer
        if exc_type is None:
            for layer, channel, content in pending:
                if channel.startswith("group:"):
                    layer.send_group(channel[6:], content)
                else:
                    layer.send(channel, content)
        return False


class Channel:
    """A named channel: ``Channel("thumbnail").send({...})``."""

    def __init__(self, name, channel_layer=None):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        names.require_channel(name, v1=True)
        self.name = name
        self.channel_layer = channel_layer

    @classmethod
    def from_bus(cls, name, channel_layer):
        """A Channel for a name taken off the bus (already valid): no re-check."""
        channel = cls.__new__(cls)
        channel.name = name
        channel.channel_layer = channel_layer
        return channel

    @property
    def layer(self):
        return self.channel_layer or default_layer()

    def send(self, content, immediately=False):
        _send(self.layer, self.name, content, immediately)

    def __str__(self):
        return self.name

    def __repr__(self):
        return f"Channel({self.name!r})"

    def __eq__(self, other):
        return isinstance(other, Channel) and other.name == self.name

    def __hash__(self):
        return hash(self.name)


class Group:
    """A broadcast group: ``Group("liveblog").add(channel)`` / ``.send({...})``."""

    def __init__(self, name, channel_layer=None):
        if isinstance(name, bytes):
            name = name.decode("ascii")
        names.require_group(name)
        self.name = name
        self.channel_layer = channel_layer

    @property
    def layer(self):
        return self.channel_layer or default_layer()

    def add(self, channel):
        self.layer.group_add(self.name, str(channel))

    def discard(self, channel):
        self.layer.group_discard(self.name, str(channel))

    def channels(self):
        return self.layer.group_channels(self.name)

    def send(self, content, immediately=False):
        _send(self.layer, "group:" + self.name, content, immediately)

    def __repr__(self):
        return f"Group({self.name!r})"
