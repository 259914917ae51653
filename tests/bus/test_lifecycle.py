"""Process lifetimes on one prefix: generations of processes start, end
(cleanly, by SIGTERM, by SIGKILL of all or some) and start again on the same
bus, and every send and group send still reaches every live member exactly
once.  Real processes, fork and spawn; the long-lived sender is this test
process, so its caches (rings, wake FIFOs, group lists) live through every
generation, as a web server's would."""

import asyncio
import collections
import multiprocessing
import os
import signal
import time

import pytest

from shmchannels import bus as bus_mod
from shmchannels.bus import segments
from shmchannels.layers import SharedMemoryChannelLayer

CHANNELS_PER_MEMBER = 5
ROUNDS = 5
ENDINGS = ["clean", "sigterm", "sigkill-all", "sigkill-some"]


def member(prefix, group, report):
    """Mint channels, join ``group`` and the bus-wide group ``all``, report
    them, then report every message received until told to exit."""

    async def main():
        layer = SharedMemoryChannelLayer(prefix=prefix)
        control = await layer.new_channel("control")
        chans = [await layer.new_channel() for _ in range(CHANNELS_PER_MEMBER)]
        for c in chans:
            await layer.group_add(group, c)
            await layer.group_add("all", c)
        report.send((os.getpid(), control, chans))

        async def listen(c):
            while True:
                msg = await layer.receive(c)
                report.send((c, msg["k"]))

        tasks = [asyncio.ensure_future(listen(c)) for c in chans]
        await layer.receive(control)  # {"cmd": "exit"}
        for t in tasks:
            t.cancel()

    asyncio.run(main())
    report.send("bye")


