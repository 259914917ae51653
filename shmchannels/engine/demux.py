"""Local fan-out of process-specific (``prefix!``) rings.

A record in a ``prefix!`` ring names its target channels (one for a send, many
for a group send that reached several channels behind the same prefix).  The
process that receives from the ring moves records into per-channel buffers
here, and ``receive(channel)`` pops from its buffer.

Records are taken lazily: only until every channel somebody is waiting for
has a message.  A backlog therefore stays in the ring, where it counts
against the senders' ``capacity`` and makes them raise ChannelFull; it is
never silently trimmed.  Messages for channels nobody is waiting on right
now, met on the way, go to their buffer, which keeps its newest ``capacity``
messages (channels_redis's rule: one consumer that stopped reading must not
stall every other channel of the process).  Such drops are counted and
logged.

ASGI 1 receivers ask for a whole ``prefix!`` and get (full name, message) in
arrival order; such ring keys are drained one record at a time into an
ordered queue instead.
"""

import collections
import logging
import threading

from shmchannels import names
from shmchannels.bus import _shm, blobs
from shmchannels.bus.codec import MSGPACK, decode
from shmchannels.bus.control import H_FLUSH_EPOCH

logger = logging.getLogger("shmchannels.layers")

_PURGE_EVERY_NS = 1_000_000_000
_WARN_EVERY_NS = 60_000_000_000


# Records on the hot paths are plain tuples, read by unpacking, never by
# index: a NamedTuple costs ~270 ns more to build (CPython 3.11), which a
# group send to 1000 parked consumers pays once per consumer.
#   waiter    (loop, future, channel)      an asyncio receive parked on a ring
#                                          (channel None: it waits for the ring);
#                                          its future resolves to a handed-over
#                                          buffered entry, or None: look again
#   buffered  (deadline, flags, body)      a message held here for one channel;
#                                          deadline in CLOCK_MONOTONIC ns
#   in order  (channel, deadline, flags, body)  an ASGI 1 ``prefix!`` queue entry
_DEADLINE = 0  # of a buffered entry
_IN_ORDER_DEADLINE = 1


def signal_waiters(waiters, current, elsewhere):
    """Tell parked receivers to look again: resolve the futures of those on
    ``current`` (the running loop) now, and collect the others' in
    ``elsewhere`` for a thread-safe wake-up outside any lock."""
    for loop, fut, _channel in waiters:
        if loop is current:
            if not fut.done():
                fut.set_result(None)
        else:
            elsewhere.append((loop, fut))


_FLAT = frozenset((str, bytes, int, float, bool, type(None)))
_SHARE_MAX = 256 << 10


def _shareable(body):
    """(body, message) when ``body`` decodes to a dict of immutable values
    (a shallow copy of it is then a decode of its own), else None."""
    if len(body) > _SHARE_MAX:
        return None  # not held past its delivery
    try:
        msg = decode(body)
    except Exception:  # each receiver decodes, and fails, on its own
        return None
    if type(msg) is not dict:
        return None
    for value in msg.values():
        if type(value) not in _FLAT:
            return None
    return body, msg


def _targets(key, meta):
    """Full channel names a record in ring ``key`` is for (meta: local parts)."""
    if not meta:
        return (key,)
    return [key + local for local in meta.decode("utf-8").split("\n")]


