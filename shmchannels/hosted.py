"""A WebSocket connection's channel, held by its protocol server.

An ASGI 3 application hosted in a `shmchannels serve` worker lives only as
long as that worker; its client's socket lives in the protocol server.  So
the channel that Channels gives the consumer (``self.channel_name``, the name
``group_add`` records) belongs to the protocol server too: group and channel
messages sent to it land in the protocol server's ring, wait there with the
client's frames while the connection moves between workers (a HUP, a
crash), and reach whichever instance hosts the connection now, in order.

The worker that hosts the connection runs the application instance with
``CURRENT`` set to a ``HostedChannel``.  ``SharedMemoryChannelLayer`` of the
same bus then answers the instance's first ``new_channel()`` with that name
and its ``receive()`` on it with the messages the protocol server relayed
(docs/protocol.md, "ASGI 3 applications").  Outside a hosted instance (a
view, a management command, uvicorn) ``CURRENT`` is unset and nothing
changes.
"""

import contextvars


class HostedChannel:
    __slots__ = ("name", "prefix", "receive", "adopted")

    def __init__(self, name, prefix, receive):
        self.name = name  # the protocol server's channel for this connection
        self.prefix = prefix  # the bus it is on: only a layer of that bus may adopt it
        self.receive = receive  # coroutine function: the next relayed message
        self.adopted = False

    def adopt(self, prefix):
        """The name for a layer's ``new_channel()``, once per instance, or None."""
        if self.adopted or prefix != self.prefix:
            return None
        self.adopted = True
        return self.name


#: the HostedChannel of the application instance running in this context
CURRENT = contextvars.ContextVar("shmchannels_hosted_channel", default=None)


def current():
    return CURRENT.get()
