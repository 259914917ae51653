"""shmchannels.bus.rings.RingTable and shmchannels.bus.wake.WakeFifos on a
real bus: what one process keeps of the bus's rings and wake FIFOs, and how
it lets go of a dead process's."""

import multiprocessing
import os
import signal

import pytest

from shmchannels import names
from shmchannels.bus import Bus, segments, wake

CTX = multiprocessing.get_context("fork")


@pytest.fixture
def bus(small_bus):
    return small_bus


def mint(bus, namespace="specific."):
    return namespace + names.new_client_prefix(bus.slot, bus.gen) + "!"


def _owner_child(prefix, keys, ready, release):
    b = Bus(prefix, ring_size=1 << 16, collect_dead=False)
    key = "specific." + names.new_client_prefix(b.slot, b.gen) + "!"
    b.rings.owned(key)
    keys.put((key, b.slot, b.gen))
    ready.set()
    release.wait(30)


@pytest.fixture
def dead_owner(prefix, bus):
    """(key, slot, gen) of a ``prefix!`` ring whose owner was SIGKILLed; the
    ring is cached in ``bus`` from before the death."""
    keys, ready, release = CTX.Queue(), CTX.Event(), CTX.Event()
    p = CTX.Process(target=_owner_child, args=(prefix, keys, ready, release))
    p.start()
    assert ready.wait(30)
    key, slot, gen = keys.get(timeout=10)
    assert bus.rings.get(key) is not None
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    return key, slot, gen


def test_an_unowned_ring_is_created_once_and_its_handle_cached(bus):
    ring = bus.rings.get("jobs")
    assert ring.key == "jobs" and ring.owner is None
    assert bus.rings.get("jobs") is ring
    assert os.path.exists(segments.path(segments.file_name(bus.stem, f"r{segments.ring_hash('jobs')}")))
    bus.rings.forget("jobs")
    again = bus.rings.get("jobs")
    assert again is not ring and again.key == "jobs"  # the same file, opened afresh


def test_an_owned_ring_is_this_process_s_and_named_by_its_owner(bus):
    key = mint(bus)
    ring = bus.rings.owned(key)
    assert bus.rings.owns(key) and bus.rings.get(key) is ring and bus.rings.owned(key) is ring
    assert ring.owner == (bus.slot, bus.gen & names.GEN_MASK)
    suffix = f"o{bus.owner_tag}.{segments.ring_hash(key)}"
    assert os.path.exists(segments.path(segments.file_name(bus.stem, suffix)))


def test_a_ring_minted_by_no_live_process_is_none(bus):
    free = next(i for i in range(bus.control.nslots) if not bus.is_alive(i))
    assert bus.rings.get("specific." + names.new_client_prefix(free, 7) + "!") is None


def test_handles_of_a_dead_owner_s_rings_are_dropped_and_its_files_reclaimed(bus, dead_owner):
    key, slot, gen = dead_owner
    assert bus.rings.drop_dead_owners() is True
    assert bus.rings.drop_dead_owners() is False  # nothing left to drop
    assert bus.recovery.reclaim_dead() == 1
    assert bus.rings.get(key) is None  # unlinked: sends to it are dropped
    assert not os.path.exists(segments.path(wake.fifo_name(bus.stem, slot)))


def test_maintain_drops_dead_handles_once_another_process_reclaimed(bus, dead_owner):
    key, _slot, _gen = dead_owner
    bus.recovery.maintain()  # catch up with reclaims so far
    assert bus.rings.get(key) is not None  # still cached: nobody reclaimed since
    assert bus.recovery.maintain() is False  # one shared-memory load, nothing done
    bus.control.bump_reclaims()  # what another process's reclaim of the owner does
    assert bus.recovery.maintain() is True  # ... and this process lets go of the handle
    assert bus.rings.drop_dead_owners() is False
    bus.recovery.reclaim_dead()


def test_wake_writes_one_byte_to_each_parked_slot(bus):
    ring = bus.rings.get("jobs")
    ring.fifo_add(bus.slot)
    bus.wakeups.drain()
    bus.wakeups.wake(ring)
    assert os.read(bus.wakeups.fd, 16) == b"\0"
    for _ in range(100_000):  # a full FIFO already holds a wake-up: never an error
        bus.wakeups.wake(ring)
    bus.wakeups.drain()
    with pytest.raises(BlockingIOError):
        os.read(bus.wakeups.fd, 1)
    ring.fifo_remove(bus.slot)


def test_a_slot_without_a_fifo_is_taken_off_the_ring(bus):
    ring = bus.rings.get("jobs")
    free = next(i for i in range(bus.control.nslots) if not bus.is_alive(i))
    ring.fifo_add(free)
    bus.wakeups.wake(ring)
    assert free not in ring.fifo_slots()
