"""SharedMemoryChannelLayer behaviour beyond the peer suites: limits, types,
cancellation, several instances, threads and event loops, no polling."""

import asyncio
import math
import threading

import pytest
from asgiref.sync import async_to_sync

from shmchannels import ChannelFull, MessageTooLarge
from shmchannels.engine.local import local_for
from shmchannels.layers import SharedMemoryChannelLayer


@pytest.fixture
def layer(prefix):
    return SharedMemoryChannelLayer(prefix=prefix, capacity=10)


async def test_bytes_and_str_stay_distinct_and_values_round_trip(layer):
    msg = {
        "type": "t",
        "bytes": b"\xc2\xa3\x00\xff",
        "text": "\u00a3\U0001F612",
        "nested": {"list": [1, 2.5, None, True, b"x", "y"], "big": 2**63 - 1, "neg": -(2**63)},
        "nan": float("nan"),
        "inf": float("-inf"),
        "tuple": (1, 2),
    }
    await layer.send("types", msg)
    got = await layer.receive("types")
    assert type(got["bytes"]) is bytes and got["bytes"] == msg["bytes"]
    assert type(got["text"]) is str and got["text"] == msg["text"]
    assert got["nested"] == msg["nested"]
    assert math.isnan(got["nan"]) and got["inf"] == float("-inf")
    assert got["tuple"] == [1, 2]  # ASGI allows tuples to come back as lists


async def test_a_sixteen_mebibyte_message_works_by_default_and_bigger_ones_raise(layer):
    big = b"\x01" * (16 << 20)
    await layer.send("big", {"type": "x", "bytes": big, "reply_channel": "a" * 99})
    assert (await layer.receive("big"))["bytes"] == big
    with pytest.raises(MessageTooLarge, match="max_message_size"):
        await layer.send("big", {"type": "x", "bytes": b"\0" * ((16 << 20) + (64 << 10))})
    with pytest.raises(TypeError):
        await layer.send("big", {"type": "x", "bytes": big, "bad": object()})
    # the refused messages cost nothing: the channel still works
    await layer.send("big", {"type": "after"})
    assert (await layer.receive("big"))["type"] == "after"


async def test_max_message_size_is_configurable_and_independent_of_ring_size(prefix):
    small = SharedMemoryChannelLayer(prefix=prefix, max_message_size=1000)
    await small.send("c", {"b": b"x" * 900})
    with pytest.raises(MessageTooLarge):
        await small.send("c", {"b": b"x" * 1000})
    await small.flush()
    # a 4 MiB message through a 64 KiB ring: it travels in a blob
    tiny = SharedMemoryChannelLayer(prefix=prefix, ring_size=1 << 16, max_message_size=8 << 20)
    await tiny.send("t", {"b": b"y" * (4 << 20)})
    assert (await tiny.receive("t"))["b"] == b"y" * (4 << 20)
    await small.flush()


async def test_unserializable_values_raise_type_error(layer):
    with pytest.raises(TypeError, match="cannot be serialized"):
        await layer.send("c", {"obj": object()})
    with pytest.raises(AssertionError):
        await layer.send("c", ["not", "a", "dict"])


async def test_invalid_names_raise_type_error_stating_the_rule(layer):
    with pytest.raises(TypeError, match="ASCII alphanumerics"):
        await layer.send("bad name", {})
    with pytest.raises(TypeError):
        await layer.send("q?x", {})  # Channels 4 has no single-reader channels
    with pytest.raises(TypeError, match="Group"):
        await layer.group_add("bad group!", "chan")


async def test_channel_capacity_patterns(prefix):
    import re

    lay = SharedMemoryChannelLayer(prefix=prefix, capacity=5, channel_capacity={"tiny*": 1, re.compile(r"^exact$"): 2})
    await lay.send("tiny.one", {})
    with pytest.raises(ChannelFull):
        await lay.send("tiny.one", {})
    await lay.send("exact", {})
    await lay.send("exact", {})
    with pytest.raises(ChannelFull):
        await lay.send("exact", {})
    for _ in range(5):
        await lay.send("other", {})
    with pytest.raises(ChannelFull):
        await lay.send("other", {})
    await lay.flush()


async def test_channel_full_leaves_queued_messages_intact(layer):
    for i in range(10):
        await layer.send("full", {"i": i})
    with pytest.raises(ChannelFull):
        await layer.send("full", {"i": 10})
    assert [(await layer.receive("full"))["i"] for _ in range(10)] == list(range(10))


async def test_cancelled_receives_lose_and_duplicate_nothing(layer):
    ch = await layer.new_channel()
    for channel in (ch, "plain.cancel"):
        expected = []
        got = []
        for i in range(200):
            task = asyncio.ensure_future(layer.receive(channel))
            await asyncio.sleep(0)
            if i % 3 == 0:
                await layer.send(channel, {"i": i})
                expected.append(i)
            task.cancel()
            try:
                got.append((await task)["i"])
            except asyncio.CancelledError:
                pass
        while len(got) < len(expected):
            got.append((await asyncio.wait_for(layer.receive(channel), 2))["i"])
        assert got == expected


