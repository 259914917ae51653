"""The layer engine shared by both front ends.

``Core`` knows nothing about coroutines or ASGI generations: it routes a
channel name to its ring, stores and takes records, parks callers, and runs
groups, flush and statistics.  ``shmchannels.layers`` (Channels 4, async) and
``shmchannels.asgi1`` (ASGI 1, sync) wrap it with their own name rules and
calling conventions.
"""

import fnmatch
import logging
import os
import re
import time
import weakref

from shmchannels.bus import _shm, blobs
from shmchannels import bus as bus_mod, names
from shmchannels.bus.codec import MSGPACK, decode, encode
from shmchannels.engine import groups, large
from shmchannels.engine.local import local_for

logger = logging.getLogger("shmchannels.layers")

#: the user's limit, not the rings': 16 MiB of content (uvicorn's ws_max_size
#: default; channels_redis takes 8 MiB) plus 64 KiB of envelope.  Records
#: over ``blobs.inline_max(ring_size)`` travel in blobs (docs/decisions.md,
#: "Large messages").
DEFAULT_MAX_MESSAGE_SIZE = (16 << 20) + (64 << 10)
DEFAULT_SPIN_US = 50
DEFAULT_PARK_TIMEOUT = 2.0
_HOT_NS = 5_000_000  # spin before parking only if traffic arrived this recently
STUCK_RECHECK = 0.05  # seconds between looks at a ring whose head record is unready
_ROUTE_CACHE = 8192
#: a group's member processes are checked for life at most this often, so a
#: dead one's memberships end within this time of the next group send
OWNER_CHECK_NS = 200_000_000


def compile_capacities(channel_capacity):
    """[(compiled pattern, capacity)]: globs become regexes, compiled regexes stay.

    ``channel_capacity`` maps patterns to capacities, or is a sequence of
    (pattern, capacity) pairs (``LayerOptions.channel_capacity``)."""
    result = []
    pairs = channel_capacity.items() if hasattr(channel_capacity, "items") else (channel_capacity or ())
    for pattern, value in pairs:
        if hasattr(pattern, "match"):
            result.append((pattern, value))
        else:
            result.append((re.compile(fnmatch.translate(pattern)), value))
    return result


# Routes are cached per channel name and unpacked on every send and receive,
# so they are plain tuples, always read by unpacking: unpacking a NamedTuple
# takes CPython 3.11's generic path (50 ns against 16 ns for four fields),
# which measured +60 ns per send and +130 ns per receive (bench notes in
# docs/decisions.md, "Records on the hot paths").
#   send route     (ring, key, meta, capacity)
#       ring: _shm.Ring, or None when the channel's owner process is gone;
#       key: the ring key (names.ring_key); meta: a ``prefix!`` record names
#       its target by local part (UTF-8), else None
#   receive route  (ring, key, specific, own_meta, ready)
#       specific: behind a ``prefix!``, taken through the demux; own_meta: the
#       meta of a record for this channel alone; ready(): may a parked
#       receiver find something now?
#   receive plan   (takers, rings, ready)   for receive_blocking, per channel list


_cores = weakref.WeakSet()  # every Core attached in this process


def _after_fork_in_child():
    # The parent's routes hold the parent's bus and rings: forget them, so
    # the child's next use attaches a bus of its own.
    for core in list(_cores):
        core.clear_routes()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _plan(core, channels):
    """What ``Core.receive_blocking`` over ``channels`` needs, computed once per channel list:
    (take functions, rings to wait on, a ready check over all of them)."""
    key = tuple(channels)
    plan = core._plans.get(key)
    bus = core._bus
    if plan is not None and bus is not None and bus.usable:
        return plan
    takers, rings, readies = [], [], []
    for ch in channels:
        route = core.ring_for_receive(ch)
        if ch.endswith("!"):
            takers.append(lambda ch=ch: core.take_prefix(ch))
        else:
            takers.append(lambda ch=ch, route=route: (lambda m: None if m is None else (ch, m))(core.take(ch, route)))
        ring, _key, _specific, _own_meta, ready = route
        if ring not in rings:
            rings.append(ring)
        readies.append(ready)
    plan = (takers, rings, lambda: any(r() for r in readies))
    if len(core._plans) >= 256:
        core._plans.clear()
    core._plans[key] = plan
    return plan


