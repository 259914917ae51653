"""The bridge between hosts, at the fast level: each "host" is a process
(or this test's own) with its own bus prefix and host id on one Redis
namespace.  tests/bridge/test_namespaces.py runs the real thing (each host
its own /dev/shm and hostname)."""

import asyncio
import subprocess
import sys

import pytest

from shmchannels import ChannelFull
from shmchannels.bridge import BridgeUnavailable, HostIdConflict
from shmchannels.layers import SharedMemoryChannelLayer

from bridge_hosts import AgentError, calls


@pytest.fixture
def layer(config):
    return SharedMemoryChannelLayer(**config("a"))


async def test_a_send_to_another_hosts_channel_reaches_that_host_only(layer, config, start_host, redis_server,
                                                                      namespace):
    b = start_host(config("b", "b"))
    c = start_host(config("c", "c"))
    on_b = b.call("new_channel")
    assert ".at-b.shm" in on_b
    await layer.send(on_b, {"type": "hello", "text": "to b"})
    assert b.call("receive", on_b, 10) == {"type": "hello", "text": "to b"}
    # c's inbox saw nothing; a channel of c gets only its own messages
    assert redis_server.command("LLEN", f"{namespace}:inbox:c") == 0
    on_c = c.call("new_channel")
    b.call("send", on_c, {"type": "from b"})
    assert c.call("receive", on_c, 10) == {"type": "from b"}
    # and back to this process's host
    mine = await layer.new_channel()
    c.call("send", mine, {"type": "to a"})
    assert await asyncio.wait_for(layer.receive(mine), 10) == {"type": "to a"}


async def test_local_sends_never_touch_redis(layer, redis_server):
    mine = await layer.new_channel()
    before = {c: calls(redis_server, c) for c in ("evalsha", "rpush", "lpop")}
    for i in range(200):
        await layer.send(mine, {"type": "n", "i": i})
        await layer.send("local.named", {"type": "n", "i": i})
        assert (await layer.receive(mine))["i"] == i
        assert (await layer.receive("local.named"))["i"] == i
    assert {c: calls(redis_server, c) for c in before} == before


async def test_group_send_spans_hosts_with_one_redis_operation(config, start_host, redis_server):
    # long leases: no renewal runs between the counts
    layer = SharedMemoryChannelLayer(**config("a", host_lease=60))
    b = start_host(config("b", "b", host_lease=60))
    c = start_host(config("c", "c", host_lease=60))  # no members: nothing goes to it
    here = [await layer.new_channel() for _ in range(3)]
    there = [b.call("new_channel") for _ in range(5)]
    for ch in here:
        await layer.group_add("room", ch)
    for ch in there:
        b.call("group_add", "room", ch)
    before = {cmd: calls(redis_server, cmd) for cmd in ("evalsha", "rpush", "zrange")}
    sends = 10
    for i in range(sends):
        await layer.group_send("room", {"type": "chat", "i": i})
    for ch in here:
        for i in range(sends):
            assert await asyncio.wait_for(layer.receive(ch), 10) == {"type": "chat", "i": i}
    for ch in there:
        for i in range(sends):
            assert b.call("receive", ch, 10) == {"type": "chat", "i": i}
    after = {cmd: calls(redis_server, cmd) for cmd in before}
    # one EVALSHA per group_send (plus, at most, a lease renewal of each of the 3 hosts' bridges);
    # inside it one ZRANGE and one RPUSH (to b alone): never one per member
    assert sends <= after["evalsha"] - before["evalsha"] <= sends + 3
    assert after["rpush"] - before["rpush"] == sends
    assert after["zrange"] - before["zrange"] == sends
    assert c.call("receive", c.call("new_channel"), 0.5) is None
    # a group_send from b reaches this host's members too
    b.call("group_send", "room", {"type": "back"})
    for ch in here:
        assert await asyncio.wait_for(layer.receive(ch), 10) == {"type": "back"}


async def test_group_add_of_another_hosts_channel_is_made_on_that_host(layer, config, start_host):
    b = start_host(config("b", "b"))
    on_b = b.call("new_channel")
    await layer.group_add("remote-added", on_b)
    await layer.group_send("remote-added", {"type": "g"})
    assert b.call("receive", on_b, 10) == {"type": "g"}
    await layer.group_discard("remote-added", on_b)
    await layer.group_send("remote-added", {"type": "g2"})
    assert b.call("receive", on_b, 1) is None


