"""``Inbox``: the host's bridge, run by the one elected process of the host.

On the link's I/O loop it

* pulls the host's inbox (``N:inbox:<host>``: LPOP of up to 256, else a
  BLPOP that blocks 1 s) and injects each message into the local bus: a
  channel message into its owner's ring (``Core.send``), a group message
  as a local ``group_send``, a membership into the local registry;
* every ``host_lease / 3`` (and at once when Redis is back) renews the
  host's claim (``CLAIM``) and advertises every group that has members
  here (``ADVERTISE``; groups that lost theirs are withdrawn), so a host
  that dies stops receiving group messages one lease later.

A message whose deadline passed is dropped here (``dropped["expired"]``).

**Capacity across hosts.**  Capacity is per ring, the owner's ``prefix!``.
As soon as an injected message leaves its ring at or over its capacity
(``ring.pending >= capacity`` right after ``Core.send``), or an injected
message meets ``ChannelFull``, the bridge sets ``N:full:<host>:<ring key>``
(value: the capacity; ``PX`` 1 s), right after the batch it pulled
(<= 256 messages); from then on ``SEND_TO_HOST`` refuses sends to that ring
and the sender raises ``ChannelFull`` ("channel X on host B is full
(capacity N)").  While any marker is set, a task on the link's loop looks
at the marked rings every 100 ms: a ring with room again (after dropping
its expired head) has its marker deleted, one still full has its ``PX``
renewed, so the markers of a host that died lapse within 1 s by
themselves.  Nothing is marked: no task runs, nothing polls.

What is still dropped, counted in ``dropped["full"]`` (with a warning), is
exactly what this bridge injects while the ring is full: the messages that
were already in the inbox, or reached it, before the marker was set (the
rest of the batch, and the sends of the one Redis round trip until the
``SET``), and those that reach a ring filled meanwhile by its own host or
by a group send (a group fan-out that fills a ring marks nothing: the next
message to that ring finds it full, is dropped, and sets the marker).
Group sends never raise, here as on one host: a full member is skipped.
"""

import asyncio
import logging
import threading

from shmchannels import names
from shmchannels.bridge import scripts, wire
from shmchannels.bus.codec import decode
from shmchannels.engine import groups
from shmchannels.engine.core import Core
from shmchannels.exceptions import BusError, ChannelFull

logger = logging.getLogger("shmchannels.bridge")

PULL_BATCH = 256
BLOCK_S = 1.0
ADVERTISE_CHUNK = 1000
FULL_MARK_MS = 1000  #: life of a ring's full marker unless renewed
FULL_RECHECK_S = 0.1  #: how often marked rings are looked at (only while some are)


