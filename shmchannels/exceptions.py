"""The layer's exceptions.

When Django Channels is installed they subclass its own exceptions, so code
written for channels_redis (``except channels.exceptions.ChannelFull``) keeps
working, and so does code that catches ours.  Without Channels (an ASGI 1
environment) they are plain exceptions.
"""

try:  # pragma: no cover - exercised in whichever environment runs
    from channels.exceptions import ChannelFull as _ChannelFullBase
    from channels.exceptions import MessageTooLarge as _MessageTooLargeBase
except ImportError:  # pragma: no cover
    _ChannelFullBase = Exception
    _MessageTooLargeBase = Exception


class ChannelFull(_ChannelFullBase):
    """The channel holds ``capacity`` unread messages (or its ring is out of space)."""


class MessageTooLarge(_MessageTooLargeBase):
    """The encoded message exceeds ``max_message_size``."""


class BusError(RuntimeError):
    """The shared-memory bus cannot be created or opened (wrong version, no /dev/shm room)."""