def smash(db_path):
    """Overwrite a database and its WAL with garbage, in place (same sizes)."""
    for suffix in ("", "-wal"):
        size = os.path.getsize(db_path + suffix)
        with open(db_path + suffix, "r+b") as f:
            f.write(b"garbage!" * (size // 8 + 1))


class Member:
    def __init__(self, ctx, prefix, group):
        self.group = group
        self.report, child_end = ctx.Pipe(duplex=False)
        self.proc = ctx.Process(target=member, args=(prefix, group, child_end))
        self.proc.start()
        child_end.close()
        if not self.report.poll(30):
            raise AssertionError(f"member {self.proc.pid} did not start (exit code {self.proc.exitcode})")
        self.pid, self.control, self.channels = self.report.recv()
        self.received = collections.Counter()

    def drain(self):
        while self.report.poll(0):
            item = self.report.recv()
            if item != "bye":
                self.received[item] += 1

    def end(self, how, layer):
        if how == "clean":
            asyncio.run(layer.send(self.control, {"cmd": "exit"}))
            self.proc.join(10)
            assert self.proc.exitcode == 0, f"clean exit gave {self.proc.exitcode}"
        else:
            os.kill(self.proc.pid, signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
            self.proc.join(10)
            assert self.proc.exitcode is not None
        self.report.close()


def owned_rings_and_fifos(prefix):
    stem = segments.bus_stem(prefix)
    owners = {m.group(1)[:3] for _, _, m in segments.files_of_kind(stem, "owned")}
    fifos = {m.group(1) for _, _, m in segments.files_of_kind(stem, "fifo")}
    return owners, fifos


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_every_live_member_gets_every_message_across_generations(prefix, start_method, ending):
    ctx = multiprocessing.get_context(start_method)
    layer = SharedMemoryChannelLayer(prefix=prefix)  # the long-lived sender
    survivors = []
    for rnd in range(ROUNDS):
        group = f"round{rnd}"
        new = [Member(ctx, prefix, group) for _ in range(2)]
        live = survivors + new
        bus = layer.core.bus
        # Whatever the previous generation left was reclaimed by the attaches
        # of this one: rings and FIFOs belong to live slots only.
        live_slots = {f"{s:03x}" for s in bus.live_slots()}
        owners, fifos = owned_rings_and_fifos(prefix)
        assert owners <= live_slots, f"round {rnd}: rings of dead processes left: {owners - live_slots}"
        assert fifos <= live_slots, f"round {rnd}: FIFOs of dead processes left: {fifos - live_slots}"

        expected = collections.Counter()

        async def send_all():
            for g in {m.group for m in live}:
                await layer.group_send(g, {"k": f"{rnd}:{g}"})
            await layer.group_send("all", {"k": f"{rnd}:all"})
            for m in live:
                for c in m.channels:
                    await layer.send(c, {"k": f"{rnd}:direct"})

        asyncio.run(send_all())
        for m in live:
            for c in m.channels:
                for k in (f"{rnd}:{m.group}", f"{rnd}:all", f"{rnd}:direct"):
                    expected[c, k] += 1
        deadline = time.monotonic() + 15
        got = collections.Counter()
        while time.monotonic() < deadline:
            for m in live:
                m.drain()
            got = sum((m.received for m in live), collections.Counter())
            if sum(got[k] for k in expected) >= sum(expected.values()):
                break
            time.sleep(0.02)
        time.sleep(0.1)  # a duplicate would arrive right behind
        for m in live:
            m.drain()
        got = collections.Counter({k: v for m in live for k, v in m.received.items() if k[1].startswith(f"{rnd}:")})
        missing = expected - got
        extra = got - expected
        assert not missing, f"round {rnd} ({ending}, {start_method}): {sum(missing.values())} lost, e.g. {list(missing)[:3]}"
        assert not extra, f"round {rnd} ({ending}, {start_method}): duplicated or misrouted {list(extra)[:3]}"

        if ending == "sigkill-some":
            new[0].end("sigkill", layer)
            survivors.append(new[1])
        else:
            for m in new:
                m.end(ending.replace("-all", ""), layer)
    for m in survivors:
        m.end("clean", layer)


def _kill_during_group_add(prefix, go):
    async def main():
        layer = SharedMemoryChannelLayer(prefix=prefix)
        chans = [await layer.new_channel() for _ in range(50)]
        go.set()
        i = 0
        while True:
            await layer.group_add(f"churn{i % 7}", chans[i % 50])
            i += 1

    asyncio.run(main())


def _join_and_receive(prefix, group, out):
    async def main():
        layer = SharedMemoryChannelLayer(prefix=prefix)
        chans = [await layer.new_channel() for _ in range(10)]
        for c in chans:
            await layer.group_add(group, c)
        out.put("ready")
        got = await asyncio.wait_for(asyncio.gather(*[layer.receive(c) for c in chans]), 20)
        out.put(len(got))

    asyncio.run(main())


@pytest.mark.timeout(240)
def test_sigkill_during_group_add_never_damages_the_registry(prefix):
    """20 spawn-started processes killed at random instants inside
    group_add: each next generation joins a group and receives its message,
    and the dead ones' memberships are gone."""
    ctx = multiprocessing.get_context("spawn")
    layer = SharedMemoryChannelLayer(prefix=prefix)
    rng = __import__("random").Random(7)
    for rnd in range(20):
        go = ctx.Event()
        victim = ctx.Process(target=_kill_during_group_add, args=(prefix, go))
        victim.start()
        assert go.wait(30)
        time.sleep(rng.uniform(0, 0.05))
        victim.kill()
        victim.join(10)
        out = ctx.Queue()
        member_proc = ctx.Process(target=_join_and_receive, args=(prefix, f"live{rnd}", out))
        member_proc.start()
        assert out.get(timeout=30) == "ready"
        asyncio.run(layer.group_send(f"live{rnd}", {"n": rnd}))
        assert out.get(timeout=30) == 10, f"round {rnd}: not every member received the group message"
        member_proc.join(10)
        assert member_proc.exitcode == 0
        counts = layer.core.bus.registry.counts()
        assert not any(g.startswith("churn") for g in counts), f"round {rnd}: dead owner's memberships left: {counts}"


def test_a_damaged_registry_is_rebuilt_and_live_processes_restore_their_memberships(prefix, caplog):
    ctx = multiprocessing.get_context("fork")
    layer = SharedMemoryChannelLayer(prefix=prefix)
    asyncio.run(layer.group_add("g", "named.channel"))
    m = Member(ctx, prefix, "room")
    try:
        bus = layer.core.bus
        path = segments.path(segments.registry_name(bus.stem, bus.control.registry_epoch))
        smash(path)
        with caplog.at_level("ERROR", logger="shmchannels.registry"):
            asyncio.run(layer.group_add("g", "other.channel"))
        assert any("damaged" in r.getMessage() and "rebuilt" in r.getMessage() for r in caplog.records)
        assert bus.control.registry_epoch == 1
        assert not os.path.exists(path), "the damaged file was left behind"
        # This process restored what it wrote itself ...
        assert set(asyncio.run(_channels(layer, "g"))) == {"named.channel", "other.channel"}
        # ... and the member restores its own at its next registry call.
        asyncio.run(layer.send(m.control, {"cmd": "exit"}))
        m.proc.join(10)
        for c in ("named.channel", "other.channel"):
            asyncio.run(layer.group_discard("g", c))
    finally:
        if m.proc.is_alive():
            m.proc.kill()
            m.proc.join()


async def _channels(layer, group):
    return layer.core.group_channels(group)


def test_a_member_restores_its_memberships_after_a_rebuild(prefix):
    """A rebuilt registry that salvaged nothing is refilled by the live
    process that wrote the rows, at its next registry call."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()

    def writer(conn):
        layer = SharedMemoryChannelLayer(prefix=prefix)
        for i in range(3):
            asyncio.run(layer.group_add("kept", f"named.c{i}"))
        conn.send("added")
        conn.recv()  # the registry is damaged and rebuilt meanwhile
        asyncio.run(layer.group_add("other", "named.x"))  # any registry call restores
        conn.send("done")
        conn.recv()

    proc = ctx.Process(target=writer, args=(child,))
    proc.start()
    try:
        assert parent.poll(20) and parent.recv() == "added"
        layer = SharedMemoryChannelLayer(prefix=prefix)
        bus = layer.core.bus
        path = segments.path(segments.registry_name(bus.stem, bus.control.registry_epoch))
        smash(path)
        assert layer.core.group_channels("kept") == []  # rebuilt, nothing readable
        parent.send("go")
        assert parent.poll(20) and parent.recv() == "done"
        assert sorted(layer.core.group_channels("kept")) == ["named.c0", "named.c1", "named.c2"]
        parent.send("exit")
        proc.join(10)
        assert proc.exitcode == 0
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()
    for g in ("kept", "other"):
        for c in layer.core.group_channels(g):
            layer.core.group_discard(g, c)


def test_expired_messages_are_purged_without_a_reader_and_never_reported_pending(prefix):
    layer = SharedMemoryChannelLayer(prefix=prefix, expiry=0.2)
    asyncio.run(layer.send("nobody.reads", {"n": 1}))
    bus = layer.core.bus
    assert bus.pending_total() == 1
    time.sleep(0.3)
    assert bus.pending_total() == 0
    (ring,) = [r for r in bus.status()["rings"] if r["key"] == "nobody.reads"]
    assert ring["pending"] == 0 and ring["expired"] == 1


def _send_then_exit(prefix, expiry):
    layer = SharedMemoryChannelLayer(prefix=prefix, expiry=expiry)
    asyncio.run(layer.send("later", {"n": 1}))


def test_a_bus_kept_only_by_expired_messages_is_removed(prefix):
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_send_then_exit, args=(prefix, 0.3))
    p.start()
    p.join(10)
    stem = segments.bus_stem(prefix)
    assert segments.bus_files(stem), "an unexpired message must keep the bus"
    time.sleep(0.4)
    from shmchannels.bus import gc

    # Any other process's first attach on this host may collect it first;
    # either way the expired message must not keep it.
    reports = [r for r in gc.collect(bus_mod.Bus, dry_run=False) if r.prefix == prefix]
    assert all(r.removed for r in reports), reports
    assert segments.bus_files(stem) == []


def _mint_single_reader_and_die(prefix, conn):
    from shmchannels import ChannelLayer

    conn.send(ChannelLayer(prefix=prefix).new_channel("answers?"))
    conn.recv()  # its message is sent; it dies without reading
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_single_reader_channel_of_a_dead_minter_does_not_keep_the_bus(prefix, start_method):
    """Only its minter reads a ``new_channel('x?')``: once it is SIGKILLed,
    what waits there is dropped with it, and the last process to leave
    removes the bus (a protocol server killed with a worker's reply unread
    left every file of the bus behind a serve that another program shared)."""
    from shmchannels import ChannelLayer

    ctx = multiprocessing.get_context(start_method)
    here, there = ctx.Pipe()
    p = ctx.Process(target=_mint_single_reader_and_die, args=(prefix, there))
    p.start()
    channel = here.recv()
    layer = ChannelLayer(prefix=prefix)
    layer.send(channel, {"reply": 1})
    here.send("die")
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    bus = layer.core.bus
    bus.recovery.reclaim_dead()
    assert bus.pending_total() == 0
    assert bus.status()["rings"] == [] or all(r["key"] != channel for r in bus.status()["rings"])
    bus.detach()
    assert segments.bus_files(segments.bus_stem(prefix)) == []


def _attach_and_die(prefix):
    layer = SharedMemoryChannelLayer(prefix=prefix)
    asyncio.run(layer.new_channel())
    asyncio.run(layer.group_add("g", "named.kept.until.expiry"))
    asyncio.run(layer.group_discard("g", "named.kept.until.expiry"))
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_dead_bus_is_removed_by_the_next_attach_to_any_prefix(prefix):
    dead = prefix + "dead"
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=_attach_and_die, args=(dead,))
    p.start()
    p.join(10)
    assert p.exitcode == -signal.SIGKILL
    stem = segments.bus_stem(dead)
    assert segments.bus_files(stem)
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", f"from shmchannels import bus; bus.attach({prefix!r})"], check=True)
    assert segments.bus_files(stem) == [], "the dead bus was not collected"


def test_cli_processes_leave_no_fifo(prefix):
    import subprocess
    import sys

    layer = SharedMemoryChannelLayer(prefix=prefix)
    bus = layer.core.bus
    for _ in range(3):
        subprocess.run([sys.executable, "-m", "shmchannels", "send", "--prefix", prefix, "somewhere", "{}"],
                       check=True, capture_output=True)
    _, fifos = owned_rings_and_fifos(prefix)
    assert fifos == {f"{bus.slot:03x}"}
    asyncio.run(layer.receive("somewhere"))
    asyncio.run(layer.receive("somewhere"))
    asyncio.run(layer.receive("somewhere"))


def test_destroy_leaves_a_bus_that_another_live_process_uses(prefix):
    ctx = multiprocessing.get_context("fork")
    layer = SharedMemoryChannelLayer(prefix=prefix)
    m = Member(ctx, prefix, "room")
    try:
        bus = layer.core.bus
        assert bus.destroy() is False
        assert not bus.usable
        assert segments.bus_files(bus.stem), "destroy removed a bus in use"
        # the member still works on it
        other = SharedMemoryChannelLayer(prefix=prefix)
        asyncio.run(other.send(m.channels[0], {"k": "after"}))
        deadline = time.monotonic() + 5
        while not m.received and time.monotonic() < deadline:
            m.drain()
            time.sleep(0.01)
        assert m.received == {(m.channels[0], "after"): 1}
        m.end("clean", other)
    finally:
        if m.proc.is_alive():
            m.proc.kill()
            m.proc.join()
    bus_mod.detach_all()


def test_a_group_send_reclaims_dead_members_within_half_a_second(prefix):
    """Nobody attaches after the kill: the sender's next group send (past
    OWNER_CHECK_NS) finds the dead owner and reclaims its slot, rings, FIFO
    and memberships."""
    ctx = multiprocessing.get_context("fork")
    layer = SharedMemoryChannelLayer(prefix=prefix)
    live, dead = Member(ctx, prefix, "room"), Member(ctx, prefix, "room")
    try:
        asyncio.run(layer.group_send("room", {"k": "before"}))
        dead.end("sigkill", layer)
        killed = time.monotonic()
        while time.monotonic() - killed < 0.5:
            asyncio.run(layer.group_send("room", {"k": "after"}))
            if set(layer.core.group_channels("room")) == set(live.channels):
                break
            time.sleep(0.02)
        assert set(layer.core.group_channels("room")) == set(live.channels), "dead members still in the group"
        owners, fifos = owned_rings_and_fifos(prefix)
        live_slots = {f"{s:03x}" for s in layer.core.bus.live_slots()}
        assert owners <= live_slots and fifos <= live_slots, "the dead process's rings or FIFO are left"
        live.end("clean", layer)
    finally:
        for m in (live, dead):
            if m.proc.is_alive():
                m.proc.kill()
                m.proc.join()


def test_an_idle_member_restores_its_memberships_within_a_park_timeout(prefix):
    """The member only waits in receive(): its hub's watchdog notices the new
    registry epoch and puts back what it wrote."""
    ctx = multiprocessing.get_context("fork")
    layer = SharedMemoryChannelLayer(prefix=prefix)
    m = Member(ctx, prefix, "room")
    try:
        bus = layer.core.bus
        smash(segments.path(segments.registry_name(bus.stem, bus.control.registry_epoch)))
        assert layer.core.group_channels("room") == []  # rebuilt; nothing was readable
        deadline = time.monotonic() + 5
        while set(layer.core.group_channels("room")) != set(m.channels) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(layer.core.group_channels("room")) == set(m.channels)
        asyncio.run(layer.group_send("room", {"k": "restored"}))
        deadline = time.monotonic() + 5
        while sum(m.received.values()) < len(m.channels) and time.monotonic() < deadline:
            m.drain()
            time.sleep(0.01)
        assert m.received == {(c, "restored"): 1 for c in m.channels}
        m.end("clean", layer)
    finally:
        if m.proc.is_alive():
            m.proc.kill()
            m.proc.join()


def deleted_segments(prefix):
    """Inodes of unlinked bus files that this process still maps or holds open
    (by inode: a ring is mapped under its temporary name before it is
    published, so names alone would mislead)."""
    stem = segments.bus_stem(prefix)
    live = {os.stat(p).st_ino for p in segments.bus_files(stem)}
    held = {}
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and stem in fields[5]:
                held[int(fields[4])] = fields[5]
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            if stem in target:
                held[os.fstat(int(fd)).st_ino] = target
        except OSError:
            continue
    return {name for ino, name in held.items() if ino not in live}


@pytest.mark.parametrize("trigger", ["group_send", "direct sends", "parked receiver"])
def test_a_long_lived_process_lets_go_of_dead_processes_segments(prefix, trigger):
    """Generations of members die and are reclaimed by others: the sender,
    which sent to all of them and woke them, ends up holding no mapping and no
    descriptor of their unlinked rings and FIFOs (else its memory and fds grow
    with every restart)."""
    ctx = multiprocessing.get_context("fork")
    layer = SharedMemoryChannelLayer(prefix=prefix, capacity=10_000)
    for rnd in range(3):
        m = Member(ctx, prefix, "room")
        asyncio.run(layer.group_send("room", {"k": "x"}))
        for c in m.channels:
            asyncio.run(layer.send(c, {"k": "y"}))
        m.end("sigkill", layer)
    Member(ctx, prefix, "room").end("clean", layer)  # its attach reclaimed the dead
    assert deleted_segments(prefix), "the test did not make this process hold dead segments"
    if trigger == "group_send":
        time.sleep(0.25)
        asyncio.run(layer.group_send("room", {"k": "z"}))
    elif trigger == "direct sends":
        for i in range(1024):
            asyncio.run(layer.send("somewhere", {"i": i}))
        layer.core.bus.flush()
    else:
        async def park():
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(layer.receive("nothing.comes"), layer.core.park_timeout + 0.5)
        asyncio.run(park())
    import gc as pygc

    pygc.collect()
    assert deleted_segments(prefix) == set()


def _attach_then_exec(prefix, report):
    layer = SharedMemoryChannelLayer(prefix=prefix)
    chan = asyncio.run(layer.new_channel())
    asyncio.run(layer.group_add("room", chan))
    report.send(chan)
    os.execv("/bin/sleep", ["sleep", "30"])


def test_a_process_that_execs_is_reclaimed_like_a_dead_one(prefix):
    """exec() closes the bus descriptors (all O_CLOEXEC), so the kernel drops
    the slot lock: the new program is no member, and the bus reclaims it
    while the pid lives on."""
    ctx = multiprocessing.get_context("fork")
    layer = SharedMemoryChannelLayer(prefix=prefix)
    layer.core.bus  # attached before the child exists: an attach after its exec would reclaim it at once
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_attach_then_exec, args=(prefix, child))
    proc.start()
    try:
        assert parent.poll(20)
        chan = parent.recv()
        assert layer.core.group_channels("room") == [chan]
        deadline = time.monotonic() + 5
        while layer.core.group_channels("room") and time.monotonic() < deadline:
            time.sleep(0.25)
            asyncio.run(layer.group_send("room", {"k": "x"}))
        assert proc.is_alive(), "the exec'd program should still run"
        assert layer.core.group_channels("room") == []
        owners, fifos = owned_rings_and_fifos(prefix)
        live = {f"{s:03x}" for s in layer.core.bus.live_slots()}
        assert owners <= live and fifos <= live
    finally:
        proc.kill()
        proc.join()
