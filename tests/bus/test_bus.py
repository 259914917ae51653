"""Bus life cycle: attach, detach, cleanup, slots, stale and foreign files."""

import multiprocessing
import os

import pytest

import shmchannels
from shmchannels.bus import _shm, control, segments
from shmchannels import bus as bus_mod
from shmchannels.exceptions import BusError

CTX = multiprocessing.get_context("fork")


def files(prefix):
    return [os.path.basename(p) for p in segments.bus_files(segments.bus_stem(prefix))]


def test_segments_are_private_to_the_user(prefix):
    lay = shmchannels.ChannelLayer(prefix=prefix)
    lay.send("c", {})
    lay.group_add("g", "c")  # registry files (-wal, -shm) exist too
    for name in files(prefix):
        st = os.stat(segments.path(name))
        assert st.st_uid == os.getuid()
        assert st.st_mode & 0o077 == 0, name
    lay.flush()


def test_last_process_out_removes_every_file(prefix):
    lay = shmchannels.ChannelLayer(prefix=prefix)
    lay.send("c", {"x": 1})
    lay.receive(["c"])
    lay.group_add("g", "c")
    lay.group_discard("g", "c")
    assert files(prefix)
    lay.core.bus.detach()
    assert files(prefix) == []


def test_pending_messages_keep_the_bus_for_a_later_reader(prefix):
    def script():
        shmchannels.ChannelLayer(prefix=prefix).send("jobs", {"job": 1})

    p = CTX.Process(target=script)
    p.start()
    p.join(30)
    assert p.exitcode == 0
    assert files(prefix), "the message a script sent vanished with the script"
    lay = shmchannels.ChannelLayer(prefix=prefix)
    assert lay.receive(["jobs"]) == ("jobs", {"job": 1})
    lay.core.bus.detach()
    assert files(prefix) == []


def test_slots_run_out_with_a_clear_error(prefix):
    lay = shmchannels.ChannelLayer(prefix=prefix, slots=1)
    lay.send("c", {})
    q = CTX.Queue()

    def second():
        try:
            shmchannels.ChannelLayer(prefix=prefix).send("c", {})
            q.put("attached")
        except BusError as exc:
            q.put(str(exc))

    p = CTX.Process(target=second)
    p.start()
    p.join(30)
    assert "slots" in q.get(timeout=5)
    lay.flush()


def test_an_incompatible_bus_left_by_dead_processes_is_replaced(prefix):
    stem = segments.bus_stem(prefix)
    mapping, _ = segments.create_published(stem, "ctl", control.segment_size(4), lambda m: None)
    mem = _shm.Mem(mapping)
    mem.store(control.H_VERSION, 99 | (4 << 32))
    mem.store(control.H_MAGIC, control.MAGIC)
    lay = shmchannels.ChannelLayer(prefix=prefix)
    lay.send("c", {"ok": 1})
    assert lay.receive(["c"]) == ("c", {"ok": 1})
    assert lay.core.bus.control.nslots == bus_mod.DEFAULT_SLOTS


def test_an_incompatible_bus_in_use_is_refused(prefix):
    stem = segments.bus_stem(prefix)
    mapping, _ = segments.create_published(stem, "ctl", control.segment_size(4), lambda m: None)
    mem = _shm.Mem(mapping)
    mem.store(control.H_VERSION, 99 | (4 << 32))
    mem.store(control.H_MAGIC, control.MAGIC)
    fd = segments.open_lock_file(stem)
    control.Liveness(fd).try_hold(0)  # somebody holds slot 0 of that bus
    q = CTX.Queue()

    def attach():
        try:
            shmchannels.ChannelLayer(prefix=prefix).send("c", {})
            q.put("attached")
        except BusError as exc:
            q.put(str(exc))

    p = CTX.Process(target=attach)
    p.start()
    p.join(30)
    assert "incompatible" in q.get(timeout=5)
    os.close(fd)
    for name in files(prefix):
        segments.unlink(name)


def test_invalid_prefix_and_sizes_are_rejected():
    for bad in ("", "has space", "a@b", ".dot", "x" * 65):
        with pytest.raises(TypeError, match="prefix"):
            shmchannels.ChannelLayer(prefix=bad)
    with pytest.raises(ValueError, match="power of two"):
        bus_mod.Bus("fine", ring_size=3 << 20)


def test_forked_child_never_writes_under_the_parent_identity(prefix):
    lay = shmchannels.ChannelLayer(prefix=prefix)
    lay.send("c", {})
    ring = lay.core.bus.rings.get("c")
    q = CTX.Queue()

    def child():
        q.put(ring.put(b"x", None, 10**9, 0, 1))

    p = CTX.Process(target=child)
    p.start()
    p.join(30)
    assert q.get(timeout=5) == _shm.PUT_FORKED
    lay.flush()
