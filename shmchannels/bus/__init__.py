"""The shared-memory bus of one prefix: segments in /dev/shm and the processes attached to them.

Everything here is plain shared memory, files and kernel locks; nothing
imports asyncio (delivery inside a process is ``shmchannels.engine``).

``attach(prefix)`` gives the process's ``Bus``: its slot, its rings (``rings``),
crash recovery for every process that died (``recovery``) and its wake FIFO
(``wake``).  ``_shm`` is the C core (``ring.c``, bound by ``_shm.c``).
"""

from shmchannels.bus.bus import DEFAULT_RING_SIZE, DEFAULT_SLOTS, Bus, attach, attached, detach_all
from shmchannels.bus.recovery import (
    PUT_CLOSED,
    PUT_FORKED,
    PUT_FULL,
    PUT_NOMEM,
    PUT_NOSPACE,
    PUT_OK,
    PUT_TOO_BIG,
    PUT_WAKE,
    head_unready,
)
from shmchannels.exceptions import BusError

__all__ = [
    "DEFAULT_RING_SIZE", "DEFAULT_SLOTS", "PUT_CLOSED", "PUT_FORKED", "PUT_FULL", "PUT_NOMEM", "PUT_NOSPACE",
    "PUT_OK", "PUT_TOO_BIG", "PUT_WAKE", "Bus", "BusError", "attach", "attached", "detach_all", "head_unready",
]
