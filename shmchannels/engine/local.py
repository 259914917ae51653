"""What one process keeps for one bus besides the bus itself.

The bus (``shmchannels.bus``) is shared memory and knows nothing of event
loops.  Delivery inside the process needs two more things per bus, made
here on first use: the ``Demux`` (local buffers of ``prefix!`` channels) and
the ``Hub`` (asyncio receivers parked on the process's wake FIFO).  They go
with the bus: closed when it detaches, forgotten in a forked child (whose
next use attaches a bus of its own).
"""

import os
import threading

from shmchannels.engine.demux import Demux
from shmchannels.engine.wakeup import Hub


class Local:
    def __init__(self, bus):
        self.bus = bus
        self.demux = Demux(bus)
        # A plain attribute, made here (it costs a few dicts; it watches no
        # FIFO until something parks): a receive reads it on every park.
        self.hub = Hub(bus, self.demux)
        bus.on_detach(self.close)

    def has_parked(self):
        """Does any task of this process wait on this bus right now?"""
        return bool(self.hub.waiters)

    def close(self):
        self.hub.close()
        _locals.pop(self.bus, None)


_locals = {}
_locals_lock = threading.Lock()


def local_for(bus):
    """The process's ``Local`` for ``bus`` (made on first use)."""
    local = _locals.get(bus)
    if local is None:
        with _locals_lock:
            local = _locals.get(bus)
            if local is None:
                local = _locals[bus] = Local(bus)
    return local


def _after_fork_in_child():
    # The parent's loops and waiters are the parent's; nothing to undo in
    # shared memory.  The child's next use attaches a new bus and a new Local.
    global _locals_lock
    _locals_lock = threading.Lock()
    _locals.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
