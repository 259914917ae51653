"""BridgeOptions and what crosses Redis, without Redis: channels_redis's
``hosts`` forms, the host identity, and the wire format."""

import pytest

from shmchannels.bridge import wire
from shmchannels.bridge.options import BridgeOptions, RedisSpec, default_host_id, parse_hosts


@pytest.mark.parametrize("hosts, spec", [
    (["redis://10.0.0.5:6379/0"], RedisSpec("redis://10.0.0.5:6379/0")),
    ([("10.0.0.5", 6379)], RedisSpec("redis://10.0.0.5:6379")),
    ([["10.0.0.5", 6379]], RedisSpec("redis://10.0.0.5:6379")),
    ([{"address": "rediss://h:6380", "password": "pw"}], RedisSpec("rediss://h:6380", (("password", "pw"),))),
    ([{"address": ("h", 1)}], RedisSpec("redis://h:1")),
    ([{"host": "h", "port": 2, "db": 3}], RedisSpec(None, (("db", 3), ("host", "h"), ("port", 2)))),
])
def test_channels_redis_hosts_forms(hosts, spec):
    assert parse_hosts(hosts) == spec


@pytest.mark.parametrize("hosts, error, says", [
    ("redis://h:1", TypeError, "must be a list"),
    ([], ValueError, "exactly one Redis server (got 0)"),
    (["redis://a:1", "redis://b:1"], ValueError, "sharding"),
    (["http://h"], ValueError, "not a Redis URL"),
    ([("h", "6379")], TypeError, "(host, port)"),
    ([{"sentinels": [("s", 26379)]}], ValueError, "Sentinel"),
    ([42], TypeError, "must be a Redis URL"),
])
def test_bad_hosts_say_what_is_wrong(hosts, error, says):
    with pytest.raises(error, match=None) as info:
        parse_hosts(hosts)
    assert says in str(info.value)


def test_credentials_never_show_in_descriptions():
    assert parse_hosts(["redis://user:secret@h:1/0"]).describe() == "redis://***@h:1/0"
    options = BridgeOptions.build("p", [{"address": "redis://u:pw@h:1", "password": "pw"}], host="x")
    assert "pw" not in repr(options)


def test_host_identity_defaults_to_the_hostname():
    assert default_host_id("web1.example.com") == "web1_example_com"
    with pytest.raises(ValueError, match="set 'host'"):
        default_host_id("x" * 40)
    options = BridgeOptions.build("site", ["redis://h:1"], host="web-2")
    assert (options.host, options.namespace, options.host_lease) == ("web-2", "shmch:site", 30.0)
    with pytest.raises(TypeError, match="host must be"):
        BridgeOptions.build("site", ["redis://h:1"], host="a.b")
    with pytest.raises(ValueError, match="no '!'"):
        BridgeOptions.build("site", ["redis://h:1"], host="a", cross_host_channels=["x!"])
    with pytest.raises(ValueError, match="host_lease must be at least"):
        BridgeOptions.build("site", ["redis://h:1"], host="a", host_lease=0.5)
    assert "secret" not in repr(BridgeOptions.build("site", ["redis://h:1"], host="a",
                                                    symmetric_encryption_keys=["secret"]))


def test_the_wire_format_round_trips_expires_and_refuses_strangers():
    plain, sealed = wire.Sealer(()), wire.Sealer(["new", "old"])
    for sealer in (plain, sealed):
        element = wire.pack(sealer, wire.CHANNEL, "specific.at-b.shm000000000100000000aa!x", b"\x81\xa1a\x01",
                            wire.deadline_ms(60))
        assert wire.unpack(sealer, element) == (wire.CHANNEL, "specific.at-b.shm000000000100000000aa!x",
                                                b"\x81\xa1a\x01")
        assert wire.unpack(sealer, element, now_ms=int(element[:13]) + 1) is None  # expired
    element = wire.pack(sealed, wire.GROUP, "room", b"body", wire.deadline_ms(60))
    assert b"room" not in element and b"body" not in element
    # a key rotation: a sender still on the old key, a receiver with [new, old]
    from_old = wire.pack(wire.Sealer(["old"]), wire.GROUP, "room", b"body", wire.deadline_ms(60))
    assert wire.unpack(sealed, from_old)[1] == "room"
    with pytest.raises(ValueError, match="does not decrypt"):
        wire.unpack(wire.Sealer(["other"]), element)
    for junk in (b"", b"x" * 20, b"9" * 13 + b"\xff\xfe"):
        with pytest.raises(ValueError, match="not a bridge message"):
            wire.unpack(plain, junk, now_ms=0)
