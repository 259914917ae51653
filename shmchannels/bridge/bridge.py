"""``Bridge``: what ``SharedMemoryChannelLayer`` asks when it has ``hosts``.

* ``where(channel)``: ``LOCAL`` (the bus, as without a bridge), a host id
  (a process-specific channel of another host: its inbox in Redis) or
  ``SHARED`` (a named channel matching ``cross_host_channels``: a Redis list
  every host's receivers pop from, so each message has one receiver; its
  group memberships are kept in Redis too, and the one group operation
  pushes to it, with the layer's ``capacity``).
  Cached per name; a local send costs one dict lookup more.
* ``send``, ``group_send``, ``group_add``, ``group_discard``,
  ``receive_shared``, ``flush``: the cross-host halves.  The layer does the
  local half through the engine exactly as without a bridge.

A process-specific name carries its host as the dotted segment
``at-<host>`` just before the minted ``shm…!`` part
(``specific.at-web1.shm00a000000123456789ab!Xy…``).

Per process and bus (``station``): one ``Link``, one ``Election`` and, in
the elected process, the host's ``Inbox``.
"""

import asyncio
import concurrent.futures
import fnmatch
import logging
import re
import threading
import time

from shmchannels.bridge import link as link_mod, scripts, wire
from shmchannels.bridge.election import Election, host_token
from shmchannels.bridge.errors import HostIdConflict
from shmchannels.bridge.inbox import Inbox
from shmchannels.bus.codec import decode, encode
from shmchannels.engine.large import check_size
from shmchannels.exceptions import ChannelFull
from shmchannels.names import ring_key

logger = logging.getLogger("shmchannels.bridge")

LOCAL = None
SHARED = "*shared*"  # not a host id (ids have no '*')
#: messages a host's inbox holds before sends to it raise ChannelFull (group sends: dropped for that host)
INBOX_CAPACITY = 10_000
_HOST_TAG = re.compile(r"(?:^|\.)at-([A-Za-z0-9_-]{1,32})\.shm[0-9a-f]{20}!")
_ROUTE_CACHE = 8192
_stations = {}
_stations_lock = threading.Lock()


