"""shmchannels.demux.Demux on real rings: local fan-out of ``prefix!``
rings into per-channel buffers, lazily; ordered keys for ASGI 1; buffers
that keep their newest messages; expiry; discard; flush."""

import logging
import time

import pytest

from shmchannels import bus as bus_mod, names
from shmchannels.engine.local import local_for
from shmchannels.engine.demux import Demux, signal_waiters

SECOND = 1_000_000_000
FLAGS = 1


@pytest.fixture
def bus(small_bus):
    return small_bus


@pytest.fixture
def demux(bus):
    return Demux(bus)


@pytest.fixture
def key(bus):
    return "websocket.send." + names.new_client_prefix(bus.slot, bus.gen) + "!"


@pytest.fixture
def ring(bus, key):
    return bus.rings.owned(key)


def put(ring, locals_, body, expiry_ns=60 * SECOND, capacity=1000):
    """One record for the channels behind the ring with these local parts."""
    if isinstance(locals_, str):
        locals_ = [locals_]
    status = ring.put(body, "\n".join(locals_).encode("utf-8"), expiry_ns, capacity, FLAGS)
    assert status in (bus_mod.PUT_OK, bus_mod.PUT_WAKE), status


def take(demux, ring, key, local):
    return demux.take(ring, key, key + local, local.encode("utf-8"))


# ----------------------------------------------------------------- register


def test_register_keeps_the_first_capacity_and_makes_ordered_queues(demux, key):
    first, second = (lambda c: 5), (lambda c: 7)
    demux.register(key, first)
    demux.register(key, second)
    assert demux.capacity_of[key] is first
    assert key not in demux.ordered
    demux.register(key, first, ordered=True)
    assert key in demux.ordered and not demux.has_ordered(key)


# --------------------------------------------------------------------- take


def test_take_returns_a_message_for_the_channel_alone(demux, ring, key):
    demux.register(key, lambda c: 100)
    assert take(demux, ring, key, "a") is None
    put(ring, "a", b"m1")
    assert take(demux, ring, key, "a") == (FLAGS, b"m1")
    assert take(demux, ring, key, "a") is None
    assert demux.buffered() == 0


def test_take_is_lazy_and_buffers_what_it_meets_for_others(demux, ring, key):
    demux.register(key, lambda c: 100)
    for local, body in [("a", b"a1"), ("b", b"b1"), ("a", b"a2"), ("c", b"c1"), ("a", b"a3")]:
        put(ring, local, body)
    assert take(demux, ring, key, "c") == (FLAGS, b"c1")
    # only what lay before c's message was taken from the ring
    assert ring.pending == 1
    assert demux.buffered() == 3 and demux.has(key + "a") and demux.has(key + "b")
    assert take(demux, ring, key, "a") == (FLAGS, b"a1")
    assert take(demux, ring, key, "a") == (FLAGS, b"a2")
    assert ring.pending == 1  # a's buffer answered: the ring was not touched
    assert take(demux, ring, key, "a") == (FLAGS, b"a3")
    assert ring.pending == 0
    assert take(demux, ring, key, "b") == (FLAGS, b"b1")
    assert take(demux, ring, key, "a") is None and take(demux, ring, key, "b") is None


def test_a_group_record_reaches_every_channel_it_names(demux, ring, key):
    demux.register(key, lambda c: 100)
    put(ring, ["a", "b", "c"], b"g")
    assert take(demux, ring, key, "b") == (FLAGS, b"g")
    assert sorted(demux.buffers) == [key + "a", key + "c"]
    assert take(demux, ring, key, "a") == (FLAGS, b"g")
    assert take(demux, ring, key, "c") == (FLAGS, b"g")
    assert take(demux, ring, key, "b") is None


def test_a_group_record_not_naming_the_channel_is_only_buffered(demux, ring, key):
    demux.register(key, lambda c: 100)
    put(ring, ["x", "y"], b"g")
    assert take(demux, ring, key, "z") is None
    assert demux.buffered() == 2 and ring.pending == 0


def test_non_ascii_local_parts_route(demux, ring, key):
    demux.register(key, lambda c: 100)
    put(ring, ["\u00e9t\u00e9", "b"], b"g")
    assert take(demux, ring, key, "b") == (FLAGS, b"g")
    assert take(demux, ring, key, "\u00e9t\u00e9") == (FLAGS, b"g")


def test_unregistered_keys_buffer_100_per_channel(demux, ring, key):
    for i in range(105):
        put(ring, "u", b"%d" % i)
    put(ring, "w", b"w")
    assert take(demux, ring, key, "w") == (FLAGS, b"w")
    assert len(demux.buffers[key + "u"]) == 100
    assert demux.overflowed == 5


# ------------------------------------------------------------------- drain


