"""shmchannels.wakeup.Hub on a real bus: parking asyncio receivers on the
process's wake FIFO, dispatch to exactly the waiters whose channel or ring
has data, hand-over of process-specific messages, cancellation, the
watchdog, and event loops in several threads."""

import asyncio
import threading

import pytest

from shmchannels import bus as bus_mod, names
from shmchannels.engine.local import local_for
from shmchannels.bus import _shm

SECOND = 1_000_000_000
FLAGS = 1


@pytest.fixture
def bus(small_bus):
    return small_bus


@pytest.fixture
def hub(bus):
    return local_for(bus).hub


@pytest.fixture
def key(bus):
    key = "websocket.send." + names.new_client_prefix(bus.slot, bus.gen) + "!"
    local_for(bus).demux.register(key, lambda c: 100)
    return key


@pytest.fixture
def ring(bus, key):
    return bus.rings.owned(key)


def put(ring, meta, body, expiry_ns=60 * SECOND):
    if isinstance(meta, (list, tuple)):
        meta = "\n".join(meta)
    status = ring.put(body, None if meta is None else meta.encode("utf-8"), expiry_ns, 1000, FLAGS)
    assert status in (bus_mod.PUT_OK, bus_mod.PUT_WAKE), status
    return status


def send(bus, ring, meta, body):
    """A producer's send: a put, then a wake-up of the processes parked on the ring."""
    if put(ring, meta, body) == bus_mod.PUT_WAKE:
        bus.wakeups.wake(ring)


async def settle():
    for _ in range(3):
        await asyncio.sleep(0)


# ------------------------------------------------------------ park, unpark


async def test_park_registers_the_slot_bit_and_unpark_removes_it(bus, hub):
    ring = bus.rings.get("jobs")
    fut, token = hub.park(ring, "jobs")
    assert ring.fifo_slots() == [bus.slot] and ring.fifo_waiters
    assert hub.waiters[ring] == {None: [token[2]]}
    assert asyncio.get_running_loop() in hub.loops
    fut2, token2 = hub.park(ring, "jobs")
    assert len(hub.waiters[ring][None]) == 2
    hub.unpark(token)
    assert ring.fifo_slots() == [bus.slot]  # one waiter is still there
    hub.unpark(token2)
    assert ring.fifo_slots() == [] and ring not in hub.waiters and ring not in hub.keys
    hub.unpark(token2)  # twice is harmless
    assert not fut.done() and not fut2.done()


async def test_a_put_to_a_ring_with_parked_waiters_asks_for_a_wake_up(bus, hub):
    ring = bus.rings.get("jobs")
    assert put(ring, None, b"x") == bus_mod.PUT_OK
    fut, token = hub.park(ring, "jobs")
    assert put(ring, None, b"y") == bus_mod.PUT_WAKE
    hub.unpark(token)
    assert put(ring, None, b"z") == bus_mod.PUT_OK


# ----------------------------------------------------------------- dispatch


async def test_dispatch_resolves_exactly_the_waiters_whose_ring_has_data(bus, hub):
    jobs, other = bus.rings.get("jobs"), bus.rings.get("other")
    f_jobs, t_jobs = hub.park(jobs, "jobs")
    f_jobs2, t_jobs2 = hub.park(jobs, "jobs")
    f_other, t_other = hub.park(other, "other")
    hub.dispatch()
    assert not f_jobs.done() and not f_other.done()
    put(jobs, None, b"x")
    hub.dispatch()
    assert f_jobs.result() is None and f_jobs2.result() is None  # told to look again
    assert not f_other.done()
    assert jobs.get()[1] == b"x"  # the record stays for whoever looks first
    for t in (t_jobs, t_jobs2, t_other):
        hub.unpark(t)


async def test_a_parked_specific_channel_is_handed_its_message(bus, hub, ring, key):
    f_a, t_a = hub.park(ring, key, key + "a")
    f_b, t_b = hub.park(ring, key, key + "b")
    put(ring, "a", b"for a")
    hub.dispatch()
    deadline, flags, body = f_a.result()
    assert (flags, body) == (FLAGS, b"for a") and deadline > _shm.monotonic_ns()
    assert not f_b.done()
    assert hub.waiters[ring] == {key + "b": [t_b[2]]}  # a is off the hub already
    hub.unpark(t_a)  # a no-op now
    assert hub.waiters[ring] == {key + "b": [t_b[2]]}
    assert local_for(bus).demux.buffered() == 0 and ring.pending == 0
    hub.unpark(t_b)
    assert ring.fifo_slots() == []


async def test_a_group_record_is_handed_to_every_parked_member(bus, hub, ring, key):
    parked = {local: hub.park(ring, key, key + local) for local in ("a", "b", "c")}
    put(ring, ["a", "b", "c", "d"], b"g")
    hub.dispatch()
    for local, (fut, _token) in parked.items():
        assert fut.result()[2] == b"g", local
    # every waiter was handed its message: the hub let go of the ring
    assert ring not in hub.waiters and ring.fifo_slots() == []
    assert local_for(bus).demux.pop(key + "d") == (FLAGS, b"g")  # the member nobody waited for is buffered


