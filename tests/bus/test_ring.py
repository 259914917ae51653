"""The C ring on its own: record format, wrap-around, capacity, expiry, recovery."""

import mmap
import os
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from shmchannels.bus import _shm

HDR = _shm.RECORD_HEADER
ALIGN = _shm.RECORD_ALIGN
SEC = 1_000_000_000


def make_ring(size=1 << 16, slot=3, gen=7, owner=-1):
    mem = mmap.mmap(-1, _shm.HEADER_SIZE + size)
    _shm.ring_init(mem, size, 1234, int.from_bytes(os.urandom(8), "little"), owner, 0, b"test.ring")
    ctl = mmap.mmap(-1, 4096)
    writer = _shm.Writer(ctl, 64, slot, gen)
    return _shm.Ring(mem, writer), ctl


def record_size(payload):
    return (HDR + payload + ALIGN - 1) // ALIGN * ALIGN


def intent(ctl):
    return [int.from_bytes(ctl[64 + 8 * i : 72 + 8 * i], "little") for i in range(4)]


def test_empty_ring():
    ring, _ = make_ring()
    assert ring.get() is None
    assert not ring.has_data()
    assert ring.pending == 0
    assert ring.head_state()[1] == "empty"
    assert ring.key == "test.ring"
    assert ring.owner is None


def test_put_get_roundtrip_keeps_flags_meta_and_order():
    ring, _ = make_ring()
    assert ring.put(b"one", None, SEC, 0, 1) == _shm.PUT_OK
    assert ring.put(b"two", b"target!x", SEC, 0, 2) == _shm.PUT_OK
    assert ring.pending == 2 and ring.has_data()
    flags, body, meta, deadline = ring.get()
    assert (flags, body, meta) == (1, b"one", None)
    assert deadline > _shm.monotonic_ns()
    assert ring.get()[:3] == (2, b"two", b"target!x")
    assert ring.get() is None
    assert ring.pending == 0


def test_empty_body_and_empty_meta():
    ring, _ = make_ring()
    ring.put(b"", None, SEC, 0, 0)
    assert ring.get()[1] == b""


def test_capacity_counts_messages_and_frees_on_consume():
    ring, _ = make_ring()
    for _ in range(3):
        assert ring.put(b"x", None, SEC, 3, 0) == _shm.PUT_OK
    assert ring.put(b"x", None, SEC, 3, 0) == _shm.PUT_FULL
    assert ring.stats()["full"] == 1
    ring.get()
    assert ring.put(b"x", None, SEC, 3, 0) == _shm.PUT_OK


def test_byte_space_exhaustion_is_reported_not_blocked():
    ring, _ = make_ring(size=1 << 14)
    body = b"x" * 1000
    stored = 0
    while True:
        st = ring.put(body, None, SEC, 0, 0)
        if st != _shm.PUT_OK:
            break
        stored += 1
    assert st == _shm.PUT_NOSPACE
    assert stored == (1 << 14) // record_size(1000)
    assert ring.get()[1] == body
    assert ring.put(body, None, SEC, 0, 0) == _shm.PUT_OK


def test_too_big_never_fits():
    ring, _ = make_ring(size=1 << 14)
    assert ring.put(b"x" * (1 << 13), None, SEC, 0, 0) == _shm.PUT_TOO_BIG
    assert ring.put(b"x" * ((1 << 13) - HDR), None, SEC, 0, 0) == _shm.PUT_OK


def test_expired_records_are_skipped_and_counted():
    ring, _ = make_ring()
    ring.put(b"old", None, 1, 0, 0)  # 1 ns of life
    ring.put(b"new", None, SEC, 0, 0)
    time.sleep(0.001)
    assert ring.get()[1] == b"new"
    assert ring.stats()["expired"] == 1


def test_full_ring_purges_expired_on_send():
    ring, _ = make_ring()
    for _ in range(3):
        ring.put(b"stale", None, 1, 3, 0)
    time.sleep(0.001)
    assert ring.put(b"fresh", None, SEC, 3, 0) == _shm.PUT_OK
    assert ring.get()[1] == b"fresh"
    assert ring.get() is None


def test_wrap_around_pads_and_keeps_every_record_contiguous():
    ring, _ = make_ring(size=1 << 12)
    seen = []
    for i in range(2000):
        body = bytes([i % 251]) * (37 + i % 300)
        st = ring.put(body, None, SEC, 0, 0)
        while st == _shm.PUT_NOSPACE:  # the record plus wrap padding needs room
            seen.append(ring.get()[1])
            st = ring.put(body, None, SEC, 0, 0)
        assert st == _shm.PUT_OK
    while (rec := ring.get()) is not None:
        seen.append(rec[1])
    assert len(seen) == 2000
    for i, body in enumerate(seen):
        assert body == bytes([i % 251]) * (37 + i % 300)


def test_get_many_and_status():
    ring, _ = make_ring()
    for i in range(5):
        ring.put(bytes([i]), None, SEC, 0, 0)
    recs, status = ring.get_many(3)
    assert [r[1] for r in recs] == [b"\0", b"\1", b"\2"] and status is True
    recs, status = ring.get_many(10)
    assert [r[1] for r in recs] == [b"\3", b"\4"] and status is None


