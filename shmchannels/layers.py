"""Channels 4 backend::

    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "shmchannels.layers.SharedMemoryChannelLayer",
            "CONFIG": {"prefix": "mysite", "capacity": 100},
        }
    }

Every process on the host that builds a layer with the same ``prefix`` sees
the same channels and groups.  With ``hosts`` (channels_redis's key: one
Redis server), every host with the same ``prefix`` and Redis forms one
layer: shared memory inside each host, Redis between them
(``shmchannels.bridge``; docs/architecture.md, "Between hosts").  Without
it no Redis client is imported.  The methods are coroutines that never bind
anything to an event loop, so ``async_to_sync`` from views, Celery tasks or
management commands works from any thread and any loop.
"""

import asyncio
import inspect

from channels.layers import BaseChannelLayer

from . import bus as bus_mod, checks, hosted, names
from shmchannels.engine import groups
from shmchannels.engine.core import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PARK_TIMEOUT, DEFAULT_SPIN_US, STUCK_RECHECK, Core
from shmchannels.engine.wakeup import resolve
from .exceptions import ChannelFull, MessageTooLarge
from .options import LayerOptions

__all__ = ["SharedMemoryChannelLayer", "ChannelFull", "MessageTooLarge"]


class SharedMemoryChannelLayer(BaseChannelLayer):
    """A channels_redis-compatible layer over the shared-memory bus."""

    extensions = ["groups", "flush"]
    ChannelFull = ChannelFull
    MessageTooLarge = MessageTooLarge

    def __init__(
        self,
        prefix="asgi",
        expiry=60,
        group_expiry=86400,
        capacity=100,
        channel_capacity=None,
        *,
        ring_size=bus_mod.DEFAULT_RING_SIZE,
        max_message_size=DEFAULT_MAX_MESSAGE_SIZE,
        slots=bus_mod.DEFAULT_SLOTS,
        spin_us=DEFAULT_SPIN_US,
        park_timeout=DEFAULT_PARK_TIMEOUT,
        hosts=None,
        host=None,
        cross_host_channels=None,
        redis_prefix=None,
        host_lease=30.0,
        symmetric_encryption_keys=None,
        **channels_redis,
    ):
        # channels_redis's other keys: accepted where they change nothing, else
        # refused with the rule (shmchannels.checks, also a Django system check)
        extras = dict(channels_redis, **({} if hosts is None else {"hosts": hosts}))
        for problem in checks.config_problems(extras, self.config_keys(), check_values=False):
            if problem.level == "error":
                raise TypeError(f"SharedMemoryChannelLayer: {problem.msg}" + (f". {problem.hint}" if problem.hint else ""))
        options = LayerOptions(
            prefix=prefix,
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
            ring_size=ring_size,
            max_message_size=max_message_size,
            slots=slots,
            spin_us=spin_us,
            park_timeout=park_timeout,
        )
        bridge = None
        if hosts is not None:
            from shmchannels.bridge.options import BridgeOptions  # only now: Redis is needed

            bridge = BridgeOptions.build(prefix, hosts, host=host, cross_host_channels=cross_host_channels,
                                         redis_prefix=redis_prefix, host_lease=host_lease,
                                         symmetric_encryption_keys=symmetric_encryption_keys)
        self._configure(options, bridge)

    @classmethod
    def config_keys(cls):
        """The keys of a ``CONFIG`` that this layer or a subclass takes: the
        named parameters of every ``__init__`` from ``cls`` up to this class."""
        keys = []
        for klass in cls.__mro__:
            if not issubclass(klass, SharedMemoryChannelLayer) or "__init__" not in vars(klass):
                continue
            for name, p in inspect.signature(vars(klass)["__init__"]).parameters.items():
                if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name not in keys:
                    keys.append(name)
        return keys

    @classmethod
    def from_options(cls, options):
        """A layer with the given ``shmchannels.options.LayerOptions``."""
        layer = cls.__new__(cls)
        layer._configure(options)
        return layer

    def _configure(self, options, bridge_options=None):
        super().__init__(expiry=options.expiry, capacity=options.capacity)
        self.options = options
        self.prefix = options.prefix
        self.group_expiry = options.group_expiry
        self.core = Core(options, validate=self.require_valid_channel_name)
        # Channels 4 keeps channel_capacity raw; get_capacity needs it compiled.
        self.channel_capacity = self.core.channel_capacity
        self._client_prefix = None
        self._prefix_bus = None
        self._bridge = None
        if bridge_options is not None:
            from shmchannels.bridge.bridge import Bridge

            self._bridge = Bridge(bridge_options, options, self.core.get_capacity)

    def __repr__(self):
        return f"<SharedMemoryChannelLayer prefix={self.prefix!r}>"

    @property
    def client_prefix(self):
        """This instance's prefix for process-specific names (re-minted after fork)."""
        bus = self.core.bus
        if self._prefix_bus is not bus:
            self._client_prefix = names.new_client_prefix(bus.slot, bus.gen)
            self._prefix_bus = bus
        return self._client_prefix

    async def send(self, channel, message):
        assert isinstance(message, dict), "message is not a dict"
        assert "__asgi_channel__" not in message
        bridge = self._bridge
        if bridge is not None:
            where = bridge.routes.get(channel, 0)  # the cached answer of bridge.where(): no call on the hot path
            if where == 0:
                where = bridge.where(channel) if isinstance(channel, str) else None
            if where is not None:  # another host's channel, or a cross-host named one
                self.require_valid_channel_name(channel)
                await bridge.send(where, channel, message)
                return
        self.core.send(channel, message)

    async def receive(self, channel):
        core = self.core
        route = core.receive_routes.get(channel)  # routes of a usable bus only
        if route is None:
            held = hosted.current()
            if held is not None and channel == held.name:  # relayed by the protocol server (hosted.py)
                return await held.receive()
            self.require_valid_channel_name(channel)
            if self._bridge is not None and self._bridge.is_shared(channel):
                return await self._bridge.receive_shared(channel)
            if "!" in channel:
                assert self.non_local_name(channel).endswith(self.client_prefix + "!"), (
                    f"{channel!r} was not made by this layer's new_channel(); only its owner may receive on it"
                )
            route = core.ring_for_receive(channel)
        ring, key, specific, _own_meta, ready = route  # a receive route: see engine/core.py
        if ready():  # something buffered or in the ring: try without parking
            msg = core.take(channel, route)
            if msg is not None:
                return msg
        # Parked in this frame, not in a coroutine of the engine's: a group
        # message to 500 parked consumers resumes 500 receives, and a second
        # frame cost each 4% more instructions (docs/decisions.md, "Group
        # fan-out per member").  Core does the taking, the hub the parking.
        loop = asyncio.get_running_loop()
        target = channel if specific else None  # hub waiters of a plain channel wait for its ring
        while True:
            hub = core.local.hub
            # spin() declines when another task of the process is parked: checked first
            if hub.waiters or not core.spin_ns or not core.spin(ready, loop):
                fut, token = hub.park(ring, key, target, core.park_timeout, loop)
                # Parked behind an unready head (a writer mid-copy, or dead):
                # look again soon, so a dead writer's claim is recovered
                # within STUCK_RECHECK rather than at the next watchdog.
                recheck = loop.call_later(STUCK_RECHECK, resolve, fut) if ring.pending and not ring.has_data() else None
                try:
                    # A record committed before our bit was visible woke
                    # nobody: look again now that it is.
                    handed = None if ready() else await fut
                except BaseException as exc:
                    if isinstance(exc, asyncio.CancelledError):
                        hub.cancelled(fut, target)
                    hub.unpark(token)
                    raise
                finally:
                    if recheck is not None:
                        recheck.cancel()
                if handed is not None:  # (deadline, flags, body) delivered on wake-up; the hub let go of us already
                    return core.handed_over(handed)
                hub.unpark(token)
            msg = core.take(channel, route)
            if msg is not None:
                return msg
            route = core.ring_for_receive(channel)  # the bus may have been re-attached
            ring, key, specific, _own_meta, ready = route

    async def new_channel(self, prefix="specific"):
        held = hosted.current()
        if held is not None:  # an ASGI 3 consumer hosted by `shmchannels serve`: its connection's channel
            name = held.adopt(self.prefix)
            if name is not None:
                return name
        if self._bridge is not None:  # the host rides in the name: other hosts send to it through Redis
            key = f"{prefix}.{self._bridge.tag}.{self.client_prefix}!"
        else:
            key = f"{prefix}.{self.client_prefix}!"
        name = key + names.new_local_part()
        self.require_valid_channel_name(name)
        self.core.claim_prefix(key, self.get_capacity)
        return name

    async def group_add(self, group, channel):
        self.require_valid_group_name(group)
        self.require_valid_channel_name(channel)
        bridge = self._bridge
        where = None if bridge is None else bridge.where(channel)
        if where is None:  # never waits on the loop for a lock another process holds
            await groups.registry_write(self.core.group_add, group, channel)
        if bridge is not None:
            await bridge.group_add(group, channel, where)

    async def group_discard(self, group, channel):
        self.require_valid_channel_name(channel)
        self.require_valid_group_name(group)
        bridge = self._bridge
        where = None if bridge is None else bridge.where(channel)
        if where is None:
            await groups.registry_write(self.core.group_discard, group, channel)
        else:
            await bridge.group_discard(group, channel, where)

    async def group_send(self, group, message):
        assert isinstance(message, dict), "message is not a dict"
        self.require_valid_group_name(group)
        self.core.group_send(group, message)
        if self._bridge is not None:  # one queued Redis operation reaches every other host with members
            self._bridge.group_send(group, message)

    async def flush(self):
        self.core.flush()
        if self._bridge is not None:
            await self._bridge.flush()

    async def close(self):
        """Nothing to release per instance: the process's bus detaches at exit."""

    close_pools = close  # channels_redis spelling

    def discard_channel(self, channel):
        """Drop buffered messages of a channel this process will not read again."""
        self.core.discard_channel(channel)