async def test_dispatch_takes_only_what_the_parked_channels_need(bus, hub, ring, key):
    fut, token = hub.park(ring, key, key + "a")
    put(ring, "x", b"x1")
    put(ring, "a", b"a1")
    put(ring, "a", b"a2")
    put(ring, "y", b"y1")
    hub.dispatch()
    assert fut.result()[2] == b"a1"
    assert ring.pending == 2  # a2 and y1 wait in the ring
    assert local_for(bus).demux.pop(key + "x") == (FLAGS, b"x1")
    hub.unpark(token)


async def test_a_waiter_whose_buffer_has_data_is_told_to_look(bus, hub, ring, key):
    put(ring, "a", b"buffered")
    put(ring, "w", b"w")
    assert local_for(bus).demux.take(ring, key, key + "w", b"w") == (FLAGS, b"w")
    assert local_for(bus).demux.has(key + "a")
    put(ring, "a", b"in the ring")
    fut, token = hub.park(ring, key, key + "a")
    hub.dispatch()
    assert fut.result() is None  # it takes its buffered message itself, in order
    assert ring.pending == 1
    hub.unpark(token)


async def test_waiters_of_another_loop_are_woken_thread_safely(bus, hub, ring, key):
    here = asyncio.get_running_loop()
    woken = threading.Event()
    other_loop = asyncio.new_event_loop()
    parked = {}

    def run_other():
        async def park():
            parked["token"] = hub.park(ring, key, key + "a")
            ready.set()
            await parked["token"][0]
            woken.set()
        other_loop.run_until_complete(park())

    ready = threading.Event()
    thread = threading.Thread(target=run_other)
    thread.start()
    try:
        assert await here.run_in_executor(None, ready.wait, 10)
        put(ring, "a", b"m")
        hub.dispatch()  # on this loop: the other loop's waiter is not handed the message, only woken
        assert await here.run_in_executor(None, woken.wait, 10)
        assert parked["token"][0].result() is None
        assert local_for(bus).demux.pop(key + "a") == (FLAGS, b"m")
    finally:
        thread.join(10)
        hub.unpark(parked["token"][1])
        other_loop.close()


async def test_a_flush_elsewhere_is_noticed_by_dispatch(bus, hub, ring, key):
    put(ring, "a", b"a")
    put(ring, "w", b"w")
    local_for(bus).demux.take(ring, key, key + "w", b"w")
    assert local_for(bus).demux.buffered() == 1
    bus.control.bump_flush_epoch()
    fut, token = hub.park(ring, key, key + "b")
    hub.dispatch()
    assert local_for(bus).demux.buffered() == 0 and not fut.done()
    hub.unpark(token)


# ------------------------------------------------------- the real wake path


async def test_a_send_wakes_the_parked_loop_through_the_fifo(bus, hub, ring, key):
    fut, token = hub.park(ring, key, key + "a")
    send(bus, ring, "a", b"woken")
    entry = await asyncio.wait_for(fut, 5)
    assert entry[2] == b"woken"
    hub.unpark(token)
    jobs = bus.rings.get("jobs")
    fut, token = hub.park(jobs, "jobs")
    send(bus, jobs, None, b"job")
    assert await asyncio.wait_for(fut, 5) is None
    assert jobs.get()[1] == b"job"
    hub.unpark(token)


async def test_wait_returns_at_once_when_data_is_already_there(bus, hub):
    jobs = bus.rings.get("jobs")
    put(jobs, None, b"early")  # committed before the waiter's bit was visible: woke nobody
    assert await asyncio.wait_for(hub.wait(jobs, "jobs", jobs.has_data), 5) is None
    assert hub.waiters == {} and jobs.fifo_slots() == []


async def test_wait_is_handed_a_message_sent_later(bus, hub, ring, key):
    demux = local_for(bus).demux
    task = asyncio.create_task(hub.wait(ring, key, lambda: demux.has(key + "a") or ring.has_data(), key + "a"))
    await settle()
    assert not task.done() and ring.fifo_slots() == [bus.slot]
    send(bus, ring, "a", b"later")
    entry = await asyncio.wait_for(task, 5)
    assert entry[1:] == (FLAGS, b"later")
    assert hub.waiters == {} and ring.fifo_slots() == []


# ------------------------------------------------------------- cancellation