def test_drain_stops_once_every_wanted_channel_has_a_message(demux, ring, key):
    demux.register(key, lambda c: 100)
    for local in ["a", "b", "a", "c", "d"]:
        put(ring, local, local.encode())
    touched = demux.drain(ring, key, [key + "a", key + "c"])
    assert touched == {key + "a", key + "b", key + "c"}
    assert ring.pending == 1  # d's record stays in the ring
    assert len(demux.buffers[key + "a"]) == 2
    assert demux.drain(ring, key, [key + "a"]) == set()  # a has a message already: nothing taken
    assert ring.pending == 1
    assert demux.drain(ring, key, [key + "d"]) == {key + "d"}
    assert demux.drain(ring, key, [key + "e"]) == set()  # nothing left


def test_ordered_keys_keep_arrival_order_one_record_at_a_time(demux, ring, key):
    demux.register(key, lambda c: 100, ordered=True)
    put(ring, "a", b"1")
    put(ring, ["b", "c"], b"2")
    put(ring, "a", b"3")
    assert demux.drain(ring, key, (key,)) == {key}
    assert ring.pending == 2 and demux.has_ordered(key)
    assert demux.drain(ring, key, (key,)) == set()  # the queue is not empty: nothing more taken
    assert demux.pop_ordered(key) == (key + "a", FLAGS, b"1")
    assert demux.pop_ordered(key) is None
    demux.drain(ring, key, (key,))
    assert demux.buffered() == 2  # a group record is one entry per target
    assert demux.pop_ordered(key) == (key + "b", FLAGS, b"2")
    assert demux.pop_ordered(key) == (key + "c", FLAGS, b"2")
    demux.drain(ring, key, (key,))
    assert demux.pop_ordered(key) == (key + "a", FLAGS, b"3")
    assert demux.drain(ring, key, (key,)) == set() and demux.pop_ordered(key) is None


# ---------------------------------------------------------------- capacity


def test_a_full_buffer_drops_its_oldest_with_a_count_and_a_warning(demux, ring, key, caplog):
    demux.register(key, lambda c: 2 if c.endswith("!slow") else 100)
    for i in range(5):
        put(ring, "slow", b"s%d" % i)
    put(ring, "fast", b"f")
    with caplog.at_level(logging.WARNING, logger="shmchannels.layers"):
        assert take(demux, ring, key, "fast") == (FLAGS, b"f")
    assert demux.overflowed == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # rate-limited: one line, with the count so far
    assert key + "slow" in warnings[0] and "dropping its oldest message" in warnings[0]
    assert take(demux, ring, key, "slow") == (FLAGS, b"s3")  # the newest two were kept
    assert take(demux, ring, key, "slow") == (FLAGS, b"s4")
    assert take(demux, ring, key, "slow") is None


def test_capacity_is_asked_per_channel(demux, ring, key):
    asked = []
    demux.register(key, lambda c: asked.append(c) or 1)
    put(ring, "a", b"a1")
    put(ring, "a", b"a2")
    put(ring, "b", b"b1")
    put(ring, "c", b"c1")
    assert take(demux, ring, key, "c") == (FLAGS, b"c1")
    assert asked == [key + "a", key + "b"]  # once per buffer made
    assert demux.overflowed == 1
    assert demux.pop(key + "a") == (FLAGS, b"a2")


def test_a_backlog_stays_in_the_ring_and_counts_against_the_sender(demux, ring, key):
    demux.register(key, lambda c: 100)
    for i in range(3):
        put(ring, "a", b"%d" % i, capacity=3)
    assert ring.put(b"x", b"a", 60 * SECOND, 3, FLAGS) == bus_mod.PUT_FULL
    assert take(demux, ring, key, "a") == (FLAGS, b"0")
    put(ring, "a", b"3", capacity=3)  # one taken: room for one more, nothing was trimmed
    assert [take(demux, ring, key, "a")[1] for _ in range(3)] == [b"1", b"2", b"3"]


# ------------------------------------------------------------------ expiry


