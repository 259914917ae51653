"""What protocol servers and workers count, for ``shmchannels metrics``.

The front end of ``bus/stats.py`` for ``server/`` and ``workers/``: a
process's counters live in its stats segment in shared memory, one shard
per writing thread, and another process reads them at scrape time.  An
increment is ``words[C["name"]] += 1`` on a ``memoryview`` (no syscall, no
lock)."""

from shmchannels.bus.stats import (
    C, CHANNEL_EXC, CHANNEL_HIST, HIST, HIST_WORDS, PROTOCOL_COUNTERS, WS_CLOSE_CODES, Counters, observe,
    private_shard,
)

__all__ = ["C", "HIST", "CHANNEL_EXC", "CHANNEL_HIST", "HIST_WORDS", "PROTOCOL_COUNTERS", "WS_CLOSE_CODES", "Counters", "observe",
           "private_shard", "process_stats", "claim_shard", "ConsumerCounts"]


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


class ConsumerCounts:
    """What a worker counts of its consumers (Channels-1 consumers, hosted
    ASGI events): run time by channel, exceptions, and a flag when it stops
    for max_requests.  Each thread writes its own shard; with no bus yet
    nothing is counted."""

    HANDLED = C["consumer_messages"]
    RAISED = C["consumer_exceptions"]
    MAX_REQUESTS = C["max_requests_reached"]

    def __init__(self, layer):
        self._stats = process_stats(layer)
        self._rows = {}  # channel -> its row of histograms in a shard, -1 past the label cap

    def consumed(self, channel, ns, raised=False):
        stats = self._stats
        if stats is None:
            return
        words = stats.shard()
        words[self.HANDLED] += 1
        row = self._rows.get(channel)
        if row is None:
            i = stats.channel_index(channel)
            row = self._rows[channel] = -1 if i is None else i
        if row >= 0:
            observe(words, CHANNEL_HIST + row * HIST_WORDS, ns)
        if raised:
            words[self.RAISED] += 1
            if row >= 0:
                words[CHANNEL_EXC + row] += 1

    def max_requests_reached(self):
        if self._stats is not None:
            self._stats.shard()[self.MAX_REQUESTS] = 1
