"""A process stopped (SIGSTOP, a debugger) while it holds the group
registry's write lock freezes no event loop.

The async layer's group_add/group_discard try the write for a few ms on the
loop and, while the lock stays held, finish it on a thread of their own: the
awaiting coroutine waits, the loop's other tasks keep running.  Readers
(group_send's lookup) never wait for the writer at all, so sends and
receives go on at full speed meanwhile."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from shmchannels.bus import registry as registry_mod
from shmchannels.exceptions import BusError
from shmchannels.layers import SharedMemoryChannelLayer

#: the longest the loop may go without running the ticker
MAX_GAP = 0.2

_HOLDER = textwrap.dedent("""
    import os, signal, sqlite3, sys
    conn = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT OR REPLACE INTO members (grp, channel, ring, owner, added) "
                 "VALUES ('holder', 'holder.x', 'holder.x', NULL, 0)")
    print("held", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
    conn.execute("ROLLBACK")
    conn.close()
""")


class Holder:
    """A process inside an IMMEDIATE transaction on the registry, stopped by SIGSTOP."""

    def __init__(self, path):
        self.proc = subprocess.Popen([sys.executable, "-c", _HOLDER, path], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"
        deadline = time.monotonic() + 10
        while self.state() != "T":
            assert time.monotonic() < deadline, "the holder did not stop"
            time.sleep(0.005)

    def state(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]

    def release(self):
        """SIGCONT: it rolls back and exits."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.proc.wait(10)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.wait(10)
        self.proc.stdout.close()


class Ticker:
    """A task that wakes every 10 ms and records the longest gap between wake-ups."""

    def __init__(self):
        self.max_gap = 0.0
        self.ticks = 0
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self):
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now

    async def stop(self):
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass


@pytest.fixture
def layer(prefix):
    lay = SharedMemoryChannelLayer(prefix=prefix, capacity=1000)
    yield lay
    lay.core.bus.flush()  # memberships would keep the bus's files alive after the last detach


@pytest.fixture
def holder_of(layer):
    """holder_of(layer, release_after) -> a Holder of its registry's write
    lock, SIGCONTed from a thread after ``release_after`` s should the loop be
    frozen (the old code blocked it for SQLite's 30 s busy timeout); the
    timer is cancelled and the holder gone afterwards."""
    holders, timers = [], []

    def start(lay, release_after):
        holder = Holder(lay.core.bus.registry.path)
        holders.append(holder)
        timer = threading.Timer(release_after,
                                lambda: holder.proc.poll() is None and os.kill(holder.proc.pid, signal.SIGCONT))
        timer.daemon = True
        timer.start()
        timers.append(timer)
        return holder

    yield start
    for timer in timers:
        timer.cancel()
    for h in holders:
        h.kill()


@pytest.mark.parametrize("change", ["group_add", "group_discard"])
async def test_a_group_change_waits_off_the_loop_while_a_stopped_process_holds_the_lock(layer, holder_of, change):
    member = await layer.new_channel()
    if change == "group_discard":
        await layer.group_add("room", member)
    holder = holder_of(layer, 2.0)
    ticker = Ticker()
    try:
        started = time.monotonic()
        task = asyncio.ensure_future(getattr(layer, change)("room", member))
        await asyncio.sleep(0.5)
        assert ticker.max_gap < MAX_GAP, f"the event loop stood still for {ticker.max_gap * 1000:.0f} ms"
        assert not task.done(), "the write went through although another process holds the lock"
        assert ticker.ticks >= 20
        holder.release()
        await asyncio.wait_for(task, 5)
        waited = time.monotonic() - started
    finally:
        await ticker.stop()
    assert ticker.max_gap < MAX_GAP, f"the event loop stood still for {ticker.max_gap * 1000:.0f} ms"
    assert waited >= 0.5
    # the next group_send of the same task sees the change
    await layer.group_send("room", {"type": "after"})
    if change == "group_add":
        assert await asyncio.wait_for(layer.receive(member), 5) == {"type": "after"}
    else:
        assert layer.core.group_channels("room") == []


async def test_changes_queued_behind_the_lock_keep_their_order(layer, holder_of):
    """An add that waits off the loop is not overtaken by a later discard
    that would find the lock free: the discard wins, as it was issued last."""
    member = await layer.new_channel()
    holder = holder_of(layer, 2.0)
    add = asyncio.ensure_future(layer.group_add("room", member))
    await asyncio.sleep(0.1)
    holder.release()
    discard = asyncio.ensure_future(layer.group_discard("room", member))
    await asyncio.wait_for(asyncio.gather(add, discard), 5)
    assert layer.core.group_channels("room") == []


async def test_group_send_and_receive_keep_full_speed_while_the_lock_is_held(layer, holder_of):
    members = [await layer.new_channel() for _ in range(3)]
    for m in members:
        await layer.group_add("room", m)
    await layer.send("plain", {"n": -1})
    assert await layer.receive("plain") == {"n": -1}
    holder = holder_of(layer, 5.0)
    ticker = Ticker()
    reg = layer.core.bus.registry
    slowest = 0.0
    try:
        started = time.monotonic()
        for n in range(200):
            reg._cache.clear()  # read the database every time, as a process without the cache would
            t = time.monotonic()
            await layer.group_send("room", {"n": n})
            await layer.send("plain", {"n": n})
            slowest = max(slowest, time.monotonic() - t)
            for m in members:
                assert await layer.receive(m) == {"n": n}
            assert await layer.receive("plain") == {"n": n}
        elapsed = time.monotonic() - started
        assert holder.state() == "T", "the holder ran: the lock was not held throughout"
        assert layer.core.group_channels("room") == members
    finally:
        await ticker.stop()
        holder.release()
    assert slowest < 0.1, f"a group_send took {slowest * 1000:.0f} ms while another process held the write lock"
    assert elapsed < 2.0
    assert ticker.max_gap < MAX_GAP


