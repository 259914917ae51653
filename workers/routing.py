"""Channel routing, as in Channels 1.

    routes = {
        "websocket.connect": "chat.consumers.connect",
        "websocket.receive": ws_message,
    }
    routes = [
        route("websocket.receive", chat_message, path=r"^/chat/(?P<room>[^/]+)/$"),
        include("blog.routing.routes", path=r"^/blog"),
        route("thumbnail", make_thumbnail),
    ]

A route matches a channel name and, optionally, regular expressions on
message keys (``re.match``; every filter must match).  Named groups become
keyword arguments of the consumer.  ``include`` strips the part of each key
its own filters matched before the inner routes see it.  The first match wins.
"""

import importlib
import re

from shmchannels import names


def load_object(path):
    """Import ``package.module:attr`` or ``package.module.attr``."""
    if not isinstance(path, str):
        return path
    if ":" in path:
        module_name, attr = path.split(":", 1)
    else:
        module_name, _, attr = path.rpartition(".")
        if not module_name:
            raise ImportError(f"{path!r} is not a dotted path to an object")
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _compile_filters(filters):
    compiled = {}
    for key, pattern in filters.items():
        if not isinstance(pattern, (str, re.Pattern)):
            raise TypeError(f"filter {key}= must be a regular expression, not {type(pattern).__name__}")
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        if regex.groups != len(regex.groupindex):
            raise ValueError(f"filter {key}={regex.pattern!r}: only named groups are allowed")
        compiled[key] = regex
    return compiled


def _value(message, key):
    value = message.content.get(key)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value


class Route:
    def __init__(self, channels, consumer, **filters):
        self.channel_names = {channels} if isinstance(channels, str) else set(channels)
        for ch in self.channel_names:
            names.require_channel(ch, v1=True)
        self._consumer = consumer
        self.filters = _compile_filters(filters)

    @property
    def consumer(self):
        if isinstance(self._consumer, str):
            self._consumer = load_object(self._consumer)
        if not callable(self._consumer):
            raise TypeError(f"consumer {self._consumer!r} is not callable")
        return self._consumer

    def match(self, message, strip=None):
        if message.channel.name not in self.channel_names:
            return None
        kwargs = {}
        for key, regex in self.filters.items():
            value = _value(message, key)
            if value is None:
                return None
            if strip and key in strip:
                value = value[strip[key]:]
            m = regex.match(value)
            if m is None:
                return None
            kwargs.update(m.groupdict())
        return self.consumer, kwargs

    def channels(self):
        return set(self.channel_names)

    def __repr__(self):
        return f"route({sorted(self.channel_names)}, {self._consumer!r})"


class Include:
    def __init__(self, routing, **filters):
        self.routing = routing
        self.filters = _compile_filters(filters)
        self._router = None

    @property
    def router(self):
        if self._router is None:
            self._router = Router(self.routing)
        return self._router

    def match(self, message, strip=None):
        strip = dict(strip or {})
        kwargs = {}
        for key, regex in self.filters.items():
            value = _value(message, key)
            if value is None:
                return None
            offset = strip.get(key, 0)
            m = regex.match(value[offset:])
            if m is None:
                return None
            kwargs.update(m.groupdict())
            strip[key] = offset + m.end()
        inner = self.router.match(message, strip)
        if inner is None:
            return None
        consumer, inner_kwargs = inner
        return consumer, {**kwargs, **inner_kwargs}

    def channels(self):
        return self.router.channels()


def route(channels, consumer, **filters):
    return Route(channels, consumer, **filters)


def include(routing, **filters):
    return Include(routing, **filters)


class Router:
    """Routes messages to consumers; ``channels()`` is what a worker listens on."""

    def __init__(self, routing):
        routing = load_object(routing)
        if isinstance(routing, dict):
            routing = [Route(ch, consumer) for ch, consumer in routing.items()]
        if not isinstance(routing, (list, tuple)):
            raise TypeError(f"routing must be a dict or a list of route()/include(), not {type(routing).__name__}")
        for entry in routing:
            if not hasattr(entry, "match") or not hasattr(entry, "channels"):
                raise TypeError(f"routing entry {entry!r} is not a route() or include()")
        self.routes = list(routing)

    def match(self, message, strip=None):
        for entry in self.routes:
            found = entry.match(message, strip)
            if found is not None:
                return found
        return None

    def channels(self):
        result = set()
        for entry in self.routes:
            result |= entry.channels()
        return result

    def resolve(self):
        """Import every consumer now (so a bad dotted path fails at boot, not
        on the first message)."""
        for entry in self.routes:
            if isinstance(entry, Include):
                entry.router.resolve()
            else:
                entry.consumer  # noqa: B018  (the property imports it)

    def add_default(self, channel, consumer):
        """Append a fallback route for ``channel`` (matched last)."""
        self.routes.append(Route(channel, consumer))
