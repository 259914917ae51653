"""Protocol servers: HTTP/1.1 and WebSocket termination onto channels.

    from shmchannels.server import ProtocolServer, ProtocolConfig, channel_capacity

See ``server.py`` for the life cycle and ``docs/protocol.md`` for the
messages.
"""

from .config import ProtocolConfig, channel_capacity
from .server import ProtocolServer

__all__ = ["ProtocolConfig", "ProtocolServer", "channel_capacity"]
