"""Who holds a message: the ``__taken__`` markers workers send.

A worker that takes a request or a WebSocket message first sends
``{"__taken__": [slot, gen(, order)], "reply_channel": ...}`` to the
server's ``shmchannels.taken?`` channel, so that the server can answer for
it if that process dies (docs/protocol.md, "Workers that die").  The marker
crosses a process boundary as a list; inside the server the identity
travels as a ``WorkerId``, which the liveness sweep passes to the bus.
"""

from typing import NamedTuple


class WorkerId(NamedTuple):
    slot: int
    gen: int  # the slot's generation: a new process in the same slot is another worker


def worker_ident(value):
    """The WorkerId in a marker's ``[slot, gen, ...]``, or None if malformed."""
    if type(value) in (list, tuple) and len(value) >= 2 and type(value[0]) is int and type(value[1]) is int:
        return WorkerId(value[0], value[1])
    return None