class Core:
    local = None  # engine.local.Local of the attached bus (its demux and hub): None until attached
    def __init__(self, options, *, validate=None):
        """``options``: a ``shmchannels.options.LayerOptions`` (validated when
        it was built); ``validate(name)`` raises TypeError for a channel name
        the front end does not accept."""
        self.options = options
        self.prefix = options.prefix
        self.expiry = options.expiry
        self.group_expiry = options.group_expiry
        self.capacity = options.capacity
        self.channel_capacity = compile_capacities(options.channel_capacity)
        self.ring_size = options.ring_size
        self.max_message_size = options.max_message_size
        # one size check on the hot path: a body over this is checked against
        # max_message_size, then sent in a blob
        self.inline_max = min(blobs.inline_max(options.ring_size), options.max_message_size)
        self.slots = options.slots
        self.spin_ns = int(options.spin_us * 1000)
        self.park_timeout = options.park_timeout
        self.expiry_ns = int(options.expiry * 1_000_000_000)
        self.validate = validate or (lambda name: names.require_channel(name))
        self._bus = None
        self._send_routes = {}
        self.receive_routes = {}
        self._plans = {}
        self._rotation = 0
        self._last_rx = 0
        self._owners_checked = {}
        self._sends = 0
        self._large = large.BlobSender(self.expiry_ns)
        self._interrupts = 0  # bumped by wake_parked()
        self._woken = {}  # channel -> the _interrupts count of its last wake_parked()

    # ------------------------------------------------------------------ bus

    @property
    def bus(self):
        bus = self._bus
        if bus is None or not bus.usable:
            bus = bus_mod.attach(self.prefix, ring_size=self.ring_size, slots=self.slots)
            self._bus = bus
            self.local = local_for(bus)
            self.clear_routes()
            # The route caches hold only routes of a usable bus: emptied when
            # it detaches, drops dead processes' rings, or the process forks.
            bus.recovery.on_stale_caches(self.clear_routes)
            bus.on_detach(self.clear_routes)
            _cores.add(self)
        return bus

    def clear_routes(self):
        """Forget cached routes (they hold rings, hence mappings)."""
        self._send_routes = {}
        self.receive_routes = {}
        self._plans = {}

    def get_capacity(self, channel):
        for pattern, capacity in self.channel_capacity:
            if pattern.match(channel):
                return capacity
        return self.capacity

    # ----------------------------------------------------------------- send

    def _route(self, channel):
        self.validate(channel)
        bus = self.bus
        key = names.ring_key(channel)
        ring = bus.rings.get(key)
        # A record in a ``prefix!`` ring names its target by local part only.
        meta = None if key == channel else channel[len(key):].encode("utf-8")
        route = (ring, key, meta, self.get_capacity(channel))
        if ring is not None:
            if len(self._send_routes) >= _ROUTE_CACHE:
                self._send_routes.clear()
            self._send_routes[channel] = route
        return route

    def send(self, channel, message):
        """Store ``message`` on ``channel``.  False if it was dropped because
        the channel's owner process no longer exists."""
        bus = self._bus
        route = self._send_routes.get(channel) if bus is not None and bus.usable else None
        if route is None:
            route = self._route(channel)
            bus = self._bus
        ring, key, meta, capacity = route
        if ring is None:
            return False
        body = encode(message)
        if len(body) > self.inline_max:
            return self._send_large(channel, route, body)
        status = ring.put(body, meta, self.expiry_ns, capacity, MSGPACK)
        self._sends += 1
        if not self._sends & 1023:
            bus.recovery.maintain()
        if status == bus_mod.PUT_TOO_BIG:  # a ring smaller than ours (another program made it)
            return self._send_large(channel, route, body)
        if status == bus_mod.PUT_OK or bus.recovery.settle_put(status, ring, key, body, meta, self.expiry_ns, capacity, MSGPACK):
            return True
        self._send_routes.pop(channel, None)
        return False

    def _send_large(self, channel, route, body):
        large.check_size(body, self.max_message_size, "message for", channel)
        if self._large.send(self._bus, route, channel, body):
            return True
        self._send_routes.pop(channel, None)
        return False

    # -------------------------------------------------------------- receive

    def ring_for_receive(self, channel):
        """(ring, key, specific, own_meta, ready) for a full channel name or a ``prefix!``.

        ``own_meta`` is the record meta a message addressed to this channel
        alone carries (its UTF-8 local part), compared as bytes on the hot path;
        ``ready()`` tells a parked receiver whether to look again.
        """
        hit = self.receive_routes.get(channel)
        if hit is not None:
            return hit
        bus = self.bus
        key = names.ring_key(channel)
        specific = key.endswith("!")
        ring = bus.rings.get(key)
        if ring is None:
            raise LookupError(f"channel {channel!r} belongs to a process that no longer exists")
        if specific:
            self.local.demux.register(key, self.get_capacity, ordered=channel == key)
        if not specific:
            ready = ring.has_data
        elif channel == key:
            demux = self.local.demux
            ready = lambda: demux.has_ordered(key) or ring.has_data()  # noqa: E731
        else:
            buffers = self.local.demux.buffers
            ready = lambda: bool(buffers.get(channel)) or ring.has_data()  # noqa: E731
        hit = (ring, key, specific, channel[len(key):].encode("utf-8") if specific else None, ready)
        if len(self.receive_routes) >= _ROUTE_CACHE:
            self.receive_routes.clear()
        self.receive_routes[channel] = hit
        return hit

    def take(self, channel, route=None):
        """One non-blocking attempt: the decoded message for ``channel`` or None.

        ``channel`` is a full name (normal, single-reader or process-specific).
        """
        ring, key, specific, own_meta, _ = route or self.ring_for_receive(channel)
        while True:
            if specific:
                got = self.local.demux.take(ring, key, channel, own_meta)
            else:
                got = ring.get()
            if got:  # a ring record (flags, body, meta, deadline) or a demux pop (flags, body)
                self._last_rx = _shm.monotonic_ns()
                body = got[1] if got[0] != blobs.BLOB else blobs.take(self._bus.stem, got[1])  # demux: resolved
                if body is not None:
                    return decode(body)
                continue
            if got is None:
                if ring.closed and ring.owner is None:  # retired: follow the name
                    self.receive_routes.pop(channel, None)
                    self._bus.rings.reopen(key, ring)
                    ring, key, specific, own_meta, _ = self.ring_for_receive(channel)
                    continue
                return None
            if not self._bus.recovery.unstick(ring):
                return None

    def take_prefix(self, key):
        """ASGI 1: (full channel, message) from any channel behind ``prefix!``, or None."""
        ring, key, _specific, _own_meta, _ready = self.ring_for_receive(key)
        got = self.local.demux.take_ordered(ring, key)
        if got is None:
            if ring.pending and not ring.has_data():  # an unready head: a writer mid-copy, or dead
                self._bus.recovery.unstick(ring)
            return None
        self._last_rx = _shm.monotonic_ns()
        channel, _flags, body = got
        return channel, decode(body)

    def ready_check(self, channel):
        _ring, _key, _specific, _own_meta, ready = self.ring_for_receive(channel)
        return ready

    def spin(self, ready, loop=None):
        """Busy-wait up to spin_us for ``ready()`` if traffic is flowing.

        A kernel wake-up costs 20-30 us each way on a 2-vCPU VM; a peer that
        answers within the spin window is caught without one.  The spin only
        runs when it can cost nobody anything:

        * the process received something in the last 5 ms (an idle process
          parks at once and costs no CPU);
        * on an event loop: no other callback is ready to run, and no other
          task of this process is parked.  Otherwise those tasks have work
          (or will be woken by the same FIFO byte), and spinning would hold
          them up: 500 consumers each spinning 50 us after one group message
          is 25 ms of nothing.
        """
        if not self.spin_ns:
            return False
        now = _shm.monotonic_ns()
        if now - self._last_rx > _HOT_NS:
            return False
        if loop is not None:
            if getattr(loop, "_ready", None):  # asyncio's run queue (uvloop has none to inspect)
                return False
            if self.local.has_parked():
                return False
        deadline = now + self.spin_ns
        mono = _shm.monotonic_ns
        while mono() < deadline:
            if ready():
                return True
        return False

    def handed_over(self, handed):
        """The message of a (deadline, flags, body) that the hub handed to a
        parked receive on wake-up."""
        self._last_rx = _shm.monotonic_ns()
        body = handed[2]
        shared = self.local.demux.shared  # a group record's message, decoded once
        if shared is not None and shared[0] is body:
            return shared[1].copy()
        return decode(body)

    def receive_blocking(self, channels, timeout):
        """ASGI 1: wait up to ``timeout`` seconds on several channels.

        Parks in a futex wait over every ring involved, with the GIL released.
        Fairness between channels: each call starts one channel further on,
        so a busy channel cannot starve a quiet one.
        """
        takers, rings, ready = _plan(self, channels)
        n = len(takers)
        deadline = None
        interrupts = self._interrupts
        while True:
            start = self._rotation = (self._rotation + 1) % n
            for i in range(n):
                got = takers[(start + i) % n]()
                if got is not None:
                    return got
            if self.spin(ready):
                continue
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
            remaining = deadline - now
            if remaining <= 0:
                return None, None
            if self._interrupts != interrupts and any(self._woken.get(c, 0) > interrupts for c in channels):
                return None, None  # wake_parked() named one of our channels
            self._bus.recovery.maintain()
            seqs = _shm.wait_enter(rings)
            try:
                if not ready():
                    stuck = any(bus_mod.head_unready(r) for r in rings)
                    _shm.wait(rings, seqs, min(remaining, STUCK_RECHECK if stuck else self.park_timeout))
            finally:
                _shm.wait_leave(rings)

    def claim_prefix(self, key, capacity_of=None, ordered=False):
        """Create the ring of a ``prefix!`` this process mints and say how its
        records are buffered here (``ordered``: ASGI 1's receive of the whole prefix)."""
        self.bus.rings.owned(key)
        self.local.demux.register(key, capacity_of or self.get_capacity, ordered=ordered)

    async def wait(self, ring, key, ready, channel=None):
        """Park on ``ring`` until ``ready()`` may be true (``Hub.wait``)."""
        return await self.local.hub.wait(ring, key, ready, channel, self.park_timeout)

    # --------------------------------------------------------------- groups

    def group_add(self, group, channel, until=None):  # until: Registry.add's (groups.registry_write)
        self.bus.registry.add(group, channel, until)

    def group_discard(self, group, channel, until=None):
        self.bus.registry.discard(group, channel, until)

    def group_channels(self, group):
        return self.bus.registry.channels(group, self.group_expiry)

    def group_send(self, group, message):
        """One record per destination ring; never raises ChannelFull."""
        bus = self.bus
        targets = bus.registry.targets(group, self.group_expiry)
        now = _shm.monotonic_ns()
        if now - self._owners_checked.get(group, 0) > OWNER_CHECK_NS:
            if len(self._owners_checked) > _ROUTE_CACHE:
                self._owners_checked.clear()
            self._owners_checked[group] = now
            bus.recovery.maintain()
            if bus.recovery.reclaim_dead_owners(targets):
                targets = bus.registry.targets(group, self.group_expiry)
        if not targets:
            return 0
        body = encode(message)
        if len(body) <= self.inline_max:
            return groups.fan_out(bus, group, targets, body, self.expiry_ns, self.get_capacity)
        large.check_size(body, self.max_message_size, "group message for", group)
        return self._large.group_send(bus, group, targets, body, self.get_capacity)

    # ---------------------------------------------------------------- misc

    def flush(self):
        self.bus.flush()
        self.local.demux.check_flush_epoch()
        self.clear_routes()

    def discard_channel(self, channel):
        """Drop local buffers of a channel that will not be read again."""
        if self._bus is not None and "!" in channel:
            self.local.demux.discard(channel)
        self.receive_routes.pop(channel, None)
        self._send_routes.pop(channel, None)

    def channel_statistics(self, channel):
        return groups.channel_statistics(self.bus.rings.get(names.ring_key(channel)))

    def global_statistics(self):
        return groups.global_statistics(self.bus.all_rings())

    # ------------------------------------------------------------ accessors

    def wake_parked(self, channels):
        """Make threads of this process parked in ``receive_blocking`` on
        ``channels`` return (None, None) now.  A parked thread's channels all
        have cached routes; a channel without one has nobody parked on it,
        and no bus is attached for it."""
        self._interrupts += 1
        if len(self._woken) > _ROUTE_CACHE:
            self._woken.clear()
        for channel in channels:
            self._woken[channel] = self._interrupts
        for channel in channels:
            route = self.cached_route(channel)
            if route is not None:
                ring, _key, _specific, _own_meta, _ready = route
                ring.notify()

    def cached_route(self, channel):
        """The receive route ``ring_for_receive(channel)`` cached, or None (a
        front end's hot path reads ``receive_routes`` directly)."""
        return self.receive_routes.get(channel)
