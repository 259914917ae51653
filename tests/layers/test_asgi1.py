"""The ASGI 1 layer: blocking receive with real wake-ups, process prefixes,
single-reader channels, statistics, the asyncio extension, and the talk's
Channel / Group objects on the same bus as Channels 4."""

import asyncio
import threading
import time
import warnings

import pytest

import shmchannels
from shmchannels import Channel, Group, objects
from shmchannels.layers import SharedMemoryChannelLayer


@pytest.fixture
def layer(prefix):
    lay = shmchannels.ChannelLayer(prefix=prefix, capacity=5, block_timeout=5)
    yield lay
    lay.flush()


def test_blocking_receive_wakes_on_arrival_not_on_timeout(layer):
    def later():
        time.sleep(0.2)
        layer.send("slow", {"n": 1})

    threading.Thread(target=later).start()
    t0 = time.monotonic()
    assert layer.receive(["nothing", "slow"], block=True) == ("slow", {"n": 1})
    # woken by the send, long before block_timeout (5 s)
    assert time.monotonic() - t0 < 4


def test_blocking_receive_times_out_with_none(prefix):
    lay = shmchannels.ChannelLayer(prefix=prefix, block_timeout=0.2)
    assert lay.receive(["empty"], block=True) == (None, None)


def test_wake_receivers_makes_parked_blocking_receives_return_and_loses_nothing(prefix):
    lay = shmchannels.ChannelLayer(prefix=prefix, block_timeout=30)
    lay.send("other", {"n": 0})
    lay.receive(["stop.me", "other"])  # the routes exist: a thread may park on them
    got = []
    t = threading.Thread(target=lambda: got.append((time.monotonic(), lay.receive(["stop.me", "other"], block=True))))
    t.start()
    time.sleep(0.3)
    woken = time.monotonic()
    lay.wake_receivers(["stop.me", "other"])
    t.join(5)
    assert got and got[0][1] == (None, None) and got[0][0] - woken < 2.0
    # Only the wait was cut short: the next message is still delivered.
    lay.send("stop.me", {"n": 1})
    assert lay.receive(["stop.me"], block=True) == ("stop.me", {"n": 1})


def test_wake_receivers_leaves_receives_on_other_channels_parked(prefix):
    lay = shmchannels.ChannelLayer(prefix=prefix, block_timeout=30, park_timeout=0.2)
    lay.receive(["jobs"]), lay.receive(["other"])
    got = {}

    def receive(name, channels):
        got[name] = lay.receive(channels, block=True)

    threads = [threading.Thread(target=receive, args=("jobs", ["jobs"])),
               threading.Thread(target=receive, args=("other", ["other"]))]
    for t in threads:
        t.start()
    time.sleep(0.3)
    lay.wake_receivers(["jobs"])
    threads[0].join(5)
    assert got.get("jobs") == (None, None)
    time.sleep(1.0)  # five park timeouts: the other receive must still be parked
    assert "other" not in got
    lay.send("other", {"n": 2})
    threads[1].join(5)
    assert got["other"] == ("other", {"n": 2})


def test_wake_receivers_without_a_bus_attaches_nothing(prefix):
    lay = shmchannels.ChannelLayer(prefix=prefix)
    lay.wake_receivers(["nobody.parked"])
    assert shmchannels.bus.attached(prefix) is None


def test_receive_is_fair_across_channels(layer):
    for i in range(5):
        layer.send("a", {"i": i})
        layer.send("b", {"i": i})
    seen = [layer.receive(["a", "b"])[0] for _ in range(10)]
    assert sorted(seen) == ["a"] * 5 + ["b"] * 5
    assert seen[:5] != ["a"] * 5 or seen[5:] != ["b"] * 5  # shuffled, not starved


def test_receive_validates_channel_lists(layer):
    with pytest.raises(TypeError, match="non-empty list"):
        layer.receive([])
    with pytest.raises(TypeError, match="end at the '!'"):
        layer.receive(["proc!local"])
    with pytest.raises(TypeError, match="single-reader"):
        layer.send("body?", {})
    with pytest.raises(TypeError, match="must be a dict"):
        layer.send("c", "text")
    with pytest.raises(ValueError, match="reserved"):
        layer.send("c", {"__asgi_channel__": "x"})


def test_receive_many_is_a_deprecated_alias(layer):
    layer.send("rm", {"x": 1})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert layer.receive_many(["rm"]) == ("rm", {"x": 1})
    assert w and issubclass(w[0].category, DeprecationWarning)


def test_new_channel_makes_single_reader_names(layer):
    a = layer.new_channel("http.request.body?")
    b = layer.new_channel("http.request.body?")
    assert a != b and a.count("?") == 1 and not a.endswith("?")
    layer.send(a, {"chunk": b"1"})
    assert layer.receive([b, a]) == (a, {"chunk": b"1"})
    for bad in ("x!", "x", "x?y?"):
        with pytest.raises(TypeError):
            layer.new_channel(bad)


