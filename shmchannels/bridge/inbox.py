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

A message whose deadline passed is dropped here; one that finds its ring
full is dropped with a warning (the sender was told only about the inbox's
room, see docs/architecture.md "Between hosts").
"""

import asyncio
import logging
import threading

from shmchannels import names
from shmchannels.bridge import scripts, wire
from shmchannels.bus.codec import decode
from shmchannels.engine.core import Core
from shmchannels.exceptions import ChannelFull

logger = logging.getLogger("shmchannels.bridge")

PULL_BATCH = 256
BLOCK_S = 1.0
ADVERTISE_CHUNK = 1000


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
                self.inject(element)

    def inject(self, element):
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
                core.send(target, decode(body))
            elif kind == wire.GROUP:
                core.group_send(target, decode(body))
            elif kind == wire.GROUP_ADD:
                core.group_add(target, body.decode("utf-8"))
            elif kind == wire.GROUP_DISCARD:
                core.group_discard(target, body.decode("utf-8"))
        except ChannelFull:
            self.dropped["full"] += 1
            logger.warning("bridge: a message for %r from another host was dropped: its channel is full", target)
        except (TypeError, ValueError, LookupError) as exc:
            self.dropped["invalid"] += 1
            logger.warning("bridge: dropped a message for %r from another host: %s", target, exc)

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
