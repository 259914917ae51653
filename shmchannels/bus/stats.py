"""Per-process statistics in shared memory: counters and histograms that
another process (``shmchannels metrics``, the serve master's exporter,
``shmchannels status``) reads without asking the process anything.

Every attached process has one segment, ``s<owner tag>`` (its slot and
generation, as in the name of the ``prefix!`` rings it owns), created at
attach and unlinked with its slot: by its own detach, or by whoever
reclaims the slot of a dead process (``Recovery.reclaim_held``), so a
SIGKILLed process's segment goes exactly the way its rings go.

Layout: a 4 KiB header, then ``NSHARDS`` shards of 4 KiB, each an array of
little-endian u64 words, 8-byte aligned::

    header  word 0 magic, 1 version, 2 shards, 3 shard size, 4 pid,
            5 created (time_ns), 8.. 8+NSHARDS: kind of each shard
            (0: the process's own; else a control.KINDS code: the serve
            master keeps the totals of its dead children there)
            byte 1024: CHANNELS names of 64 bytes ([u64 length][56 bytes]),
            the labels of the per-channel histograms, in order of first use
    shard   words 0..63 counters (COUNTERS), 64.. histograms (HISTOGRAMS),
            CHANNEL_HIST..: one histogram per channel of the table,
            CHANNEL_EXC..: exceptions per channel

Each shard has one writer: a thread takes a shard of its own at its first
write (``Stats.shard``), so an increment is a plain ``words[i] += 1`` on a
``memoryview.cast('Q')`` (no syscall, no lock, no atomics: an aligned
8-byte store is never torn, and a reader that meets a histogram between
its bucket and its count just sees the next scrape's value a moment
early).  Readers sum the shards.  A process with more threads than shards
shares the last ones (an increment may then be lost, rarely).
"""

import bisect
import os
import threading
import time

from shmchannels import names
from shmchannels.bus import segments

MAGIC = int.from_bytes(b"SHMSTAT1", "little")
VERSION = 1
HEADER_SIZE = 4096
SHARD_SIZE = 4096
NSHARDS = 16
SEGMENT_SIZE = HEADER_SIZE + NSHARDS * SHARD_SIZE
H_KINDS = 8
CHANNEL_TABLE = 1024
CHANNEL_ENTRY = 64
CHANNELS = 16
#: the per-channel row every channel past the first ``CHANNELS - 1`` shares
OTHER_CHANNELS = "(other)"  # not a valid channel name: no real channel shares it

#: histogram bucket bounds, seconds (Prometheus's ``le``), and in ns
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BOUNDS_NS = tuple(int(b * 1e9) for b in BUCKETS)
#: words of one histogram: a count per bucket (the last one is +Inf), then the sum in ns;
#: the count is the buckets' sum (``count``), one increment less per observation
HIST_WORDS = len(BUCKETS) + 2
H_SUM = len(BUCKETS) + 1

#: the protocol server's counters (``ProtocolServer.counters``), then the others
PROTOCOL_COUNTERS = (
    "connections_total", "requests_total", "websockets_total", "rejected_full", "timeouts",
    "bad_requests", "client_disconnects", "body_waits", "ack_timeouts", "ping_timeouts",
    "ws_protocol_errors", "unknown_replies", "bad_replies", "worker_deaths", "resumes", "relays_dropped",
    "write_limit_closes",
)
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
#: WebSocket close codes counted one by one; any other is counted as "other"
WS_CLOSE_CODES = (1000, 1001, 1002, 1003, 1006, 1007, 1008, 1009, 1011, 1012, 1013)
RESTART_CAUSES = ("exit", "timeout", "crash", "max_requests")
COUNTERS = (
    *PROTOCOL_COUNTERS,
    *(f"responses_{c}" for c in STATUS_CLASSES),
    "ws_messages_in", "ws_messages_out", *(f"ws_closes_{code}" for code in (*WS_CLOSE_CODES, "other")),
    "http_connections_open", "websockets_open",  # gauges, set by the protocol server's tick
    "consumer_messages", "consumer_exceptions", "max_requests_reached",
    *(f"restarts_{k}_{c}" for k in ("protocol", "worker") for c in RESTART_CAUSES),
)
assert len(COUNTERS) <= 64
C = {name: i for i, name in enumerate(COUNTERS)}
#: values of a moment, not totals: never folded into a dead process's totals
GAUGES = frozenset(C[n] for n in ("http_connections_open", "websockets_open", "max_requests_reached"))
HISTOGRAMS = ("response_latency",)
HIST = {name: 64 + i * HIST_WORDS for i, name in enumerate(HISTOGRAMS)}
CHANNEL_HIST = 64 + len(HISTOGRAMS) * HIST_WORDS
CHANNEL_EXC = CHANNEL_HIST + CHANNELS * HIST_WORDS
SHARD_WORDS = CHANNEL_EXC + CHANNELS
assert SHARD_WORDS * 8 <= SHARD_SIZE


