"""LayerOptions: one options object for both layer front ends and the engine."""

import dataclasses
import inspect
import re

import pytest

import shmchannels
from shmchannels.layers import SharedMemoryChannelLayer
from shmchannels.options import LayerOptions

FRONT_ENDS = [SharedMemoryChannelLayer, shmchannels.ChannelLayer]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"prefix": "bad prefix!"}, TypeError, "Invalid layer prefix 'bad prefix!': a prefix must be 1-64 ASCII letters"),
    ({"prefix": None}, TypeError, "Invalid layer prefix None"),
    ({"expiry": 0}, ValueError, "expiry must be positive (seconds)"),
    ({"expiry": "60"}, TypeError, "expiry must be a number of seconds, not '60'"),
    ({"capacity": 0}, ValueError, "capacity must be at least 1"),
    ({"capacity": 1.5}, TypeError, "capacity must be an integer, not 1.5"),
    ({"ring_size": 3 << 20}, ValueError, "ring_size must be a power of two between 64 KiB and 1 GiB"),
    ({"max_message_size": 0}, ValueError, "max_message_size must be at least 1"),
    ({"group_expiry": 0}, ValueError, "group_expiry must be positive (seconds)"),
    ({"slots": 0}, ValueError, "slots must be between 1 and"),
    ({"spin_us": -1}, ValueError, "spin_us must be >= 0"),
    ({"park_timeout": 0}, ValueError, "park_timeout must be positive (seconds)"),
    ({"channel_capacity": {"x.*": 0}}, ValueError, "channel_capacity['x.*'] must be at least 1 (got 0)"),
    ({"channel_capacity": {3: 1}}, TypeError, "channel_capacity keys must be globs or compiled regexes, not 3"),
    ({"channel_capacity": ["x"]}, TypeError, "channel_capacity must map channel name globs to capacities"),
])
def test_invalid_options_raise_the_rule_from_every_constructor(kwargs, error, message):
    for build in (LayerOptions, *FRONT_ENDS):
        with pytest.raises(error) as exc:
            build(**kwargs)
        assert message in str(exc.value), (build, str(exc.value))


def test_both_front_ends_build_equal_options_from_the_same_kwargs():
    kwargs = dict(prefix="opts", expiry=5, group_expiry=50, capacity=7, channel_capacity={"a.*": 3, re.compile("^b$"): 4},
                  ring_size=1 << 20, max_message_size=1000, slots=8, spin_us=0, park_timeout=0.5)
    expected = LayerOptions(**kwargs)
    for cls in FRONT_ENDS:
        layer = cls(**kwargs)
        assert layer.options == expected
        assert (layer.prefix, layer.expiry, layer.group_expiry, layer.capacity) == ("opts", 5, 50, 7)
        assert layer.get_capacity("a.x") == 3 and layer.get_capacity("b") == 4 and layer.get_capacity("c") == 7
        assert layer.core.options is layer.options
        assert (layer.core.spin_ns, layer.core.park_timeout, layer.core.expiry_ns) == (0, 0.5, 5_000_000_000)
        again = cls.from_options(expected)
        assert again.options is expected and again.get_capacity("a.x") == 3


def test_the_front_ends_signatures_default_to_the_options_defaults():
    defaults = {f.name: f.default for f in dataclasses.fields(LayerOptions)}
    defaults["channel_capacity"] = None  # given as a dict or None; kept as pairs
    for cls in FRONT_ENDS:
        params = inspect.signature(cls.__init__).parameters
        ours = {name: p.default for name, p in params.items() if name in defaults}
        assert ours == defaults, cls
    assert inspect.signature(shmchannels.ChannelLayer.__init__).parameters["block_timeout"].default == 5.0


def test_options_are_frozen_slotted_hashable_and_normalised():
    options = LayerOptions(channel_capacity={"x.*": 2})
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.capacity = 5
    assert not hasattr(options, "__dict__")
    assert options.channel_capacity == (("x.*", 2),)
    # Channels' compiled list, a dict and pairs are one and the same
    compiled = SharedMemoryChannelLayer().compile_capacities({"x.*": 2})
    assert LayerOptions(channel_capacity=compiled) == LayerOptions(channel_capacity=compiled[:])
    assert hash(options) == hash(LayerOptions(channel_capacity=[("x.*", 2)]))
    assert options.replace(capacity=5).capacity == 5
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        options.replace(capacity=0)
    assert LayerOptions(**options.as_kwargs()) == options
    for cls in FRONT_ENDS:
        assert cls(**options.as_kwargs()).options == options


def test_django_config_kwargs_build_the_options(django_settings):
    from channels.layers import ChannelLayerManager
    from django.test import override_settings

    config = {"prefix": "djopts", "expiry": 30, "group_expiry": 600, "capacity": 9, "channel_capacity": {"big.*": 90},
              "ring_size": 1 << 21, "max_message_size": 100_000, "spin_us": 10, "park_timeout": 1.0}
    with override_settings(CHANNEL_LAYERS={"default": {"BACKEND": "shmchannels.layers.SharedMemoryChannelLayer",
                                                       "CONFIG": config}}):
        layer = ChannelLayerManager()["default"]
    assert layer.options == LayerOptions(**config)
