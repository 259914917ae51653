"""The synchronous ASGI 1 channel layer of the 2016 design.

Works without Django Channels installed (Channels 4 needs asgiref 3, the
ASGI 1 conformance suite needs asgiref 1.1.2; they cannot share an
environment).  With ``hosts`` it joins the bridge between hosts like the
Channels 4 layer (``shmchannels.bridge``): ``process_prefix()`` names its
host, sends to another host's ``prefix!`` and groups cross through Redis;
single-reader (``?``) and named channels stay on their host
(``cross_host_channels`` is the Channels 4 layer's alone for now).  Shares the bus, and so every channel and group, with
``shmchannels.layers.SharedMemoryChannelLayer`` instances of the same prefix.
"""

import asyncio
import time
import warnings

from . import bus as bus_mod, names
from shmchannels.engine.core import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PARK_TIMEOUT, DEFAULT_SPIN_US, Core
from .exceptions import ChannelFull, MessageTooLarge
from .options import LayerOptions

DEFAULT_BLOCK_TIMEOUT = 5.0


def _refuse_cross_host_channels(globs):
    if globs:
        raise ValueError(
            f"cross_host_channels={globs!r} is for the Channels 4 layer (shmchannels.layers.SharedMemoryChannelLayer) "
            "only: the ASGI 1 ChannelLayer keeps named channels on their host (its multi-channel receive cannot wait "
            "on a ring and a Redis list at once); leave it out here")