async def test_named_channels_stay_local_unless_listed_and_then_have_one_receiver(config, start_host):
    layer = SharedMemoryChannelLayer(**config("a", cross_host_channels=["thumbnails*"]))
    b = start_host(config("b", "b", cross_host_channels=["thumbnails*"]))
    c = start_host(config("c", "c", cross_host_channels=["thumbnails*"]))
    await layer.send("local-only", {"type": "stays"})
    assert b.call("receive", "local-only", 0.5) is None
    assert await layer.receive("local-only") == {"type": "stays"}
    for i in range(10):
        await layer.send("thumbnails.make", {"type": "job", "i": i})
    got = []
    for host in (b, c, b, c):
        while (m := host.call("receive", "thumbnails.make", 0.3)) is not None:
            got.append(m["i"])
    assert sorted(got) == list(range(10))  # each job exactly once, whichever host took it
    # capacity holds across hosts
    small = SharedMemoryChannelLayer(**config("s", "s", capacity=2, cross_host_channels=["thumbnails*"]))
    await small.send("thumbnails.small", {"type": "1"})
    await small.send("thumbnails.small", {"type": "2"})
    with pytest.raises(ChannelFull):
        await small.send("thumbnails.small", {"type": "3"})
    assert b.call("receive", "thumbnails.small", 5) == {"type": "1"}
    await small.flush()


async def test_a_duplicate_host_identity_is_an_error_at_start(layer, config, start_host):
    dup = start_host(config("a", "dup"))
    assert "HostIdConflict" in dup.started["error"] and "'a'" in dup.started["error"]
    with pytest.raises(HostIdConflict, match="already claimed"):
        SharedMemoryChannelLayer(**config("a", "dup2"))


async def test_the_bridge_role_moves_when_its_process_goes(config, start_host, layer):
    first = start_host(config("b", "b"))
    second = start_host(config("b", "b"))
    assert [first.call("bridge"), second.call("bridge")] == [True, False]
    on_second = second.call("new_channel")
    await layer.send(on_second, {"type": "1"})
    assert second.call("receive", on_second, 10) == {"type": "1"}
    first.close()  # a clean exit hands the role on at once; a kill too (the kernel drops the flock)
    await layer.send(on_second, {"type": "2"})
    assert second.call("receive", on_second, 10) == {"type": "2"}
    assert second.call("bridge") is True


async def test_encryption_covers_what_crosses_redis(config, start_host, redis_server, namespace):
    keys = ["first-key", "older-key"]
    shared = ["jobs"]
    layer = SharedMemoryChannelLayer(**config("a", symmetric_encryption_keys=keys, cross_host_channels=shared))
    # b decrypts with either key (MultiFernet): a key rotation in progress
    b = start_host(config("b", "b", symmetric_encryption_keys=keys[::-1], cross_host_channels=shared))
    await layer.send("jobs", {"type": "secret", "text": "plain words"})
    stored = redis_server.command("LINDEX", f"{namespace}:chan:jobs", 0)
    assert b"plain words" not in stored and b"secret" not in stored and b"jobs" not in stored
    assert b.call("receive", "jobs", 10) == {"type": "secret", "text": "plain words"}
    on_b = b.call("new_channel")
    await layer.send(on_b, {"type": "to b"})
    assert b.call("receive", on_b, 10) == {"type": "to b"}
    wrong = SharedMemoryChannelLayer(**config("x", "x", symmetric_encryption_keys=["other"]))
    await wrong.send(on_b, {"type": "wrong key"})
    assert b.call("receive", on_b, 1) is None  # dropped by b's bridge, with a warning