class Inbox:
    def __init__(self, link, options, layer_options, token):
        self.link = link
        self.options = options
        self.keys = scripts.Keys(options.namespace)
        self.sealer = wire.Sealer(options.symmetric_encryption_keys)
        self.token = token
        self.lease_ms = int(options.host_lease * 1000)
        self.core = Core(layer_options, validate=names.require_channel)
        self.bus = None  # the bus it injects into, set by start
        self.claimed = asyncio.Event()  # of the link's loop; created there (see start)
        self.advertised = set()
        self.dropped = {"expired": 0, "full": 0, "invalid": 0}
        self._task = None
        self._conflict_logged = False
        self.full = {}  # ring key -> capacity: rings marked full in Redis (or being marked)
        self._to_mark = {}  # ring key -> capacity: found full in the batch being injected
        self._watcher = None  # the task that re-checks self.full, running only while it has entries

    @classmethod
    def start(cls, link, options, layer_options, token):
        """Create and run one on the link's loop; returns it once running."""
        async def make():
            inbox = cls(link, options, layer_options, token)
            inbox.bus = inbox.core.bus  # attached (or the process's own) before anything runs
            inbox._task = asyncio.ensure_future(inbox.run())
            return inbox

        return link.run(make()).result()

    def stop(self):
        """Stop pulling (from any thread but the link's; waits up to 1 s)."""
        task = self._task
        if task is None or task.done():
            return
        self.link.loop.call_soon_threadsafe(task.cancel)
        if threading.current_thread() is not self.link.thread:
            try:
                self.link.run(asyncio.wait([task], timeout=1.0)).result(2.0)
            except Exception:  # noqa: BLE001 - leaving anyway
                pass

    def farewell_if_last(self):
        """The host's last process is leaving: release its claim and withdraw
        its groups, so other hosts stop sending to it now rather than one
        lease later (a host that dies or is cut off is left to its lease)."""
        bus = self.bus
        if bus is None or [s for s in bus.live_slots() if s != bus.slot]:
            return
        keys, host = self.keys, self.options.host

        async def farewell():
            reader = self.link.reader
            await reader.evalsha(scripts.SHA["RELEASE"], 1, keys.hosts, host, self.token)
            if self.advertised:
                await reader.evalsha(scripts.SHA["WITHDRAW"], len(self.advertised),
                                     *(keys.group(g) for g in self.advertised), host)
        if self.link.up:
            try:
                self.link.run(asyncio.wait_for(farewell(), 1.0)).result(2.0)
            except Exception as exc:  # noqa: BLE001 - leaving anyway; the lease ends it
                logger.info("bridge: could not release host %r on leaving: %s", host, exc)

    async def run(self):
        self.link.on_up(self.renew)
        renewer = asyncio.ensure_future(self._renew_forever())
        try:
            await self._pull_forever()
        finally:
            renewer.cancel()
            if self._watcher is not None:
                self._watcher.cancel()  # the markers lapse by themselves

    # ------------------------------------------------------------- pulling

    async def _pull_forever(self):
        link, key = self.link, self.keys.inbox(self.options.host)
        while True:
            if not link.up:
                await link.until_up()
                continue
            if not self.claimed.is_set():
                await self.claimed.wait()
                continue
            try:
                items = await link.reader.lpop(key, PULL_BATCH)
                if not items:
                    got = await link.reader.blpop([key], timeout=BLOCK_S)
                    items = [got[1]] if got else ()
            except link.errors as exc:
                link.went_down(exc)
                continue
            if not self.bus.usable:
                return  # leaving: what was popped is lost, as a receiver's death loses its messages
            for element in items:
                await self.inject(element)
            if self._to_mark:
                await self._mark_full()

    async def inject(self, element):
        """One inbox element into the local bus.  A membership change waits
        off this loop for a registry lock another process holds
        (``groups.registry_write``): this loop also carries every cross-host
        send of the process, and the elements after it wait their turn, so a
        group send that follows an add still reaches the new member."""
        try:
            got = wire.unpack(self.sealer, element)
        except ValueError as exc:
            self.dropped["invalid"] += 1
            logger.warning("bridge: dropped an inbox element: %s", exc)
            return
        if got is None:
            self.dropped["expired"] += 1
            return
        kind, target, body = got
        core = self.core
        try:
            if kind == wire.CHANNEL:
                if core.send(target, decode(body)):
                    self._check_full(target)
            elif kind == wire.GROUP:
                core.group_send(target, decode(body))
            elif kind == wire.GROUP_ADD:
                await groups.registry_write(core.group_add, target, body.decode("utf-8"))
            elif kind == wire.GROUP_DISCARD:
                await groups.registry_write(core.group_discard, target, body.decode("utf-8"))
        except ChannelFull:
            self.dropped["full"] += 1
            if kind == wire.CHANNEL:
                self._check_full(target, full=True)
            logger.warning("bridge: a message for %r from another host was dropped: its channel is full", target)
        except (TypeError, ValueError, LookupError) as exc:
            self.dropped["invalid"] += 1
            logger.warning("bridge: dropped a message for %r from another host: %s", target, exc)
        except BusError as exc:  # the registry stayed locked for 30 s: that change is lost, the rest go on
            self.dropped["invalid"] += 1
            logger.error("bridge: a group change for %r from another host was lost: %s", target, exc)

    # ----------------------------------------------------- full rings

    def _check_full(self, channel, full=False):
        """After an injection into ``channel``'s ring: is the ring at its
        capacity now (``full``: it refused the message)?  Then mark it."""
        key = names.ring_key(channel)
        if key in self.full or key in self._to_mark:
            return
        capacity = self.core.get_capacity(channel)
        if not full:
            ring = self.bus.rings.get(key)
            if ring is None or not capacity or ring.pending < capacity:
                return
        self._to_mark[key] = capacity

    async def _mark_full(self):
        """Set the markers of the rings found full (one pipeline), and watch them."""
        marks, self._to_mark = self._to_mark, {}
        self.full.update(marks)  # the watcher sets them again if this fails
        try:
            await self._publish(set_=marks)
        except self.link.errors as exc:
            self.link.went_down(exc)
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.ensure_future(self._watch_full())

    async def _publish(self, set_=(), delete=()):
        pipe = self.link.reader.pipeline(transaction=False)
        host = self.options.host
        for key, capacity in dict(set_).items():
            pipe.set(self.keys.full(host, key), capacity, px=FULL_MARK_MS)
        if delete:
            pipe.delete(*(self.keys.full(host, key) for key in delete))
        await pipe.execute()

    async def _watch_full(self):
        """Every 100 ms while some ring is marked: delete the marker of a ring
        with room, renew the others'.  Ends when none is marked."""
        while self.full:
            await asyncio.sleep(FULL_RECHECK_S)
            if not self.bus.usable:
                return  # leaving: the markers lapse by themselves
            try:
                await self._recheck_full()
            except self.link.errors as exc:
                self.link.went_down(exc)
            except Exception:  # noqa: BLE001 - keep watching: a marker never renewed would just lapse
                logger.exception("bridge: updating the full markers of host %r failed", self.options.host)

    async def _recheck_full(self):
        still, room = {}, []
        rings = self.bus.rings
        for key, capacity in self.full.items():
            ring = rings.get(key)
            if ring is not None and not ring.closed and ring.pending >= capacity:
                ring.purge()  # expired records make room, as a local send would find
            if ring is None or ring.closed or ring.pending < capacity:
                room.append(key)  # (an owner that is gone: sends to it are dropped quietly anyway)
            else:
                still[key] = capacity
        for key in room:
            del self.full[key]
        if self.link.up:  # while down: nothing to tell; the markers lapse, and are set again if still full
            await self._publish(set_=still, delete=room)

    # ------------------------------------------------------------ renewing

    async def _renew_forever(self):
        while True:
            try:
                await self.renew()
            except self.link.errors as exc:
                self.link.went_down(exc)
            except Exception:  # never let a surprise end the renewals: the host would fade out
                logger.exception("bridge: renewing host %r failed", self.options.host)
            await asyncio.sleep(self.options.host_lease / 3)

    async def renew(self):
        """Claim the host again and advertise its groups."""
        reader, keys, host = self.link.reader, self.keys, self.options.host
        reply = await reader.evalsha(scripts.SHA["CLAIM"], 1, keys.hosts, host, self.token, self.lease_ms)
        if not reply[0]:
            self.claimed.clear()
            if not self._conflict_logged:
                self._conflict_logged = True
                logger.error("bridge: host identity %r is claimed by another live host on Redis %s (its lease ends "
                             "in %.1f s); this host receives nothing from other hosts until it lapses. Give each "
                             "host its own 'host'.", host, self.link.where, reply[2] / 1000)
            return
        self._conflict_logged = False
        self.claimed.set()
        if not self.bus.usable:
            return  # the process is leaving (its bus detaching): renew nothing, attach nothing again
        groups = {g for g, n in self.bus.registry.counts().items() if n}
        ttl = 3 * self.lease_ms
        live = sorted(groups)
        for i in range(0, len(live), ADVERTISE_CHUNK):
            chunk = [keys.group(g) for g in live[i:i + ADVERTISE_CHUNK]]
            await reader.evalsha(scripts.SHA["ADVERTISE"], len(chunk), *chunk, host, ttl)
        gone = sorted(self.advertised - groups)
        if gone:
            await reader.evalsha(scripts.SHA["WITHDRAW"], len(gone), *(keys.group(g) for g in gone), host)
        self.advertised = groups