def test_expired_buffered_messages_are_never_popped(demux, ring, key):
    demux.register(key, lambda c: 100)
    put(ring, "u", b"short", expiry_ns=SECOND // 20)
    put(ring, "u", b"long")
    put(ring, "w", b"w")
    assert take(demux, ring, key, "w") == (FLAGS, b"w")
    assert len(demux.buffers[key + "u"]) == 2
    time.sleep(0.08)
    assert take(demux, ring, key, "u") == (FLAGS, b"long")
    put(ring, "v", b"short", expiry_ns=SECOND // 20)
    put(ring, "w", b"w")
    take(demux, ring, key, "w")
    time.sleep(0.08)
    assert demux.pop(key + "v") is None
    assert not demux.has(key + "v") and key + "v" not in demux.buffers


def test_expired_buffers_are_purged_while_traffic_flows(demux, ring, key):
    demux.register(key, lambda c: 100)
    for local in ("gone1", "gone2"):
        put(ring, local, b"x", expiry_ns=SECOND // 20)
    put(ring, "w", b"w")
    take(demux, ring, key, "w")
    assert demux.buffered() == 2
    time.sleep(0.08)
    put(ring, "w", b"w2")
    demux.drain(ring, key, [key + "w"])  # the first drain of this Demux purges (then at most once a second)
    assert sorted(demux.buffers) == [key + "w"]


def test_expired_ordered_messages_are_skipped(demux, ring, key):
    demux.register(key, lambda c: 100, ordered=True)
    put(ring, ["a", "b"], b"short", expiry_ns=SECOND // 20)
    demux.drain(ring, key, (key,))
    put(ring, "c", b"long")
    time.sleep(0.08)
    assert demux.pop_ordered(key) is None
    demux.drain(ring, key, (key,))
    assert demux.pop_ordered(key) == (key + "c", FLAGS, b"long")


# --------------------------------------------------------- discard, requeue


def test_discard_forgets_a_channels_buffer(demux, ring, key):
    demux.register(key, lambda c: 100)
    put(ring, "closed", b"x")
    put(ring, "w", b"w")
    take(demux, ring, key, "w")
    assert demux.has(key + "closed")
    demux.discard(key + "closed")
    assert not demux.has(key + "closed") and demux.buffered() == 0
    assert take(demux, ring, key, "closed") is None
    demux.discard(key + "never")  # not an error


def test_requeue_puts_a_message_back_first_in_line(demux, ring, key):
    demux.register(key, lambda c: 100)
    put(ring, "a", b"second")
    put(ring, "w", b"w")
    take(demux, ring, key, "w")
    demux.requeue(key + "a", (time.monotonic_ns() + 60 * SECOND, FLAGS, b"first"))
    demux.requeue(key + "new", (time.monotonic_ns() + 60 * SECOND, FLAGS, b"only"))
    assert take(demux, ring, key, "a") == (FLAGS, b"first")
    assert take(demux, ring, key, "a") == (FLAGS, b"second")
    assert take(demux, ring, key, "new") == (FLAGS, b"only")


# ------------------------------------------------------------------- flush


def test_buffers_are_cleared_when_the_flush_epoch_moves(bus, ring, key):
    demux = local_for(bus).demux
    demux.register(key, lambda c: 100)
    ordered_key = names.new_client_prefix(bus.slot, bus.gen) + "!"
    ordered_ring = bus.rings.owned(ordered_key)
    demux.register(ordered_key, lambda c: 100, ordered=True)
    put(ordered_ring, "o", b"o")
    demux.drain(ordered_ring, ordered_key, (ordered_key,))
    put(ring, "u", b"old")
    put(ring, "w", b"w")
    take(demux, ring, key, "w")
    assert demux.buffered() == 2
    bus.control.bump_flush_epoch()  # another process flushed the bus
    put(ring, "u", b"new")
    assert take(demux, ring, key, "u") == (FLAGS, b"new")  # the old buffer went with the flush
    assert demux.buffered() == 0 and not demux.has_ordered(ordered_key)


def test_a_flush_here_clears_buffers_and_rings(bus, ring, key):
    demux = local_for(bus).demux
    demux.register(key, lambda c: 100)
    put(ring, "u", b"buffered")
    put(ring, "w", b"w")
    put(ring, "u", b"in the ring")
    take(demux, ring, key, "w")
    bus.flush()
    assert ring.pending == 0
    # The bus only moved the flush epoch; the next take here sees it and
    # drops the buffered message with the rest.
    assert take(demux, ring, key, "u") is None
    assert demux.buffered() == 0


def test_clear_empties_everything(demux, ring, key):
    demux.register(key, lambda c: 100)
    put(ring, ["a", "b"], b"x")
    take(demux, ring, key, "c")
    assert demux.buffered() == 2
    demux.clear()
    assert demux.buffered() == 0 and demux.buffers == {}


# ----------------------------------------------------------- signal_waiters


async def test_signal_waiters_resolves_this_loops_futures_and_collects_the_others():
    import asyncio

    loop = asyncio.get_running_loop()
    other = asyncio.new_event_loop()
    try:
        here, done, there = loop.create_future(), loop.create_future(), other.create_future()
        done.set_result("kept")
        elsewhere = []
        signal_waiters([(loop, here, "a"), (loop, done, "a"), (other, there, "a")], loop, elsewhere)
        assert here.result() is None and done.result() == "kept"
        assert elsewhere == [(other, there)] and not there.done()
    finally:
        other.close()