async def test_redis_down_keeps_local_traffic_and_recovers_by_itself(layer, config, start_host, redis_server):
    b = start_host(config("b", "b"))
    on_b = b.call("new_channel")
    mine = await layer.new_channel()
    await layer.group_add("room", mine)
    b.call("group_add", "room", on_b)
    redis_server.stop()
    try:
        # local traffic flows; a cross-host send fails at once with a clear error
        for i in range(50):
            await layer.send(mine, {"type": "local", "i": i})
            assert (await layer.receive(mine))["i"] == i
        with pytest.raises(BridgeUnavailable, match="Redis at redis://127.0.0.1:.* is unavailable"):
            for _ in range(100):  # the first may still be on its way out when the loss is seen
                await asyncio.wait_for(layer.send(on_b, {"type": "lost"}), 5)
        await asyncio.wait_for(layer.group_send("room", {"type": "local part"}), 5)  # never raises
        assert await asyncio.wait_for(layer.receive(mine), 5) == {"type": "local part"}
        with pytest.raises(AgentError, match="BridgeUnavailable"):
            b.call("send", mine, {"type": "lost"})
    finally:
        redis_server.start()
    # back: no manual step; once the probe has reconnected (its backoff), sends get through, the
    # first one included (no stale connection left to fail it)
    link = layer._bridge.link
    for _ in range(100):
        if link.up:
            break
        await asyncio.sleep(0.1)
    for i in range(5):
        await layer.send(on_b, {"type": "back", "i": i})
    for i in range(5):
        assert b.call("receive", on_b, 10) == {"type": "back", "i": i}
    for _ in range(50):  # b's own probe comes back on its own backoff
        try:
            b.call("send", mine, {"type": "from b again"})
            break
        except AgentError:
            await asyncio.sleep(0.1)
    assert await asyncio.wait_for(layer.receive(mine), 10) == {"type": "from b again"}
    # memberships were advertised again by each host's bridge when Redis came back (it had lost them)
    for _ in range(100):
        await layer.group_send("room", {"type": "again"})
        if b.call("receive", on_b, 0.2) is not None:
            break
    else:
        pytest.fail("group messages never reached host b again")
    assert (await asyncio.wait_for(layer.receive(mine), 5))["type"] == "again"


def test_without_hosts_no_redis_is_imported(prefix):
    code = ("import sys; from shmchannels.layers import SharedMemoryChannelLayer as L; "
            f"L(prefix={prefix!r}); import shmchannels.checks; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('redis', 'cryptography') "
            "or m.startswith('shmchannels.bridge')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


async def test_a_host_whose_last_process_leaves_is_forgotten_at_once(layer, config, start_host, redis_server,
                                                                     namespace):
    b1 = start_host(config("b", "b", host_lease=60))
    b2 = start_host(config("b", "b", host_lease=60))
    b1.call("group_add", "room", b1.call("new_channel"))
    b2.call("group_add", "room", b2.call("new_channel"))
    b1.close()  # another process of host b lives on: the claim stays
    assert redis_server.command("HGET", f"{namespace}:hosts", "b") is not None
    b2.close()  # the last one: claim released, groups withdrawn, not one lease later
    assert redis_server.command("HGET", f"{namespace}:hosts", "b") is None
    assert redis_server.command("ZSCORE", f"{namespace}:group:room", "b") is None


def test_the_asgi1_layer_takes_the_same_hosts(config, start_host):
    import shmchannels

    cfg = config("a1")
    cfg.pop("prefix")
    layer = shmchannels.ChannelLayer(prefix=config("a1", "v1")["prefix"], block_timeout=10, **cfg)
    b = start_host(config("b", "b"))
    replies = layer.process_prefix("reply")
    assert ".at-a1.shm" in replies
    b.call("send", replies + "abc", {"type": "to asgi1"})
    assert layer.receive([replies], block=True) == (replies + "abc", {"type": "to asgi1"})
    on_b = b.call("new_channel")
    layer.send(on_b, {"type": "from asgi1"})
    assert b.call("receive", on_b, 10) == {"type": "from asgi1"}
    layer.group_add("v1room", on_b)  # another host's channel: the membership is made there
    layer.send_group("v1room", {"type": "group from asgi1"})
    assert b.call("receive", on_b, 10) == {"type": "group from asgi1"}
    layer.flush()


async def test_hosts_started_while_redis_is_down_join_when_it_comes_up(config, start_host, redis_server):
    redis_server.stop()
    try:
        layer = SharedMemoryChannelLayer(**config("a"))  # no error: local traffic needs no Redis
        b = start_host(config("b", "b"))
        assert b.started == {"ok": "ready"}
        mine = await layer.new_channel()
        await layer.send(mine, {"type": "local"})
        assert await layer.receive(mine) == {"type": "local"}
        on_b = b.call("new_channel")
        with pytest.raises(BridgeUnavailable):
            await layer.send(on_b, {"type": "too early"})
    finally:
        redis_server.start()
    got = None
    for _ in range(50):  # both probes reconnect, both bridges claim their hosts (a send before is dropped)
        try:
            await layer.send(on_b, {"type": "joined"})
        except BridgeUnavailable:
            await asyncio.sleep(0.1)
            continue
        got = b.call("receive", on_b, 0.2)
        if got is not None:
            break
    assert got == {"type": "joined"}