def test_closed_ring_refuses_puts_and_drains():
    ring, _ = make_ring()
    ring.put(b"before", None, SEC, 0, 0)
    ring.close(9)
    assert ring.closed
    assert ring.put(b"after", None, SEC, 0, 0) == _shm.PUT_CLOSED
    assert ring.get()[1] == b"before"


def test_discard_all_and_reset():
    ring, _ = make_ring()
    for _ in range(4):
        ring.put(b"x", None, SEC, 0, 0)
    assert ring.discard_all() == 4
    assert ring.get() is None and ring.pending == 0
    ring.put(b"y", None, SEC, 0, 0)
    ring.reset()
    assert ring.get() is None and ring.pending == 0


def test_fifo_waiter_registration_is_idempotent_and_reported_by_put():
    ring, _ = make_ring()
    assert ring.put(b"x", None, SEC, 0, 0) == _shm.PUT_OK
    ring.fifo_add(5)
    ring.fifo_add(5)
    ring.fifo_add(700)
    assert ring.fifo_waiters == 2
    assert sorted(ring.fifo_slots()) == [5, 700]
    assert ring.put(b"x", None, SEC, 0, 0) == _shm.PUT_WAKE
    ring.fifo_remove(5)
    ring.fifo_remove(5)
    ring.fifo_remove(700)
    assert ring.fifo_waiters == 0 and ring.fifo_slots() == []
    with pytest.raises(ValueError):
        ring.fifo_add(_shm.MAX_SLOTS)


def test_intent_is_published_for_the_claim_and_cleared_after_commit():
    ring, ctl = make_ring()
    ring.put(b"abc", None, SEC, 0, 0)
    seq, ring_id, pos, total = intent(ctl)
    assert seq % 2 == 0 and seq > 0
    assert ring_id == 1234 and pos == 0
    assert total == 0  # resolved: no claim in flight


def test_foreign_or_uninitialised_memory_is_rejected():
    with pytest.raises(ValueError, match="not an initialised"):
        _shm.Ring(mmap.mmap(-1, _shm.HEADER_SIZE + 4096))


def test_ring_without_writer_cannot_put():
    mem = mmap.mmap(-1, _shm.HEADER_SIZE + 4096)
    _shm.ring_init(mem, 4096, 1, 3, -1, 0, b"k")
    reader = _shm.Ring(mem)
    with pytest.raises(TypeError, match="no writer"):
        reader.put(b"x", None, SEC, 0, 0)


def test_recover_never_touches_a_committed_record():
    # Recovery of real dead writers is exercised with fault injection in
    # tests/bus/test_crash.py; here: it leaves READY records alone.
    ring, _ = make_ring()
    ring.put(b"first", None, SEC, 0, 0)
    pos = ring.head_state()[0]
    assert ring.recover(pos, 0) is True
    assert ring.recover(pos, 1024) is True
    assert ring.get()[1] == b"first"
    assert ring.stats()["recovered"] == 0


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("put"), st.integers(0, 3000), st.binary(max_size=8)),
            st.tuples(st.just("get"), st.integers(1, 5), st.just(b"")),
        ),
        max_size=400,
    ),
    size_log=st.integers(12, 15),
)
def test_ring_behaves_like_a_bounded_fifo(ops, size_log):
    """Any interleaving of puts and gets matches a reference model: no loss,
    no duplicate, no reordering, no torn record, and a put is refused exactly
    when its record (plus wrap padding) does not fit in the free bytes."""
    size = 1 << size_log
    ring, _ = make_ring(size=size)
    model = []  # (body, meta, crc, record_start)
    tail = 0
    seq = 0
    for op, n, meta in ops:
        if op == "put":
            n = min(n, size // 2 - HDR - len(meta) - 4)
            body = seq.to_bytes(4, "little") + bytes([seq % 256]) * n
            need = record_size(len(body) + len(meta))
            to_end = size - tail % size
            pad = to_end if to_end < need else 0
            # Free space ends at the oldest unread record: wrap padding in
            # front of it is reclaimed by a put that needs the room.
            oldest = model[0][3] if model else tail
            fits = tail + pad + need - oldest <= size
            status = ring.put(body, meta or None, SEC, 0, 0)
            assert status == (_shm.PUT_OK if fits else _shm.PUT_NOSPACE)
            if fits:
                model.append((body, meta, zlib.crc32(body), tail + pad))
                tail += pad + need
                seq += 1
        else:
            for _ in range(n):
                rec = ring.get()
                if not model:
                    assert rec is None
                    break
                body, meta, crc, _start = model.pop(0)
                assert rec[1] == body and zlib.crc32(rec[1]) == crc
                assert rec[2] == (meta or None)
    drained = []
    while (rec := ring.get()) is not None:
        drained.append(rec[1])
    assert drained == [m[0] for m in model]
    assert ring.pending == 0


@pytest.mark.parametrize("size_log", [12, 16])
def test_every_record_size_up_to_the_limit(size_log):
    size = 1 << size_log
    ring, _ = make_ring(size=size)
    limit = size // 2 - HDR
    for n in list(range(0, 200)) + list(range(limit - 64, limit + 1)):
        body = os.urandom(n)
        assert ring.put(body, None, SEC, 0, 0) == _shm.PUT_OK, n
        assert ring.get()[1] == body
    assert ring.put(b"x" * (limit + 1), None, SEC, 0, 0) == _shm.PUT_TOO_BIG