class ChannelLayer:
    """ASGI 1 layer: ``send``, ``receive(channels, block)``, groups, flush, statistics."""

    extensions = ["groups", "flush", "statistics", "asyncio"]
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
        block_timeout=DEFAULT_BLOCK_TIMEOUT,
        hosts=None,
        host=None,
        redis_prefix=None,
        host_lease=30.0,
        symmetric_encryption_keys=None,
        cross_host_channels=None,
    ):
        _refuse_cross_host_channels(cross_host_channels)
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
        if hosts is not None:  # the bridge between hosts (shmchannels.bridge); Redis only now
            from shmchannels.bridge.options import BridgeOptions

            bridge = BridgeOptions.build(prefix, hosts, host=host, redis_prefix=redis_prefix, host_lease=host_lease,
                                         symmetric_encryption_keys=symmetric_encryption_keys)
        self._configure(options, block_timeout, bridge)

    @classmethod
    def from_options(cls, options, block_timeout=DEFAULT_BLOCK_TIMEOUT, bridge_options=None):
        """A layer with the given ``shmchannels.options.LayerOptions`` (and
        ``shmchannels.bridge.options.BridgeOptions``: `serve --bridge`)."""
        if bridge_options is not None:
            _refuse_cross_host_channels(bridge_options.cross_host_channels)
        layer = cls.__new__(cls)
        layer._configure(options, block_timeout, bridge_options)
        return layer

    def _configure(self, options, block_timeout, bridge_options=None):
        self.options = options
        self.prefix = options.prefix
        self.expiry = options.expiry
        self.group_expiry = options.group_expiry
        self.capacity = options.capacity
        self.block_timeout = block_timeout
        self.core = Core(options, validate=lambda name: names.require_channel(name, v1=True))
        self.channel_capacity = self.core.channel_capacity
        self._valid_receive = set()  # names already validated for receive()
        self._bridge = None
        if bridge_options is not None:
            from shmchannels.bridge.bridge import Bridge

            self._bridge = Bridge(bridge_options, options, self.core.get_capacity)

    def __repr__(self):
        return f"<shmchannels.ChannelLayer prefix={self.prefix!r}>"

    def get_capacity(self, channel):
        return self.core.get_capacity(channel)

    # core API
    def send(self, channel, message):
        if not isinstance(message, dict):
            raise TypeError(f"message must be a dict, not {type(message).__name__}")
        if "__asgi_channel__" in message:
            raise ValueError("'__asgi_channel__' is reserved for the layer")
        bridge = self._bridge
        if bridge is not None:
            where = bridge.routes.get(channel, 0)
            if where == 0:
                where = bridge.where(channel) if isinstance(channel, str) else None
            if where is not None:  # a process-specific channel of another host
                names.require_channel(channel, v1=True)
                bridge.send_sync(where, channel, message)
                return
        self.core.send(channel, message)

    def send_waiting(self, channel, message, timeout=60.0):
        """Send, waiting out a full channel for up to ``timeout`` seconds
        (backing off from 0.5 to 50 ms) instead of raising ChannelFull at
        once: how a worker sends replies, so that a protocol server that is
        behind slows its workers down rather than losing part of a response."""
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            try:
                return self.send(channel, message)
            except ChannelFull:
                if time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.05)

    def _check_receive(self, channels):
        if not isinstance(channels, list) or not channels:
            raise TypeError("channels must be a non-empty list of channel names")
        valid = self._valid_receive
        for ch in channels:
            if ch not in valid:
                names.require_channel(ch, receive=True, v1=True)
                if len(valid) >= 4096:
                    valid.clear()
                valid.add(ch)

    def receive(self, channels, block=False):
        """(channel, message) from one of ``channels``, or (None, None).

        With ``block=True`` waits up to ``block_timeout`` seconds, parked in
        the kernel rather than polling.
        """
        self._check_receive(channels)
        return self.core.receive_blocking(channels, self.block_timeout if block else 0.0)

    def receive_many(self, channels, block=False):
        warnings.warn("receive_many is deprecated; please use receive", DeprecationWarning, stacklevel=2)
        return self.receive(channels, block)

    async def receive_async(self, channels):
        """The ``asyncio`` extension: await the next message on any of ``channels``."""
        self._check_receive(channels)
        core = self.core
        while True:
            ch, msg = core.receive_blocking(channels, 0.0)
            if ch is not None:
                return ch, msg
            order = [(ch,) + core.ring_for_receive(ch)[:2] for ch in channels]
            waits = [
                asyncio.ensure_future(core.wait(ring, key, core.ready_check(ch), None if ch == key else ch))
                for ch, ring, key in order
            ]
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waits:
                    w.cancel()

    async def stream(self, prefix):
        """Yield (channel, message) from a ``prefix!`` of this process, forever.

        The reply reader of a protocol server: it takes without waiting while
        records are there (spinning briefly while traffic flows) and parks on
        the process's wake FIFO when there are none.
        """
        names.require_channel(prefix, receive=True, v1=True)
        if not prefix.endswith("!"):
            raise TypeError(f"stream() reads a process prefix ending in '!', not {prefix!r}")
        core = self.core
        while True:
            got = core.take_prefix(prefix)
            if got is not None:
                yield got
                continue
            ring, key = core.ring_for_receive(prefix)[:2]
            ready = core.ready_check(prefix)
            if not core.spin(ready, asyncio.get_running_loop()):
                await core.wait(ring, key, ready)

    def new_channel(self, pattern):
        """A new single-reader channel name: ``pattern`` must end in ``?``."""
        if not isinstance(pattern, str) or not pattern.endswith("?") or pattern.count("?") != 1 or "!" in pattern:
            raise TypeError(f"new_channel() pattern must end in a single '?', got {pattern!r}")
        bus = self.core.bus
        name = names.new_single_reader(pattern, bus.slot, bus.gen)
        names.require_channel(name, v1=True)
        return name

    def process_prefix(self, prefix="process"):
        """A ``prefix!`` owned by this process, for its reply channels.

        Senders may address ``<result>`` + any local part; ``receive([result])``
        returns them in order.  The ring dies with this process.
        """
        bus = self.core.bus
        tag = "" if self._bridge is None else f"{self._bridge.tag}."  # other hosts reply through Redis
        key = f"{prefix}.{tag}{names.new_client_prefix(bus.slot, bus.gen)}!"
        names.require_channel(key, receive=True, v1=True)
        self.core.claim_prefix(key, self.get_capacity, ordered=True)
        return key

    # For shmchannels' own protocol server and workers: non-blocking takes
    # without the per-call name checks of receive(), local buffers, and the
    # process identities that ``__taken__`` markers carry.
    def take(self, channel):
        """The next message of ``channel`` (a full name) without waiting, or None."""
        return self.core.take(channel)

    def take_prefix(self, prefix):
        """(channel, message) from any channel behind this process's ``prefix!``, or None."""
        return self.core.take_prefix(prefix)

    def discard_channel(self, channel):
        """Forget what this process buffered for a channel it will not read again."""
        self.core.discard_channel(channel)

    def process_id(self):
        """(slot, generation) of this process on the bus: who holds a message."""
        bus = self.core.bus
        return bus.slot, bus.gen

    def wake_receivers(self, channels):
        """Make this process's threads parked in ``receive(channels, block=True)``
        return (None, None) now (a worker stopping); attaches nothing if the
        bus is already gone."""
        self.core.wake_parked(channels)

    def process_alive(self, slot, gen):
        """Is the process (``slot``, ``gen``) of this bus still alive?"""
        return self.core.bus.is_alive(slot, gen)

    def any_alive(self, ignore_kinds=()):
        """Is a process alive on this bus, this one included, whose kind
        (``describe``) is not one of ``ignore_kinds``?  A process of another
        program counts (kind "process"): it may read any channel."""
        read = self.core.bus.control.read_slot
        return any(read(s).kind not in ignore_kinds for s in self.core.bus.live_slots())

    # groups extension
    def group_add(self, group, channel):
        names.require_group(group)
        names.require_channel(channel, v1=True)
        where = None if self._bridge is None else self._bridge.where(channel)
        if where is None:
            self.core.group_add(group, channel)
        if self._bridge is not None:
            self._bridge.group_add_sync(group, channel, where)

    def group_discard(self, group, channel):
        names.require_group(group)
        names.require_channel(channel, v1=True)
        where = None if self._bridge is None else self._bridge.where(channel)
        if where is None:
            self.core.group_discard(group, channel)
        else:
            self._bridge.group_discard_sync(group, channel, where)

    def group_channels(self, group):
        names.require_group(group)
        return self.core.group_channels(group)

    def send_group(self, group, message):
        names.require_group(group)
        if not isinstance(message, dict):
            raise TypeError(f"message must be a dict, not {type(message).__name__}")
        self.core.group_send(group, message)
        if self._bridge is not None:  # one queued Redis operation reaches every other host with members
            self._bridge.group_send(group, message)

    # flush extension
    def flush(self):
        self.core.flush()
        if self._bridge is not None:
            self._bridge.flush_sync()

    # statistics extension
    def global_statistics(self):
        return self.core.global_statistics()

    def channel_statistics(self, channel):
        names.require_channel(channel, v1=True)
        return self.core.channel_statistics(channel)
