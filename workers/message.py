"""The message a consumer receives: ``consumer(message, **kwargs)``."""

import copy
import time

from shmchannels.exceptions import ChannelFull
from shmchannels.objects import Channel, _send


class Message:
    """``message.content`` (the dict), ``message.channel``,
    ``message.reply_channel`` (a Channel, or None) and ``message.channel_layer``.
    Item access reads the content: ``message["text"]``."""

    __slots__ = ("content", "channel", "channel_layer", "_reply", "_flow")

    def __init__(self, content, channel_name, channel_layer):
        self.content = content
        self.channel_layer = channel_layer
        self.channel = Channel.from_bus(channel_name, channel_layer)
        self._reply = False
        self._flow = None

    @property
    def reply_channel(self):
        if self._reply is False:
            name = self.content.get("reply_channel")
            # Validated when sent (by the layer), not on every message.
            flow = self.reply_flow if name else None
            if flow is not None:
                self._reply = channel = ReplyChannel.__new__(ReplyChannel)
                channel.name, channel.channel_layer, channel.flow = name, self.channel_layer, flow
            else:
                self._reply = Channel.from_bus(name, self.channel_layer) if name else None
        return self._reply

    @property
    def reply_flow(self):
        """The ``ReplyFlow`` of an ``http.request`` whose protocol server
        offers a window (``__window__``), else None."""
        if self._flow is None:
            window = self.content.get("__window__")
            name = self.content.get("reply_channel")
            if type(window) is not int or window <= 0 or not name or self.channel.name != "http.request":
                return None
            self._flow = ReplyFlow(self.channel_layer, name, window)
        return self._flow

    def __getitem__(self, key):
        return self.content[key]

    def __contains__(self, key):
        return key in self.content

    def get(self, key, default=None):
        return self.content.get(key, default)

    def keys(self):
        return self.content.keys()

    def items(self):
        return self.content.items()

    def copy(self):
        return Message(copy.deepcopy(self.content), self.channel.name, self.channel_layer)

    def __repr__(self):
        return f"<Message on {self.channel.name}>"


#: seconds a sender waits for credit before it takes the connection for gone
#: (the protocol server closes a connection whose client made no progress
#: for its ``send_timeout``, and says so; this only covers a protocol server
#: that died meanwhile)
CREDIT_TIMEOUT = 300.0


class ReplyFlow:
    """Sends of one HTTP response, held to the protocol server's window.

    A protocol server that offers it puts ``"__window__": W`` (bytes) in
    ``http.request``.  The worker may send W bytes of content beyond the
    last credit; the message that reaches that point carries
    ``"__credit__": [channel, n]`` (n: content bytes sent with it), and the
    worker waits on ``channel`` for the protocol server's one answer:
    ``{"credit": n}`` once that message is in a write buffer under its
    high-water mark (the client reads), and the worker may go on to n + W;
    or ``{"closed": True}``, the client is gone and later sends are dropped.
    One answer per question, and only while the worker waits for it, so no
    credit message is ever left unread.  A client that does not read holds
    its own worker thread back, and the protocol server never holds more
    than about 2 W of its response (docs/decisions.md, "HTTP write
    backpressure").

    ``send(channel, message)`` is the layer-like method ``Channel.send`` and
    deferred sends call; a full reply ring is waited out, as
    ``ChannelLayer.send_waiting`` does.
    """

    __slots__ = ("layer", "name", "window", "sent", "granted", "credit_channel", "gone")

    def __init__(self, layer, name, window):
        self.layer = layer
        self.name = name
        self.window = window
        self.sent = 0  # content bytes sent
        self.granted = window  # we may send up to here without asking
        self.credit_channel = None
        self.gone = False

    def send(self, channel, message):
        if channel != self.name:
            return self.layer.send_waiting(channel, message)
        if self.gone:
            return False
        content = message.get("content")
        self.sent += len(content) if isinstance(content, (bytes, bytearray, memoryview, str)) else 0
        if self.sent < self.granted or not message.get("more_content", False):
            try:
                self.layer.send(channel, message)
            except ChannelFull:  # the protocol server is behind: wait it out
                self.layer.send_waiting(channel, message)
            return True
        if self.credit_channel is None:
            self.credit_channel = self.layer.new_channel("http.credit?")
        self.layer.send_waiting(channel, {**message, "__credit__": [self.credit_channel, self.sent]})
        self._wait()
        return True

    def _wait(self):
        layer = self.layer
        channel = [self.credit_channel]
        deadline = time.monotonic() + CREDIT_TIMEOUT
        while True:
            _, msg = layer.receive(channel, block=True)
            if msg is not None:
                n = msg.get("credit")
                if type(n) is int:
                    self.granted = n + self.window
                    return
                if msg.get("closed"):
                    break
            if time.monotonic() > deadline:
                break
        self.gone = True
        layer.discard_channel(self.credit_channel)


class ReplyChannel(Channel):
    """``message.reply_channel`` of an ``http.request`` whose protocol server
    offers a window: its sends (immediate or deferred) go through a ``ReplyFlow``."""

    __slots__ = ("flow",)

    def send(self, content, immediately=False):
        _send(self.flow, self.name, content, immediately)