async def test_cancellation_after_hand_over_puts_the_message_back_first(bus, hub, ring, key):
    demux = local_for(bus).demux
    ready = lambda: demux.has(key + "a") or ring.has_data()  # noqa: E731
    task = asyncio.create_task(hub.wait(ring, key, ready, key + "a"))
    other = asyncio.create_task(hub.wait(ring, key, lambda: False, key + "b"))
    await settle()
    put(ring, ["a", "b"], b"m1")
    put(ring, "a", b"m2")
    hub.dispatch()  # both are handed m1; a is cancelled before it resumes
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await other)[2] == b"m1"  # the other waiter keeps its own copy
    assert demux.take(ring, key, key + "a", b"a") == (FLAGS, b"m1")  # put back at the head ...
    assert demux.take(ring, key, key + "a", b"a") == (FLAGS, b"m2")  # ... before what followed
    assert demux.take(ring, key, key + "a", b"a") is None
    assert demux.take(ring, key, key + "b", b"b") is None  # nothing duplicated
    assert hub.waiters == {} and ring.fifo_slots() == []


async def test_cancellation_before_any_message_loses_nothing(bus, hub, ring, key):
    demux = local_for(bus).demux
    task = asyncio.create_task(hub.wait(ring, key, lambda: False, key + "a"))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hub.waiters == {} and ring.fifo_slots() == []
    put(ring, "a", b"after")
    hub.dispatch()  # nobody parked: it stays in the ring
    assert ring.pending == 1
    assert demux.take(ring, key, key + "a", b"a") == (FLAGS, b"after")


# ----------------------------------------------------------------- watchdog


async def test_the_watchdog_wakes_parked_waiters_after_the_timeout(bus, hub, ring, key):
    loop = asyncio.get_running_loop()
    jobs = bus.rings.get("jobs")
    f1, t1 = hub.park(jobs, "jobs", timeout=0.05)
    f2, t2 = hub.park(ring, key, key + "a", timeout=0.05)
    assert hub.loops[loop] is not None  # one timer per loop, not one per waiter
    timer = hub.loops[loop]
    f3, t3 = hub.park(jobs, "jobs", timeout=0.05)
    assert hub.loops[loop] is timer
    start = loop.time()
    assert await asyncio.wait_for(f1, 5) is None
    assert loop.time() - start < 2
    await settle()
    assert f2.result() is None and f3.result() is None
    assert hub.loops[loop] is None  # re-armed by the next park
    for t in (t1, t2, t3):
        hub.unpark(t)
    f4, t4 = hub.park(jobs, "jobs", timeout=0.05)
    assert hub.loops[loop] is not None
    assert await asyncio.wait_for(f4, 5) is None
    hub.unpark(t4)


async def test_a_park_without_timeout_has_no_watchdog(bus, hub):
    loop = asyncio.get_running_loop()
    jobs = bus.rings.get("jobs")
    fut, token = hub.park(jobs, "jobs")
    assert hub.loops[loop] is None
    await asyncio.sleep(0.1)
    assert not fut.done()
    hub.unpark(token)


# ------------------------------------------------------ loops in threads


def test_event_loops_in_several_threads_each_get_their_messages(bus, hub, ring, key):
    demux = local_for(bus).demux
    jobs = bus.rings.get("jobs")
    n_threads, per_thread = 4, 5
    results, errors = {}, []
    parked = threading.Barrier(n_threads + 1)

    async def receive(local):
        channel = key + local
        own = local.encode()
        ready = lambda: demux.has(channel) or ring.has_data()  # noqa: E731
        got = []
        first = True
        while len(got) < per_thread:
            msg = demux.take(ring, key, channel, own)
            if msg:
                got.append(msg[1])
                continue
            wait = hub.wait(ring, key, ready, channel, timeout=1.0)
            if first:  # park once before the sender starts
                first = False
                task = asyncio.ensure_future(wait)
                await asyncio.sleep(0)
                await asyncio.get_running_loop().run_in_executor(None, parked.wait, 10)
                handed = await task
            else:
                handed = await wait
            if handed is not None:
                got.append(handed[2])
        # and one plain ring, shared by every thread
        while True:
            rec = jobs.get()
            if rec:
                return got, rec[1]
            await hub.wait(jobs, "jobs", jobs.has_data, timeout=1.0)

    def run(local):
        try:
            results[local] = asyncio.run(asyncio.wait_for(receive(local), 20))
        except BaseException as exc:  # reported below
            errors.append((local, exc))

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(n_threads)]
    for t in threads:
        t.start()
    parked.wait(10)
    for n in range(per_thread):
        for i in range(n_threads):
            send(bus, ring, f"t{i}", b"%d-%d" % (i, n))
    for i in range(n_threads):
        send(bus, jobs, None, b"job%d" % i)
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert sorted(results) == [f"t{i}" for i in range(n_threads)]
    for i in range(n_threads):
        got, job = results[f"t{i}"]
        assert got == [b"%d-%d" % (i, n) for n in range(per_thread)]  # all, in order, no duplicates
    assert sorted(job for _got, job in results.values()) == [b"job%d" % i for i in range(n_threads)]
    assert demux.buffered() == 0 and ring.pending == 0 and jobs.pending == 0
    assert hub.waiters == {} and ring.fifo_slots() == [] and jobs.fifo_slots() == []