def suffix(slot, gen):
    return f"s{names.owner_tag(slot, gen)}"


def observe(words, base, ns, _bisect=bisect.bisect_left, _bounds=BOUNDS_NS):
    """Add one observation of ``ns`` nanoseconds to the histogram at ``base``."""
    words[base + _bisect(_bounds, ns)] += 1
    words[base + H_SUM] += ns


def count(words, base):
    """Observations in the histogram at ``base``."""
    return sum(words[base : base + len(BUCKETS) + 1])


def _initialise(mapping, pid):
    words = memoryview(mapping).cast("Q")
    try:
        words[1], words[2], words[3], words[4], words[5] = VERSION, NSHARDS, SHARD_SIZE, pid, time.time_ns()
        words[0] = MAGIC
    finally:
        words.release()


class Stats:
    """The writer side: this process's own segment."""

    def __init__(self, mapping):
        self.mapping = mapping
        self.words = memoryview(mapping).cast("Q")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._next = 0
        self._channels = {}  # channel -> index in the table
        self._claimed = False
        self.shards = [self.words[(HEADER_SIZE + i * SHARD_SIZE) // 8:][:SHARD_WORDS] for i in range(NSHARDS)]

    @classmethod
    def create(cls, stem, slot, gen):
        mapping, _ = segments.create_published(stem, suffix(slot, gen), SEGMENT_SIZE,
                                               lambda m: _initialise(m, os.getpid()))
        return cls(mapping)

    def shard(self):
        """The calling thread's shard (a ``memoryview`` of u64 words, indexed by ``C`` / ``HIST``)."""
        try:
            return self._local.words
        except AttributeError:
            with self._lock:
                i = min(self._next, NSHARDS - 1)
                self._next += 1
            words = self._local.words = self.shards[i]
            return words

    def claim(self):
        """True for the first caller only (the protocol server of this process)."""
        with self._lock:
            claimed, self._claimed = self._claimed, True
        return not claimed

    def reserve(self, kind_code):
        """A shard no thread writes, holding the totals of ``kind_code`` (the master's fold)."""
        with self._lock:
            i = self._next
            self._next += 1
        if i >= NSHARDS:
            raise ValueError("no stats shard left")
        self.words[H_KINDS + i] = kind_code
        return self.shards[i]

    def channel_index(self, channel):
        """The index of ``channel`` in the per-channel table.  The first
        ``CHANNELS - 1`` channels get a row each, every later one shares the
        last row, ``OTHER_CHANNELS``: an app with many message types keeps
        a bounded label set and loses no observation."""
        i = self._channels.get(channel)
        if i is None:
            with self._lock:
                i = self._channels.get(channel)
                if i is None and len(self._channels) >= CHANNELS - 1:
                    channel = OTHER_CHANNELS
                    i = self._channels.get(channel)
                if i is None:
                    i = len(self._channels)
                    raw = channel.encode("utf-8")[: CHANNEL_ENTRY - 8]
                    at = CHANNEL_TABLE + i * CHANNEL_ENTRY
                    self.mapping[at + 8 : at + 8 + len(raw)] = raw
                    self.words[at // 8] = len(raw)  # published last: readers skip empty entries
                    self._channels[channel] = i
        return i

    def release(self):
        for view in (*self.shards, self.words):
            view.release()
        self.shards = []


class Totals:
    """What a reader took from one segment: per shard kind, the summed words,
    and the channel names of the per-channel rows."""

    __slots__ = ("pid", "by_kind", "channels")

    def __init__(self, pid, by_kind, channels):
        self.pid = pid
        self.by_kind = by_kind  # kind code (0: the process's own) -> [SHARD_WORDS ints]
        self.channels = channels  # [name] in table order


def read_mapping(mapping):
    """``Totals`` of a mapped segment, or None if it is not (yet) a stats segment."""
    if len(mapping) < SEGMENT_SIZE:
        return None
    words = memoryview(mapping).cast("Q")
    try:
        if words[0] != MAGIC or words[1] != VERSION:
            return None
        by_kind = {}
        for i in range(min(words[2], NSHARDS)):
            start = (HEADER_SIZE + i * SHARD_SIZE) // 8
            row = words[start : start + SHARD_WORDS].tolist()
            if not any(row):
                continue
            have = by_kind.get(words[H_KINDS + i])
            by_kind[words[H_KINDS + i]] = row if have is None else [a + b for a, b in zip(have, row)]
        channels = []
        for i in range(CHANNELS):
            at = CHANNEL_TABLE + i * CHANNEL_ENTRY
            n = words[at // 8]
            if not n or n > CHANNEL_ENTRY - 8:
                break
            channels.append(bytes(mapping[at + 8 : at + 8 + n]).decode("utf-8", "replace"))
        return Totals(words[4], by_kind, channels)
    finally:
        words.release()


def open_segment(stem, slot, gen):
    """Map the stats segment of process (``slot``, ``gen``); None if it has none."""
    return segments.open_existing(segments.file_name(stem, suffix(slot, gen)))


def read(stem, slot, gen):
    mapping = open_segment(stem, slot, gen)
    if mapping is None:
        return None
    try:
        return read_mapping(mapping)
    finally:
        mapping.close()


def segment_pid(stem, base):
    """The pid written in the stats segment ``base`` (a file name), or None."""
    mapping = segments.open_existing(base)
    if mapping is None:
        return None
    try:
        words = memoryview(mapping).cast("Q")
        try:
            return words[4] if len(mapping) >= SEGMENT_SIZE and words[0] == MAGIC else None
        finally:
            words.release()
    finally:
        mapping.close()


def pid_alive(pid):
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_by_pid(stem, pid):
    """(file name, mapping) of the stats segment process ``pid`` wrote, or (None, None)."""
    for base, _, _ in segments.files_of_kind(stem, "stats"):
        if segment_pid(stem, base) == pid:
            mapping = segments.open_existing(base)
            if mapping is not None:
                return base, mapping
    return None, None


def fold(into, totals, stats):
    """Add a dead process's counters and histograms (not its gauges) to the
    shard ``into`` of ``stats`` (the serve master's own segment)."""
    own = totals.by_kind.get(0)
    if own is None:
        return
    for i in range(CHANNEL_HIST):
        if own[i] and i not in GAUGES:
            into[i] += own[i]
    for j, channel in enumerate(totals.channels):
        k = stats.channel_index(channel)
        if k is None:
            continue
        src, dst = CHANNEL_HIST + j * HIST_WORDS, CHANNEL_HIST + k * HIST_WORDS
        for w in range(HIST_WORDS):
            if own[src + w]:
                into[dst + w] += own[src + w]
        if own[CHANNEL_EXC + j]:
            into[CHANNEL_EXC + k] += own[CHANNEL_EXC + j]


class Counters:
    """A ``dict``-like view of named counters of one shard (``counters[name] += 1``),
    for code that counted in a dict (``ProtocolServer.counters``)."""

    __slots__ = ("words", "index")

    def __init__(self, words, names):
        self.words = words
        self.index = {n: C[n] for n in names}

    def __getitem__(self, name):
        return self.words[self.index[name]]

    def __setitem__(self, name, value):
        self.words[self.index[name]] = value

    def __contains__(self, name):
        return name in self.index

    def __iter__(self):
        return iter(self.index)

    def __len__(self):
        return len(self.index)

    def keys(self):
        return self.index.keys()

    def items(self):
        return [(n, self.words[i]) for n, i in self.index.items()]


def private_shard():
    """Words laid out like a shard, in this process only (a second protocol
    server of one process, tests)."""
    return memoryview(bytearray(SHARD_SIZE)).cast("Q")
