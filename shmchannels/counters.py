"""What protocol servers and workers count, for ``shmchannels metrics``.

The front end of ``bus/stats.py`` for ``server/`` and ``workers/``: a
process's counters live in its stats segment in shared memory, one shard
per writing thread, and another process reads them at scrape time.  An
increment is ``words[C["name"]] += 1`` on a ``memoryview`` (no syscall, no
lock)."""

from shmchannels.bus.stats import (
    C, CHANNEL_EXC, CHANNEL_HIST, HIST, HIST_WORDS, PROTOCOL_COUNTERS, Counters, observe, private_shard,
)

__all__ = ["C", "HIST", "CHANNEL_EXC", "CHANNEL_HIST", "HIST_WORDS", "PROTOCOL_COUNTERS", "Counters", "observe",
           "private_shard", "process_stats", "claim_shard"]


def process_stats(layer):
    """The ``bus.stats.Stats`` of ``layer``'s bus in this process, or None (no bus yet)."""
    core = getattr(layer, "core", None)
    bus = getattr(core, "bus", None) if core is not None else None
    return getattr(bus, "stats", None)


def claim_shard(layer):
    """The calling thread's shard of this process's stats segment, the first
    time a caller asks for it in this process; a private shard after that
    (several protocol servers in one process count for themselves)."""
    stats = process_stats(layer)
    if stats is None or not stats.claim():
        return private_shard()
    return stats.shard()