class Station:
    """What one process keeps per bridged bus: the link, its election, the inbox if elected."""

    def __init__(self, options, layer_options):
        self.options = options
        self.link = link_mod.link_for(options.redis)
        self.generation = link_mod.fork_generation()
        self.token = host_token(layer_options.prefix)
        self.inbox = None
        self._layer_options = layer_options
        self.check_claim()
        self.election = Election(layer_options.prefix, self._elected)  # may call _elected at once

    def _elected(self):
        self.inbox = Inbox.start(self.link, self.options, self._layer_options, self.token)
        # The process is leaving: stop injecting before the bus goes, then hand the role on.
        self.inbox.bus.on_detach(self.leave)

    def leave(self):
        if self.inbox is not None:
            self.inbox.stop()
            self.inbox.farewell_if_last()
        self.election.resign()

    def check_claim(self):
        """Claim the host in Redis now; HostIdConflict if another live host holds it.
        Redis unreachable: nothing to check yet (the bridge claims when it is back)."""
        if not self.link.up:
            return
        keys = scripts.Keys(self.options.namespace)
        lease_ms = int(self.options.host_lease * 1000)

        async def claim():
            return await self.link.reader.evalsha(scripts.SHA["CLAIM"], 1, keys.hosts, self.options.host,
                                                  self.token, lease_ms)
        try:
            reply = self.link.run(claim()).result(link_mod.CONNECT_TIMEOUT + link_mod.WRITE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - an unreachable Redis is checked later
            logger.warning("bridge: could not check the host claim on %s: %s", self.link.where, exc)
            return
        if not reply[0]:
            raise HostIdConflict(
                f"host identity {self.options.host!r} is already claimed on Redis {self.link.where} "
                f"({self.options.namespace!r}) by another live host, whose lease ends in {reply[2] / 1000:.1f} s: "
                "give each host its own 'host' in the layer's CONFIG (default: its hostname)")


def station_for(options, layer_options):
    key = (layer_options.prefix, options)
    with _stations_lock:
        station = _stations.get(key)
        if station is None or station.generation != link_mod.fork_generation():
            station = _stations[key] = Station(options, layer_options)
    return station


class Bridge:
    def __init__(self, options, layer_options, capacity_of):
        self.options = options
        self.host = options.host
        self.tag = f"at-{options.host}"
        self.keys = scripts.Keys(options.namespace)
        self.sealer = wire.Sealer(options.symmetric_encryption_keys)
        self.capacity_of = capacity_of
        self.expiry = layer_options.expiry
        self.expiry_ms = int(layer_options.expiry * 1000)
        self.capacity = layer_options.capacity
        self.group_expiry_ms = int(layer_options.group_expiry * 1000)
        self.lease_ms = int(options.host_lease * 1000)
        self.max_message_size = layer_options.max_message_size
        self._layer_options = layer_options
        self._shared = [re.compile(fnmatch.translate(p)) for p in options.cross_host_channels]
        self.routes = {}  # channel -> where(channel), read directly by the layer's send
        self._advertised = {}  # group -> monotonic time of this process's last advertisement
        self._warned_down = 0.0
        self._station = station_for(options, layer_options)

    @property
    def link(self):
        station = self._station
        if station.generation != link_mod.fork_generation():  # forked: this process's own
            station = self._station = station_for(self.options, self._layer_options)
            self._advertised.clear()
        return station.link

    # ------------------------------------------------------------- routing

    def where(self, channel):
        hit = self.routes.get(channel, 0)
        if hit != 0:
            return hit
        if "!" in channel:
            m = _HOST_TAG.search(channel, 0, channel.index("!") + 1)
            hit = m.group(1) if m and m.group(1) != self.host else LOCAL
        else:
            hit = SHARED if any(p.match(channel) for p in self._shared) else LOCAL
        if len(self.routes) >= _ROUTE_CACHE:
            self.routes.clear()
        self.routes[channel] = hit
        return hit

    def is_shared(self, channel):
        return "!" not in channel and self.where(channel) is SHARED

    # ------------------------------------------------------------- sending

    def _element(self, kind, target, body):
        return wire.pack(self.sealer, kind, target, body, wire.deadline_ms(self.expiry))

    async def _call(self, command):
        return await asyncio.wrap_future(self.link.submit(command))

    async def send(self, where, channel, message):
        """A send to another host's channel or a shared one.  True if stored,
        False if the channel's host is gone (dropped quietly, as for a dead
        owner); ChannelFull (the shared list, the host's inbox, or the
        owner's ring on its host: see ``inbox``), MessageTooLarge,
        BridgeUnavailable."""
        command = self._send_command(where, channel, message)
        return self._sent(await self._call(command), where, channel)

    def send_sync(self, where, channel, message):
        """``send`` for a synchronous caller (the ASGI 1 layer)."""
        command = self._send_command(where, channel, message)
        return self._sent(self._wait(self.link.submit(command)), where, channel)

    def _send_command(self, where, channel, message):
        body = encode(message)
        check_size(body, self.max_message_size, "message for", channel)
        element = self._element(wire.CHANNEL, channel, body)
        keys = self.keys
        if where is SHARED:
            return scripts.evalsha("SEND_SHARED", [keys.channel(channel)],
                                   [element, self.capacity_of(channel), self.expiry_ms])
        return scripts.evalsha("SEND_TO_HOST", [keys.hosts, keys.inbox(where), keys.full(where, ring_key(channel))],
                               [where, element, INBOX_CAPACITY, self.expiry_ms])

    def _sent(self, reply, where, channel):
        if reply == 1:
            return True
        if reply == -1:
            return False
        if isinstance(reply, list):  # the owner's ring, marked full by its host's bridge
            raise ChannelFull(f"channel {channel!r} on host {where!r} is full (capacity {int(reply[1])})")
        if where is SHARED:
            raise ChannelFull(f"channel {channel!r} holds {self.capacity_of(channel)} messages")
        raise ChannelFull(f"the inbox of host {where!r} (for {channel!r}) holds {INBOX_CAPACITY} messages")

    def _wait(self, future):
        try:
            return future.result(link_mod.WRITE_TIMEOUT + 1)
        except concurrent.futures.TimeoutError:
            raise self.link.unavailable() from None

    def group_send(self, group, message):
        """Queue one operation that reaches every other host with members of
        ``group`` (never raises: while Redis is unavailable the cross-host
        part is dropped, with a warning at most every 10 s)."""
        body = encode(message)
        check_size(body, self.max_message_size, "group message for", group)
        command = scripts.evalsha("GROUP_SEND", [self.keys.group(group), self.keys.group_channels(group),
                                                 self.keys.hosts], [
            self.host, self._element(wire.GROUP, group, body), self.lease_ms, self.keys.inbox_prefix,
            INBOX_CAPACITY, self.expiry_ms, self.keys.channel_prefix, self.capacity, self.group_expiry_ms])
        if not self.link.post(command):
            now = time.monotonic()
            if now - self._warned_down > 10:
                self._warned_down = now
                logger.warning("bridge: group_send to %r reached this host only: %s", group,
                               self.link.unavailable("its cross-host part"))

    async def group_add(self, group, channel, where):
        """After the layer's local group_add (``where`` LOCAL): advertise this
        host for ``group``.  For another host's channel: the membership is
        made there, and that host advertised now, so a group_send right after
        this returns reaches it (both go through the same ordered outbox)."""
        for future in self._membership(group, channel, where, add=True):
            await self._settle_membership(asyncio.wrap_future(future), group, where)

    def group_add_sync(self, group, channel, where):
        for future in self._membership(group, channel, where, add=True):
            self._settle_membership_sync(future, group, where)

    async def group_discard(self, group, channel, where):
        for future in self._membership(group, channel, where, add=False):
            await asyncio.wrap_future(future)

    def group_discard_sync(self, group, channel, where):
        for future in self._membership(group, channel, where, add=False):
            self._wait(future)

    def _membership(self, group, channel, where, add):
        """The queued writes of a group_add/discard (futures, in order)."""
        link, keys = self.link, self.keys
        if where is SHARED:  # its membership lives in Redis, next to its list
            return [link.submit(scripts.evalsha("SHARED_MEMBER", [keys.group_channels(group)],
                                                [channel, self.group_expiry_ms if add else 0]))]
        if where is LOCAL:
            if not add or time.monotonic() - self._advertised.get(group, -1e9) < self.options.host_lease / 3:
                return []
            try:
                return [link.submit(scripts.evalsha("ADVERTISE", [keys.group(group)], [self.host, 3 * self.lease_ms]))]
            except ConnectionError:
                return []  # the bridge advertises every local group when Redis is back
        futures = [link.submit(scripts.evalsha("ADVERTISE", [keys.group(group)], [where, 3 * self.lease_ms]))] \
            if add else []
        element = self._element(wire.GROUP_ADD if add else wire.GROUP_DISCARD, group, channel.encode("utf-8"))
        futures.append(link.submit(scripts.evalsha("SEND_TO_HOST", [keys.hosts, keys.inbox(where)],
                                                   [where, element, INBOX_CAPACITY, self.expiry_ms])))
        return futures

    async def _settle_membership(self, waiting, group, where):
        try:
            reply = await waiting
        except ConnectionError:
            if where is LOCAL:
                return
            raise
        self._membership_done(reply, group, where)

    def _settle_membership_sync(self, future, group, where):
        try:
            reply = self._wait(future)
        except ConnectionError:
            if where is LOCAL:
                return
            raise
        self._membership_done(reply, group, where)

    def _membership_done(self, reply, group, where):
        if where is LOCAL:
            self._advertised[group] = time.monotonic()
        elif reply == 0:
            raise ChannelFull(f"the inbox of host {where!r} holds {INBOX_CAPACITY} messages")

    # ----------------------------------------------------------- receiving

    async def receive_shared(self, channel):
        """The next message of a cross-host named channel, from any host.
        Waits through a Redis outage.  Cancelled while its BLPOP is in
        flight, it may lose that one message (at-most-once)."""
        return await asyncio.wrap_future(self.link.run(self._pop(channel)))

    async def _pop(self, channel):
        link, key = self.link, self.keys.channel(channel)
        while True:
            if not link.up:
                await link.until_up()
            try:
                got = await link.reader.blpop([key], timeout=1)
            except link.errors as exc:
                link.went_down(exc)
                continue
            if got is None:
                continue
            try:
                unpacked = wire.unpack(self.sealer, got[1])
            except ValueError as exc:
                logger.warning("bridge: dropped an element of %r: %s", channel, exc)
                continue
            if unpacked is not None:
                return decode(unpacked[2])

    async def flush(self):
        """Delete the layer's keys in Redis (but the hosts' claims)."""
        self._advertised.clear()
        await self._call(scripts.evalsha("FLUSH", [], [self.options.namespace]))

    def flush_sync(self):
        self._advertised.clear()
        self._wait(self.link.submit(scripts.evalsha("FLUSH", [], [self.options.namespace])))
