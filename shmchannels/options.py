"""``LayerOptions``: every option of a channel layer, validated once.

Both front ends (``shmchannels.layers.SharedMemoryChannelLayer`` and
``shmchannels.ChannelLayer``) build one from their keyword arguments and
hand it to the engine; the command-line entry points build one from their
settings (``shmchannels.server.config.layer_options``)::

    from shmchannels.options import LayerOptions

    options = LayerOptions(prefix="mysite", capacity=200)
    layer = shmchannels.ChannelLayer.from_options(options)

An invalid value raises ValueError or TypeError stating the rule it breaks,
when the options are built, not when the layer is first used.
"""

import dataclasses
import numbers

from shmchannels import names
from shmchannels.bus import DEFAULT_RING_SIZE, DEFAULT_SLOTS, _shm
from shmchannels.engine.core import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_PARK_TIMEOUT, DEFAULT_SPIN_US

__all__ = ["DEFAULT_PREFIX", "LayerOptions"]

DEFAULT_PREFIX = "asgi"

MIN_RING_SIZE = 64 << 10
MAX_RING_SIZE = 1 << 30


def _number(name, value, unit):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of {unit}, not {value!r}")


def _integer(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, not {value!r}")


def _capacity_pairs(channel_capacity):
    """``channel_capacity`` as a tuple of (glob or compiled regex, capacity)
    pairs, in matching order (the first match wins).  Accepts a mapping, the
    list of pairs Channels' ``compile_capacities`` returns, or None."""
    if channel_capacity is None:
        return ()
    if hasattr(channel_capacity, "items"):
        pairs = tuple(channel_capacity.items())
    elif isinstance(channel_capacity, (list, tuple)):
        pairs = tuple(channel_capacity)
        if not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
            raise TypeError(f"channel_capacity must map channel name globs to capacities, not {channel_capacity!r}")
    else:
        raise TypeError(f"channel_capacity must map channel name globs to capacities, not {channel_capacity!r}")
    for pattern, capacity in pairs:
        if not (isinstance(pattern, str) or hasattr(pattern, "match")):
            raise TypeError(f"channel_capacity keys must be globs or compiled regexes, not {pattern!r}")
        _integer(f"channel_capacity[{pattern!r}]", capacity)
        if capacity < 1:
            raise ValueError(f"channel_capacity[{pattern!r}] must be at least 1 (got {capacity})")
    return pairs


@dataclasses.dataclass(frozen=True, slots=True)
class LayerOptions:
    """The options of a channel layer (and of the engine under it).

    ``channel_capacity`` is kept as a tuple of (glob or compiled regex,
    capacity) pairs whatever form it was given in (a dict, as in Django's
    ``CONFIG``; Channels' compiled list), so equal options compare equal and
    hash alike.
    """

    prefix: str = DEFAULT_PREFIX  #: processes with the same prefix share channels and groups
    expiry: float = 60  #: seconds after which an unread message is dropped
    group_expiry: float = 86400  #: seconds after which a group membership ends
    capacity: int = 100  #: messages a channel holds before ChannelFull
    channel_capacity: tuple = ()  #: per-channel capacities: ((glob or regex, capacity), ...)
    ring_size: int = DEFAULT_RING_SIZE  #: bytes of message space per ring (a power of two)
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE  #: largest encoded message, bytes (the user's limit, any ring_size)
    slots: int = DEFAULT_SLOTS  #: processes a bus can hold at once
    spin_us: float = DEFAULT_SPIN_US  #: microseconds a receiver busy-waits before parking (0: never)
    park_timeout: float = DEFAULT_PARK_TIMEOUT  #: seconds a parked receiver sleeps before looking again

    def __post_init__(self):
        names.require_prefix(self.prefix)
        _number("expiry", self.expiry, "seconds")
        if self.expiry <= 0:
            raise ValueError("expiry must be positive (seconds)")
        _integer("capacity", self.capacity)
        if self.capacity < 1:
            raise ValueError("capacity must be at least 1")
        _integer("ring_size", self.ring_size)
        _integer("max_message_size", self.max_message_size)
        # No tie to ring_size: records over blobs.inline_max(ring_size) travel in blobs.
        if self.ring_size < MIN_RING_SIZE or self.ring_size > MAX_RING_SIZE or self.ring_size & (self.ring_size - 1):
            raise ValueError("ring_size must be a power of two between 64 KiB and 1 GiB")
        if self.max_message_size < 1:
            raise ValueError("max_message_size must be at least 1")
        _number("group_expiry", self.group_expiry, "seconds")
        if self.group_expiry <= 0:
            raise ValueError("group_expiry must be positive (seconds)")
        _integer("slots", self.slots)
        if not 1 <= self.slots <= _shm.MAX_SLOTS:
            raise ValueError(f"slots must be between 1 and {_shm.MAX_SLOTS}")
        _number("spin_us", self.spin_us, "microseconds")
        if self.spin_us < 0:
            raise ValueError("spin_us must be >= 0 (microseconds; 0: never spin)")
        _number("park_timeout", self.park_timeout, "seconds")
        if self.park_timeout <= 0:
            raise ValueError("park_timeout must be positive (seconds)")
        object.__setattr__(self, "channel_capacity", _capacity_pairs(self.channel_capacity))

    def replace(self, **changes):
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def as_kwargs(self):
        """The options as keyword arguments of either layer's constructor."""
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        kwargs["channel_capacity"] = dict(self.channel_capacity)
        return kwargs
