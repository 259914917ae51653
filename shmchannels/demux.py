"""Local fan-out of process-specific (``prefix!``) rings.

A record in a ``prefix!`` ring names its target channels (one for a send, many
for a group send that reached several channels behind the same prefix).  The
process that receives from the ring drains records into per-channel buffers
here, and ``receive(channel)`` pops from its buffer.  Draining happens only
when somebody receives, so a channel nobody reads keeps its messages in the
ring, where they count against the sender's capacity; once drained, each
channel's buffer keeps its newest ``capacity`` messages (as channels_redis's
receive buffer does).

ASGI 1 receivers ask for a whole ``prefix!`` and get (full name, message) in
arrival order; such ring keys are drained into one ordered queue instead.
"""

import collections
import threading

from . import _shm

_PURGE_EVERY_NS = 1_000_000_000


class Demux:
    def __init__(self, bus):
        self.bus = bus
        self.lock = threading.Lock()
        self.buffers = {}  # channel -> deque[(deadline_ns, flags, body)]
        self.ordered = {}  # ring key -> deque[(channel, deadline_ns, flags, body)]
        self.capacity_of = {}  # ring key -> callable(channel) -> int
        self._last_purge = 0

    def register(self, key, capacity_of, ordered=False):
        """Declare how records of ``key`` are buffered in this process."""
        with self.lock:
            self.capacity_of.setdefault(key, capacity_of)
            if ordered:
                self.ordered.setdefault(key, collections.deque())

    def drain(self, ring, key):
        """Move every consumable record of ``ring`` into local buffers.

        Returns the set of channel names (or, for ordered keys, {key}) that
        received something.
        """
        touched = set()
        capacity_of = self.capacity_of.get(key)
        with self.lock:
            ordered = self.ordered.get(key)
            while True:
                records, status = ring.get_many(256)
                for flags, body, meta, deadline in records:
                    targets = meta.decode("utf-8").split("\n") if meta else (key,)
                    if ordered is not None:
                        ordered.extend((t, deadline, flags, body) for t in targets)
                        touched.add(key)
                        continue
                    for target in targets:
                        buf = self.buffers.get(target)
                        if buf is None:
                            cap = capacity_of(target) if capacity_of else 100
                            buf = self.buffers[target] = collections.deque(maxlen=max(1, cap))
                        buf.append((deadline, flags, body))
                        touched.add(target)
                if status is not True:
                    break
            now = _shm.monotonic_ns()
            if now - self._last_purge > _PURGE_EVERY_NS:
                self._purge(now)
        if touched:
            ring.notify()  # threads parked on this ring re-check their buffers
        return touched

    def pop(self, channel):
        """(flags, body) of the oldest live message buffered for ``channel``."""
        with self.lock:
            buf = self.buffers.get(channel)
            if not buf:
                return None
            now = _shm.monotonic_ns()
            while buf:
                deadline, flags, body = buf.popleft()
                if deadline > now:
                    if not buf:
                        del self.buffers[channel]
                    return flags, body
            del self.buffers[channel]
            return None

    def has(self, channel):
        return bool(self.buffers.get(channel))

    def pop_ordered(self, key):
        """(channel, flags, body) of the oldest live message of an ordered key."""
        with self.lock:
            q = self.ordered.get(key)
            now = _shm.monotonic_ns()
            while q:
                channel, deadline, flags, body = q.popleft()
                if deadline > now:
                    return channel, flags, body
            return None

    def has_ordered(self, key):
        return bool(self.ordered.get(key))

    def discard(self, channel):
        """Forget a channel that will not be read again (its connection closed)."""
        with self.lock:
            self.buffers.pop(channel, None)

    def clear(self):
        with self.lock:
            self.buffers.clear()
            for q in self.ordered.values():
                q.clear()

    def buffered(self):
        with self.lock:
            return sum(len(b) for b in self.buffers.values()) + sum(len(q) for q in self.ordered.values())

    def _purge(self, now):
        # Messages for channels nobody reads any more leave with their expiry.
        self._last_purge = now
        for channel in list(self.buffers):
            buf = self.buffers[channel]
            while buf and buf[0][0] <= now:
                buf.popleft()
            if not buf:
                del self.buffers[channel]
        for q in self.ordered.values():
            while q and q[0][1] <= now:
                q.popleft()
