"""The message a consumer receives: ``consumer(message, **kwargs)``."""

import copy

from shmchannels.objects import Channel


class Message:
    """``message.content`` (the dict), ``message.channel``,
    ``message.reply_channel`` (a Channel, or None) and ``message.channel_layer``.
    Item access reads the content: ``message["text"]``."""

    __slots__ = ("content", "channel", "channel_layer", "_reply")

    def __init__(self, content, channel_name, channel_layer):
        self.content = content
        self.channel_layer = channel_layer
        self.channel = Channel.from_bus(channel_name, channel_layer)
        self._reply = False

    @property
    def reply_channel(self):
        if self._reply is False:
            name = self.content.get("reply_channel")
            # Validated when sent (by the layer), not on every message.
            self._reply = Channel.from_bus(name, self.channel_layer) if name else None
        return self._reply

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