def test_process_prefix_delivers_in_order_with_full_names(layer):
    prefix = layer.process_prefix("http.response")
    assert prefix.endswith("!")
    layer.send(prefix + "one", {"n": 1})
    layer.send(prefix + "two", {"n": 2})
    assert layer.receive([prefix]) == (prefix + "one", {"n": 1})
    assert layer.receive([prefix]) == (prefix + "two", {"n": 2})
    assert layer.receive([prefix]) == (None, None)


def test_process_prefix_hands_out_a_group_record_once_per_member_in_order(layer):
    """A group record for several channels behind one prefix: its first
    member comes straight from the ring, the others from the queue, each
    once, before the next record."""
    prefix = layer.process_prefix("http.response")
    layer.send(prefix + "zero", {"n": 0})
    for local in ("a", "b", "c"):
        layer.group_add("room", prefix + local)
    layer.send_group("room", {"m": 1})
    layer.send(prefix + "after", {"n": 2})
    got = [layer.receive([prefix]) for _ in range(6)]
    assert got[0] == (prefix + "zero", {"n": 0})
    assert sorted(got[1:4]) == [(prefix + x, {"m": 1}) for x in ("a", "b", "c")]
    assert got[4] == (prefix + "after", {"n": 2})
    assert got[5] == (None, None)


def test_statistics_extension(layer):
    for _ in range(5):
        layer.send("stats", {"x": 1})
    with pytest.raises(layer.ChannelFull):
        layer.send("stats", {"x": 1})
    time.sleep(0.05)
    stats = layer.channel_statistics("stats")
    assert stats["messages_pending"] == 5
    assert stats["messages_count"] == 5
    assert stats["channel_full_count"] == 1
    assert stats["messages_max_age"] >= 0.05
    layer.receive(["stats"])
    assert layer.channel_statistics("stats")["messages_pending"] == 4
    glob = layer.global_statistics()
    assert glob["messages_pending"] >= 4 and glob["channel_full_count"] >= 1


def test_receive_async_extension(layer):
    async def main():
        task = asyncio.ensure_future(layer.receive_async(["x", "y"]))
        await asyncio.sleep(0.05)
        layer.send("y", {"v": 1})
        return await asyncio.wait_for(task, 5)

    assert asyncio.run(main()) == ("y", {"v": 1})


def test_single_reader_rings_are_retired_when_idle_and_reopened_on_use(layer):
    name = layer.new_channel("body?")
    layer.send(name, {"n": 1})
    assert layer.receive([name])[1] == {"n": 1}
    bus = layer.core.bus
    assert bus.rings.retire_idle(idle_ns=0) == 1
    assert not any("?" in r.key for r in bus.all_rings())
    layer.send(name, {"n": 2})  # a cached handle saw the ring closed and reopened it
    assert layer.receive([name]) == (name, {"n": 2})


def test_channel_and_group_objects_share_the_bus_with_channels4(prefix):
    lay = objects.configure(prefix=prefix)
    v4 = SharedMemoryChannelLayer(prefix=prefix)

    async def scenario():
        reply = await v4.new_channel()
        Group("liveblog").add(reply)
        Channel("thumbnail").send({"id": 42})
        Group("liveblog").send({"text": "New post"})
        assert (await v4.receive("thumbnail")) == {"id": 42}
        assert (await v4.receive(reply)) == {"text": "New post"}
        Channel(reply).send({"direct": True})
        assert (await v4.receive(reply)) == {"direct": True}
        assert Group("liveblog").channels() == [reply]
        Group("liveblog").discard(reply)
        assert Group("liveblog").channels() == []

    asyncio.run(scenario())
    with pytest.raises(TypeError, match="dicts"):
        Channel("x").send("text")
    with pytest.raises(TypeError):
        Channel("bad name")
    lay.flush()
    objects._default = None


def test_deferred_sends_inside_a_consumer(prefix):
    lay = objects.configure(prefix=prefix)
    with objects.deferred_sends():
        Channel("out").send({"n": 1})
        Channel("out").send({"now": True}, immediately=True)
        assert lay.receive(["out"]) == ("out", {"now": True})
        assert lay.receive(["out"]) == (None, None)  # held until the consumer ends
    assert lay.receive(["out"]) == ("out", {"n": 1})
    with pytest.raises(RuntimeError):
        with objects.deferred_sends():
            Channel("out").send({"n": 2})
            raise RuntimeError("consumer failed")
    assert lay.receive(["out"]) == (None, None)  # a failed consumer sends nothing
    lay.flush()
    objects._default = None