class Demux:
    def __init__(self, bus):
        self.bus = bus
        self.lock = threading.Lock()
        self.buffers = {}  # channel -> deque of buffered entries
        self.ordered = {}  # ring key -> deque of in-order entries
        self.capacity_of = {}  # ring key -> callable(channel) -> int
        self.overflowed = 0  # messages dropped from full buffers of unread channels
        self._control = bus.control
        self._epoch_load = bus.control.mem.load  # one shared-memory load per buffered pop
        self._epoch_offset = H_FLUSH_EPOCH
        self.flush_epoch = bus.control.flush_epoch
        self._last_purge = 0
        self._last_warning = 0
        # (body, message) of the last group record ``deliver`` decoded (see
        # ``_shareable``), matched by the body's identity on resumption
        self.shared = None

    def check_flush_epoch(self):
        """Drop every buffer if the bus was flushed (by any process) since we last looked."""
        epoch = self._control.flush_epoch
        if epoch != self.flush_epoch:
            self.flush_epoch = epoch
            self.clear()
            return True
        return False

    def register(self, key, capacity_of, ordered=False):
        """Declare how records of ``key`` are buffered in this process."""
        with self.lock:
            self.capacity_of.setdefault(key, capacity_of)
            if ordered:
                self.ordered.setdefault(key, collections.deque())

    def take(self, ring, key, channel, own_meta):
        """The next message for ``channel``: from its buffer, else from the ring.

        Records met on the way that are for other channels are buffered.
        Returns (flags, body), None when there is nothing, or False when the
        ring's head record is not ready (a writer is mid-copy or died).
        """
        if self.buffers.get(channel):
            if self._epoch_load(self._epoch_offset) != self.flush_epoch:
                self.check_flush_epoch()  # flushed elsewhere: buffers were cleared
            got = self.pop(channel)
            if got is not None:
                return got
        stashed = False
        with self.lock:
            get = ring.get
            while True:
                rec = get()
                if not rec:
                    break
                flags, body, meta, deadline = rec
                if flags == blobs.BLOB:
                    rec = self._resolve(rec)
                    if rec is None:
                        continue
                    flags, body, meta, deadline = rec
                if meta == own_meta:  # the common case: a message for us alone
                    break
                mine = False
                for target in _targets(key, meta):
                    if target == channel and not mine:
                        mine = True
                    else:
                        self._buffer(key, target, deadline, flags, body)
                        stashed = True
                if mine:
                    break
        if stashed:
            ring.notify()
        return (rec[0], rec[1]) if rec else rec

    def _resolve(self, rec):
        """A record naming a blob as the record of its message (None: the blob is gone).
        Read as the record leaves the ring, so its name is unlinked at once
        and buffers hold messages, not names."""
        flags, ref, meta, deadline = rec
        body = blobs.take(self.bus.stem, ref)
        return None if body is None else (MSGPACK, body, meta, deadline)

    def drain(self, ring, key, wanted):
        """Move records of ``ring`` into local buffers until every channel in
        ``wanted`` has a message (or, for an ordered key, one record moved),
        or the ring has no consumable record.

        Returns the set of channel names (or {key}) that received something.
        """
        touched = set()
        buffers = self.buffers
        with self.lock:
            ordered = self.ordered.get(key)
            if ordered is not None:
                missing = set() if ordered else {key}
            else:
                missing = {c for c in wanted if not buffers.get(c)}
            get = ring.get
            while missing:
                rec = get()
                if not rec:
                    break
                flags, body, meta, deadline = rec
                if flags == blobs.BLOB:
                    rec = self._resolve(rec)
                    if rec is None:
                        continue
                    flags, body, meta, deadline = rec
                targets = _targets(key, meta)
                if ordered is not None:
                    ordered.extend((t, deadline, flags, body) for t in targets)
                    touched.add(key)
                    break
                for target in targets:
                    self._buffer(key, target, deadline, flags, body)
                    touched.add(target)
                    missing.discard(target)
            self._maybe_purge()
        if touched:
            ring.notify()  # threads parked on this ring re-check their buffers
        return touched

    def deliver(self, ring, key, waiters, current, elsewhere):
        """Serve parked receivers of ``ring``: ``waiters`` maps channel -> [waiter].

        Takes records only until every waiting channel has a message.  A
        waiter on ``current`` (the dispatching loop) whose buffer is empty
        gets the message as its future's result and leaves ``waiters`` (its
        receive then skips ``Hub.unpark``); others are resolved to look again
        (``elsewhere`` collects those of other loops).  Called with the hub's
        lock held.

        A record for several channels (a group send) is decoded here once:
        when its message is flat (``shared``), each receiver it is handed to
        copies that dict instead of decoding the body again.
        """
        buffers = self.buffers
        stashed = False
        with self.lock:
            missing = 0
            for channel, lst in waiters.items():
                if channel is None:
                    continue
                if buffers.get(channel):  # already has data: just wake it
                    signal_waiters(lst, current, elsewhere)
                else:
                    missing += 1
            get = ring.get
            while missing:
                rec = get()
                if not rec:
                    break
                flags, body, meta, deadline = rec
                if flags == blobs.BLOB:
                    rec = self._resolve(rec)
                    if rec is None:
                        continue
                    flags, body, meta, deadline = rec
                entry = (deadline, flags, body)
                if meta:
                    locals_ = meta.decode("utf-8").split("\n")
                    if len(locals_) > 1:
                        self.shared = _shareable(body)
                else:
                    locals_ = ("",)
                for local in locals_:
                    target = key + local
                    lst = waiters.get(target)
                    if not lst:
                        self._buffer(key, target, deadline, flags, body)
                        stashed = True
                        continue
                    # A waiter of this loop whose future is not done has an
                    # empty buffer: one that had data was resolved above, and
                    # a buffer fills below only when nobody could be handed to.
                    loop, fut, _channel = lst[0]
                    if loop is current and not fut.done():
                        fut.set_result(entry)
                        missing -= 1
                        if len(lst) == 1:
                            del waiters[target]
                        else:
                            del lst[0]
                        continue
                    for i, (loop, fut, _channel) in enumerate(lst):
                        if loop is current and not fut.done():
                            fut.set_result(entry)
                            missing -= 1
                            del lst[i]
                            break
                    else:
                        if not buffers.get(target):
                            missing -= 1
                        self._buffer(key, target, deadline, flags, body)
                        stashed = True
                        signal_waiters(lst, current, elsewhere)
            self._maybe_purge()
        if stashed:
            ring.notify()

    def _maybe_purge(self):
        now = _shm.monotonic_ns()
        if now - self._last_purge > _PURGE_EVERY_NS:
            self._purge(now)

    def _buffer(self, key, target, deadline, flags, body):
        buf = self.buffers.get(target)
        if buf is None:
            capacity_of = self.capacity_of.get(key)
            cap = capacity_of(target) if capacity_of else 100
            buf = self.buffers[target] = collections.deque(maxlen=max(1, cap))
        elif len(buf) == buf.maxlen:
            self._overflow(target)
        buf.append((deadline, flags, body))

    def _overflow(self, channel):
        self.overflowed += 1
        now = _shm.monotonic_ns()
        if now - self._last_warning > _WARN_EVERY_NS:
            self._last_warning = now
            logger.warning(
                "channel %s is not being read: its buffer is at capacity, dropping its oldest message "
                "(%d dropped in this process so far)", channel, self.overflowed,
            )

    def requeue(self, channel, entry):
        """Put back a message handed to a receiver that was cancelled, first in line."""
        with self.lock:
            buf = self.buffers.get(channel)
            if buf is None:
                buf = self.buffers[channel] = collections.deque(maxlen=max(1, self._capacity(channel)))
            buf.appendleft(entry)

    def _capacity(self, channel):
        capacity_of = self.capacity_of.get(names.ring_key(channel))
        return capacity_of(channel) if capacity_of else 100

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

    def take_ordered(self, ring, key):
        """(channel, flags, body) of the next live message of the ordered key
        ``key``: from its queue, else straight from ``ring``; None if none.

        A record for one channel is returned as it leaves the ring (the reply
        reader of a protocol server takes one per response); only the other
        targets of a record for several are queued, in order.
        """
        if self._epoch_load(self._epoch_offset) != self.flush_epoch:
            self.check_flush_epoch()  # flushed elsewhere: the queue is dropped
        with self.lock:
            q = self.ordered[key]
            if q:
                now = _shm.monotonic_ns()
                while q:
                    channel, deadline, flags, body = q.popleft()
                    if deadline > now:
                        return channel, flags, body
            get = ring.get
            while True:
                rec = get()
                if not rec:
                    return None
                flags, body, meta, deadline = rec  # the ring delivers no expired record
                if flags == blobs.BLOB:
                    rec = self._resolve(rec)
                    if rec is None:
                        continue
                    flags, body, meta, deadline = rec
                if not meta:
                    return key, flags, body
                local = meta.decode("utf-8")
                if "\n" not in local:
                    return key + local, flags, body
                first, *rest = local.split("\n")
                q.extend((key + t, deadline, flags, body) for t in rest)
                break
        ring.notify()  # threads parked on this ring: the queue has messages
        return key + first, flags, body

    def pop_ordered(self, key):
        """(channel, flags, body) of the oldest live message of an ordered key, or None."""
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
            while buf and buf[0][_DEADLINE] <= now:
                buf.popleft()
            if not buf:
                del self.buffers[channel]
        for q in self.ordered.values():
            while q and q[0][_IN_ORDER_DEADLINE] <= now:
                q.popleft()