async def test_parked_receivers_handed_a_group_message_leave_no_registration_behind(prefix):
    """500 receivers parked on their own channels get one group message each,
    handed over on wake-up; afterwards this process waits on nothing, so the
    next send to its ring wakes nobody (no stale FIFO registration)."""
    lay = SharedMemoryChannelLayer(prefix=prefix)
    chans = [await lay.new_channel() for _ in range(500)]
    for ch in chans:
        await lay.group_add("room", ch)
    for n in range(3):
        tasks = [asyncio.ensure_future(lay.receive(ch)) for ch in chans]
        await asyncio.sleep(0.01)  # all parked
        await lay.group_send("room", {"n": n})
        got = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert [m["n"] for m in got] == [n] * 500
        bus = lay.core.bus
        assert not local_for(bus).has_parked()
        ring = bus.rings.get(chans[0][: chans[0].index("!") + 1])
        assert ring.fifo_slots() == []
    # A cancelled receive after all that still loses nothing.
    task = asyncio.ensure_future(lay.receive(chans[7]))
    await asyncio.sleep(0.01)
    await lay.group_send("room", {"n": 99})
    task.cancel()
    results = await asyncio.gather(task, return_exceptions=True)
    if isinstance(results[0], asyncio.CancelledError):
        assert (await asyncio.wait_for(lay.receive(chans[7]), 2))["n"] == 99
    else:
        assert results[0]["n"] == 99
    await lay.flush()


async def test_parked_group_members_each_get_a_message_of_their_own(prefix):
    """A group record is decoded once for the parked members of a process
    (engine/demux.py, ``shared``): each still gets a dict of its own, equal
    to the message, and a message with a mutable value (a list, a dict) is
    decoded per member, so mutating one member's copy changes no other's."""
    lay = SharedMemoryChannelLayer(prefix=prefix)
    chans = [await lay.new_channel() for _ in range(3)]
    for ch in chans:
        await lay.group_add("room", ch)
    for message in ({"type": "a", "text": "t", "b": b"\x00", "n": 1, "f": 0.5, "ok": True, "none": None},
                    {"type": "b", "items": [1, 2], "nested": {"k": "v"}}):
        tasks = [asyncio.ensure_future(lay.receive(ch)) for ch in chans]
        await asyncio.sleep(0.01)  # all parked
        await lay.group_send("room", message)
        got = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert got == [message] * 3
        assert len({id(m) for m in got}) == 3
        got[0]["type"] = "changed"
        if "items" in message:
            got[0]["items"].append(3)
            got[0]["nested"]["k"] = "w"
        assert got[1] == got[2] == message
    await lay.flush()


async def test_group_expiry_ends_memberships_but_message_expiry_does_not(prefix):
    lay = SharedMemoryChannelLayer(prefix=prefix, expiry=0.2, group_expiry=1)
    ch = await lay.new_channel()
    await lay.group_add("g", ch)
    await lay.group_send("g", {"n": 1})
    await asyncio.sleep(0.4)  # message 1 expires unread
    await lay.group_send("g", {"n": 2})
    assert (await lay.receive(ch))["n"] == 2  # still a member
    await asyncio.sleep(1.0)  # past group_expiry
    await lay.group_send("g", {"n": 3})
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(lay.receive(ch), 0.3)
    await lay.flush()


async def test_instances_with_one_prefix_share_a_bus_and_prefixes_are_isolated(prefix):
    a = SharedMemoryChannelLayer(prefix=prefix)
    b = SharedMemoryChannelLayer(prefix=prefix)
    other = SharedMemoryChannelLayer(prefix=prefix + "o")
    assert a.client_prefix != b.client_prefix
    await a.send("shared", {"from": "a"})
    assert (await b.receive("shared")) == {"from": "a"}
    await other.send("shared", {"from": "other"})
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(a.receive("shared"), 0.2)
    ch = await b.new_channel()
    await a.send(ch, {"to": "b"})
    assert await b.receive(ch) == {"to": "b"}
    with pytest.raises(AssertionError, match="new_channel"):
        await a.receive(ch)  # only the instance that made it may receive
    await other.flush()
    await a.flush()
    other.core.bus.detach()


def test_receivers_on_many_threads_and_loops(layer):
    chans = [async_to_sync(layer.new_channel)() for _ in range(6)]
    results = {}

    def wait(ch):
        results[ch] = async_to_sync(layer.receive)(ch)

    threads = [threading.Thread(target=wait, args=(ch,)) for ch in chans]
    for t in threads:
        t.start()
    for i, ch in enumerate(reversed(chans)):
        async_to_sync(layer.send)(ch, {"i": i})
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert sorted(m["i"] for m in results.values()) == list(range(6))


async def test_a_parked_receiver_is_not_woken_without_traffic(layer):
    ch = await layer.new_channel()
    hub = local_for(layer.core.bus).hub
    wakes = []
    original = hub._on_readable
    hub._on_readable = lambda: (wakes.append(1), original())
    try:
        task = asyncio.ensure_future(layer.receive(ch))
        await asyncio.sleep(0.5)
        assert wakes == []  # parked in epoll: nothing woke the loop
        await layer.send(ch, {"ok": 1})
        assert (await asyncio.wait_for(task, 2)) == {"ok": 1}
    finally:
        hub._on_readable = original


async def test_flush_empties_channels_groups_and_local_buffers(layer):
    ch = await layer.new_channel()
    other = await layer.new_channel()
    await layer.group_add("g", ch)
    await layer.send(ch, {"n": 1})
    await layer.send(other, {"n": 2})
    await layer.send("named", {"n": 3})
    await layer.receive(other)  # drains other's record; ch's stays buffered or in the ring
    await layer.flush()
    await layer.group_send("g", {"n": 4})
    for c in (ch, other, "named"):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(layer.receive(c), 0.2)