async def test_a_lock_held_past_the_busy_timeout_is_a_bus_error_and_the_loop_ran_meanwhile(
        layer, holder_of, monkeypatch):
    monkeypatch.setattr(registry_mod, "BUSY_TIMEOUT_S", 0.5)
    member = await layer.new_channel()
    holder = holder_of(layer, 3.0)
    ticker = Ticker()
    try:
        started = time.monotonic()
        with pytest.raises(BusError, match="stayed locked by another process for 0.5 s"):
            await asyncio.wait_for(layer.group_add("room", member), 5)
        waited = time.monotonic() - started
    finally:
        await ticker.stop()
        holder.release()
    assert 0.45 <= waited < 2.0
    assert ticker.max_gap < MAX_GAP
    await layer.group_add("room", member)  # the lock is free again
    assert layer.core.group_channels("room") == [member]


def test_sync_callers_still_wait_for_the_lock(layer, holder_of):
    """The blocking path (ASGI 1 layer, the core) waits for the lock as before."""
    holder_of(layer, 0.5)
    started = time.monotonic()
    layer.core.group_add("room", "named.member")  # the holder's timer lets it go after 0.5 s
    waited = time.monotonic() - started
    assert waited >= 0.4
    assert layer.core.group_channels("room") == ["named.member"]


async def test_a_cancelled_caller_still_gets_its_change_made(layer, holder_of):
    """Once handed to the registry thread, a change happens even if the
    awaiting task is cancelled, as the blocking write always did."""
    member = await layer.new_channel()
    holder = holder_of(layer, 2.0)
    task = asyncio.ensure_future(layer.group_add("room", member))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    holder.release()
    deadline = time.monotonic() + 5
    while layer.core.group_channels("room") != [member]:
        assert time.monotonic() < deadline, "the cancelled group_add was never made"
        await asyncio.sleep(0.01)


_EXITER = textwrap.dedent("""
    import asyncio, sys
    from shmchannels.layers import SharedMemoryChannelLayer

    async def main():
        lay = SharedMemoryChannelLayer(prefix=sys.argv[1], capacity=1000)
        ch = await lay.new_channel()
        await lay.group_add("kept", ch)
        print("added", flush=True)
        sys.stdin.readline()  # the registry's lock is held by a stopped process now
        change = asyncio.ensure_future(lay.group_add("left-behind", ch))
        await asyncio.sleep(0.2)
        assert not change.done(), "the write did not wait for the stopped holder"
        print("queued", flush=True)

    asyncio.run(main())
""")


def test_a_process_exits_promptly_with_a_group_change_queued_behind_a_stopped_holder(layer, holder_of, prefix):
    """Its queued write is abandoned after a grace of EXIT_GRACE_S instead
    of holding the interpreter's exit for SQLite's 30 s busy timeout, and
    its detach gives up on the registry after a short bound (it holds the
    bus lock meanwhile, which every other attach and detach needs): the
    memberships it could not forget are dropped by the next attach's sweep."""
    child = subprocess.Popen([sys.executable, "-c", _EXITER, prefix], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "added"
        assert len(layer.core.group_channels("kept")) == 1
        holder = holder_of(layer, release_after=60)
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "queued"
        started = time.monotonic()
        assert child.wait(20) == 0
        assert time.monotonic() - started < 8  # EXIT_GRACE_S + DETACH_REGISTRY_S, against 30 s before
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdin.close()
        child.stdout.close()
    holder.release()
    assert len(layer.core.group_channels("kept")) == 1  # the child's detach could not forget it ...
    attach = [sys.executable, "-c", "import sys, shmchannels; shmchannels.ChannelLayer(prefix=sys.argv[1]).core.bus", prefix]
    subprocess.run(attach, check=True, timeout=60)
    assert layer.core.group_channels("kept") == []  # ... the next attach's sweep did
    assert layer.core.group_channels("left-behind") == []  # the abandoned write never ran


_EXIT_AFTER_QUEUEING = textwrap.dedent("""
    import asyncio, sys
    from shmchannels.layers import SharedMemoryChannelLayer

    async def main():
        lay = SharedMemoryChannelLayer(prefix=sys.argv[1], capacity=1000)
        change = asyncio.ensure_future(lay.group_add("room", "named.kept"))
        await asyncio.sleep(0.2)
        assert not change.done(), "the write did not wait for the stopped holder"
        print("queued", flush=True)
        # main() returns: asyncio.run cancels the change, the interpreter exits

    asyncio.run(main())
""")


def test_a_change_queued_at_exit_still_happens_if_the_lock_frees_within_the_grace(layer, holder_of, prefix):
    """A named channel's membership outlives the process that made it, so
    its write, once submitted, must not be dropped just because the process
    is leaving while the lock is briefly held."""
    holder = holder_of(layer, release_after=60)
    child = subprocess.Popen([sys.executable, "-c", _EXIT_AFTER_QUEUEING, prefix], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "queued"
        threading.Timer(0.3, holder.release).start()  # well within EXIT_GRACE_S
        assert child.wait(20) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdout.close()
    assert layer.core.group_channels("room") == ["named.kept"]
