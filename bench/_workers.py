"""Child-process roles of bench/layer.py.

Every role runs in its own OS process (multiprocessing, "spawn" start
method), builds its own layer object, and talks to the parent over one
``multiprocessing.Pipe`` end with tagged tuples:

    child -> parent   (tag, payload)      tag "error" carries a traceback
    parent -> child   (command, payload)

The parent never touches a layer, so it never attaches to the shared-memory
bus.  Timestamps are ``time.monotonic_ns()`` (CLOCK_MONOTONIC, system-wide on
Linux), so they can be compared across processes.

Nothing here may import matplotlib or other heavy modules: spawn re-imports
this module in every child.
"""

import asyncio
import os
import resource
import sys
import time
import traceback

#: kinds of transport
SHM, REDIS, PUBSUB, MPQ, FLOOR = "shm", "redis", "pubsub", "mpq", "floor"

TEXT_MSG = {"type": "websocket.receive", "text": "x" * 100}
BIG_MSG = {"type": "x", "bytes": b"z" * 65536}
GROUP_MSG = {"type": "chat.message", "text": "x" * 100}


def message(name):
    return {"text": TEXT_MSG, "big": BIG_MSG, "group": GROUP_MSG}[name]


def cpu_s():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def maxrss_kb():
    """Peak RSS of this process image.  Not ru_maxrss: Linux carries that
    across exec, so a spawned child would report its parent's RSS at fork."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def make_layer(cfg):
    kind = cfg["kind"]
    if kind == SHM:
        from shmchannels.layers import SharedMemoryChannelLayer

        import shmchannels

        if cfg.get("layer_path") and not shmchannels.__file__.startswith(cfg["layer_path"]):
            raise RuntimeError(f"imported {shmchannels.__file__}, not the snapshot in {cfg['layer_path']}")
        extra = {"spin_us": cfg["spin_us"]} if "spin_us" in cfg else {}
        return SharedMemoryChannelLayer(prefix=cfg["prefix"], capacity=cfg.get("capacity", 100), **extra)
    if kind == REDIS:
        from channels_redis.core import RedisChannelLayer

        return RedisChannelLayer(
            hosts=[("127.0.0.1", cfg["port"])], prefix=cfg["prefix"], capacity=cfg.get("capacity", 100)
        )
    if kind == PUBSUB:
        from channels_redis.pubsub import RedisPubSubChannelLayer

        return RedisPubSubChannelLayer(hosts=[("127.0.0.1", cfg["port"])], prefix=cfg["prefix"])
    if kind == FLOOR:
        from _floor import FloorLayer

        return FloorLayer(cfg["prefix"])
    raise ValueError(kind)


async def close_layer(layer, kind, flush=False):
    """Flush (one process per scenario does) and release connections."""
    if flush:
        await layer.flush()
    if kind == REDIS:
        await layer.close_pools()
    elif kind == PUBSUB and not flush:
        await layer.flush()  # the pubsub layer's flush only closes its own connections


# --------------------------------------------------------------------- plumbing


def child_main(conn, role, cfg, *queues):
    """Entry point of every child process."""
    if cfg.get("layer_path"):
        # The parent's snapshot of the shmchannels package (see layer.py),
        # ahead of the editable install's finder.
        sys.path.insert(0, cfg["layer_path"])
    try:
        if cfg["kind"] == MPQ:
            MPQ_ROLES[role](conn, cfg, *queues)
        elif cfg.get("uvloop"):  # the loop uvicorn runs an app on when uvloop is installed
            import uvloop

            uvloop.run(ROLES[role](conn, cfg))
        else:
            asyncio.run(ROLES[role](conn, cfg))
    except BaseException:  # report everything, including KeyboardInterrupt
        try:
            conn.send(("error", f"{role} ({cfg['kind']}) pid {os.getpid()}:\n{traceback.format_exc()}"))
        except Exception:
            pass
        sys.exit(1)


def cmd(conn, expected):
    """Block until the parent sends ``expected``; return its payload."""
    got, payload = conn.recv()
    if got != expected:
        raise RuntimeError(f"expected command {expected!r} from the parent, got {got!r}")
    return payload


async def self_probe(layer, ch):
    """Send to our own channel and read it back: proves the channel works
    (for pubsub, that the subscription is live) and warms connections."""
    await layer.send(ch, {"type": "probe"})
    got = await asyncio.wait_for(layer.receive(ch), 10)
    assert got["type"] == "probe", got


async def finish(conn, layer, kind, command=None):
    """Common tail: flush on request (one process per scenario), then exit.
    ``command``: the parent's last command, if the caller has read it already."""
    if command is None:
        command, _ = conn.recv()
    await close_layer(layer, kind, flush=command == "flush")
    if command == "flush":
        conn.send(("flushed", None))
        cmd(conn, "exit")


# ------------------------------------------------------- 1 & 4: one-to-one stream


async def tp_recv(conn, cfg):
    kind, n = cfg["kind"], cfg["n"]
    layer = make_layer(cfg)
    ch = "bench" if cfg["named"] else await layer.new_channel()
    await self_probe(layer, ch)
    conn.send(("ready", ch))
    got = await asyncio.wait_for(layer.receive(ch), 60)  # the sender's probe
    assert got["type"] == "probe", got
    conn.send(("probed", None))
    receive = layer.receive
    state = {"count": 0, "t_first": 0, "c_first": 0.0}
    expect_type = message(cfg["msg"])["type"]

    async def loop():
        m = await receive(ch)
        state["t_first"] = time.monotonic_ns()
        state["c_first"] = cpu_s()
        state["count"] = 1
        assert m["type"] == expect_type, m
        for _ in range(n - 1):
            m = await receive(ch)
            state["count"] += 1
        assert m["type"] == expect_type, m
        return m

    try:
        last = await asyncio.wait_for(loop(), cfg["timeout"])
    except asyncio.TimeoutError:
        raise RuntimeError(f"received {state['count']} of {n} messages within {cfg['timeout']} s") from None
    t_last, c_last = time.monotonic_ns(), cpu_s()
    size = len(last.get("text") or last.get("bytes") or b"")
    conn.send(("result", {"t_first": state["t_first"], "t_last": t_last, "count": state["count"],
                          "cpu": c_last - state["c_first"], "size": size, "maxrss_kb": maxrss_kb()}))
    await finish(conn, layer, kind)


async def tp_send(conn, cfg):
    kind, n = cfg["kind"], cfg["n"]
    layer = make_layer(cfg)
    msg = message(cfg["msg"])
    ch = cmd(conn, "channel")
    await layer.send(ch, {"type": "probe"})
    conn.send(("warm", None))
    cmd(conn, "go")
    from channels.exceptions import ChannelFull  # shmchannels' ChannelFull subclasses it

    send, full_exc = layer.send, ChannelFull
    backoff = cfg["backoff"]
    full = 0
    c0, t0 = cpu_s(), time.monotonic_ns()
    for _ in range(n):
        while True:
            try:
                await send(ch, msg)
                break
            except full_exc:
                # The receiver is behind: back off briefly (the event loop has
                # nothing else to do in this process, so a plain sleep is fine).
                full += 1
                time.sleep(backoff)
    t1, c1 = time.monotonic_ns(), cpu_s()
    conn.send(("result", {"t0": t0, "t1": t1, "full": full, "cpu": c1 - c0}))
    await finish(conn, layer, kind)


def tp_recv_mpq(conn, cfg, q):
    n = cfg["n"]
    conn.send(("ready", "queue"))
    got = q.get(timeout=60)
    assert got["type"] == "probe"
    conn.send(("probed", None))
    get = q.get
    expect_type = message(cfg["msg"])["type"]
    m = get(timeout=cfg["timeout"])
    t_first, c_first = time.monotonic_ns(), cpu_s()
    assert m["type"] == expect_type
    for _ in range(n - 1):
        m = get()
    t_last, c_last = time.monotonic_ns(), cpu_s()
    assert m["type"] == expect_type
    size = len(m.get("text") or m.get("bytes") or b"")
    conn.send(("result", {"t_first": t_first, "t_last": t_last, "count": n, "cpu": c_last - c_first, "size": size,
                          "maxrss_kb": maxrss_kb()}))
    conn.recv()


def tp_send_mpq(conn, cfg, q):
    n = cfg["n"]
    msg = message(cfg["msg"])
    cmd(conn, "channel")
    q.put({"type": "probe"})
    conn.send(("warm", None))
    cmd(conn, "go")
    put = q.put
    c0, t0 = cpu_s(), time.monotonic_ns()
    for _ in range(n):
        put(msg)
    t1, c1 = time.monotonic_ns(), cpu_s()
    conn.send(("result", {"t0": t0, "t1": t1, "full": 0, "cpu": c1 - c0}))
    conn.recv()
    q.close()
    q.join_thread()  # the feeder thread flushes what is still buffered


# ------------------------------------------------------------- 2: round trip


async def rt_server(conn, cfg):
    kind = cfg["kind"]
    layer = make_layer(cfg)
    # A worker-style named channel; the pubsub layer can only receive reliably
    # on a channel it has subscribed before the first send, i.e. new_channel().
    ch = await layer.new_channel() if kind == PUBSUB else "bench-rt"
    await self_probe(layer, ch)
    conn.send(("ready", ch))
    receive, send = layer.receive, layer.send
    served = 0
    while True:
        m = await receive(ch)
        if m["type"] == "stop":
            break
        await send(m["reply"], {"type": "resp", "text": m["text"]})
        served += 1
    conn.send(("result", {"served": served}))
    await finish(conn, layer, kind)


async def rt_client(conn, cfg):
    kind, m_rounds, warm = cfg["kind"], cfg["m"], cfg["warm"]
    layer = make_layer(cfg)
    reply = await layer.new_channel()
    await self_probe(layer, reply)
    conn.send(("ready", reply))
    server = cmd(conn, "server")
    req = {"type": "req", "reply": reply, "text": "x" * 100}
    send, receive = layer.send, layer.receive
    clock = time.perf_counter_ns
    lat = []

    async def loop():
        for i in range(warm + m_rounds):
            t0 = clock()
            await send(server, req)
            resp = await receive(reply)
            t1 = clock()
            if i >= warm:
                lat.append(t1 - t0)
        assert resp["type"] == "resp" and resp["text"] == req["text"], resp

    try:
        await asyncio.wait_for(loop(), cfg["timeout"])
    except asyncio.TimeoutError:
        raise RuntimeError(f"{len(lat)} of {m_rounds} round trips within {cfg['timeout']} s") from None
    await send(server, {"type": "stop"})
    conn.send(("result", {"lat_ns": lat}))
    await finish(conn, layer, kind)


def rt_server_mpq(conn, cfg, q_req, q_resp):
    conn.send(("ready", "queue"))
    get, put = q_req.get, q_resp.put
    served = 0
    while True:
        m = get()
        if m["type"] == "stop":
            break
        put({"type": "resp", "text": m["text"]})
        served += 1
    conn.send(("result", {"served": served}))
    conn.recv()
    q_resp.close()
    q_resp.join_thread()


def rt_client_mpq(conn, cfg, q_req, q_resp):
    m_rounds, warm = cfg["m"], cfg["warm"]
    conn.send(("ready", "queue"))
    cmd(conn, "server")
    req = {"type": "req", "reply": "queue", "text": "x" * 100}
    put, get = q_req.put, q_resp.get
    clock = time.perf_counter_ns
    lat = []
    for i in range(warm + m_rounds):
        t0 = clock()
        put(req)
        resp = get(timeout=cfg["timeout"])
        t1 = clock()
        if i >= warm:
            lat.append(t1 - t0)
    assert resp["type"] == "resp"
    put({"type": "stop"})
    conn.send(("result", {"lat_ns": lat}))
    conn.recv()
    q_req.close()
    q_req.join_thread()


# ------------------------------------------------------------ 3: group fan-out


async def group_add_all(layer, group, chans):
    """group_add every channel; retry (and count) the registry's transient
    'database is locked' that shmchannels raises when two processes make
    their first registry call at the same moment (reported as a layer bug)."""
    import sqlite3

    retries = 0
    for ch in chans:
        while True:
            try:
                await layer.group_add(group, ch)
                break
            except sqlite3.OperationalError:
                retries += 1
                if retries > 1000:
                    raise
                await asyncio.sleep(0.01)
    return retries


async def grp_recv(conn, cfg):
    kind, nchan, group, timeout = cfg["kind"], cfg["members"], cfg["group"], cfg["timeout"]
    layer = make_layer(cfg)
    chans = [await layer.new_channel() for _ in range(nchan)]
    retries = await group_add_all(layer, group, chans)
    conn.send(("ready", {"retries": retries}))
    receive = layer.receive
    while True:
        command, payload = conn.recv()
        if command == "arm":
            # Fresh waiters: one task per channel, each receives one message.
            stamps = []

            async def one(ch):
                m = await receive(ch)
                stamps.append(time.monotonic_ns())
                return m

            tasks = [asyncio.ensure_future(one(ch)) for ch in chans]
            await asyncio.sleep(0.05)  # every task reaches its parking point
            conn.send(("armed", None))
            try:
                msgs = await asyncio.wait_for(asyncio.gather(*tasks), timeout)
            except asyncio.TimeoutError:
                raise RuntimeError(f"{len(stamps)} of {nchan} group messages within {timeout} s") from None
            assert all(m["type"] == GROUP_MSG["type"] for m in msgs)
            conn.send(("done", {"t_first": min(stamps), "t_last": max(stamps), "count": len(stamps)}))
        elif command == "consume":
            # Channels-style consumers: one task per channel looping on
            # receive() for the whole series of ``payload`` broadcasts.
            reps = payload
            stamps = {r: [] for r in range(reps)}
            events = {r: asyncio.Event() for r in range(reps)}

            async def consumer(ch):
                while True:
                    m = await receive(ch)
                    got = stamps[m["rep"]]
                    got.append(time.monotonic_ns())
                    if len(got) == nchan:
                        events[m["rep"]].set()

            tasks = [asyncio.ensure_future(consumer(ch)) for ch in chans]
            await asyncio.sleep(0.05)
            conn.send(("armed", None))
            for r in range(reps):
                try:
                    await asyncio.wait_for(events[r].wait(), timeout)
                except asyncio.TimeoutError:
                    raise RuntimeError(f"broadcast {r}: {len(stamps[r])} of {nchan} within {timeout} s") from None
                conn.send(("done", {"t_first": min(stamps[r]), "t_last": max(stamps[r]), "count": len(stamps[r])}))
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        else:
            break
    await finish(conn, layer, kind, command)


async def grp_send(conn, cfg):
    kind, group = cfg["kind"], cfg["group"]
    layer = make_layer(cfg)
    conn.send(("ready", None))
    while True:
        command, rep = conn.recv()
        if command != "go":
            break
        msg = dict(GROUP_MSG, rep=rep)
        t0 = time.monotonic_ns()
        await layer.group_send(group, msg)
        t1 = time.monotonic_ns()
        conn.send(("sent", {"t0": t0, "t1": t1}))
    await finish(conn, layer, kind, command)


# -------------------------------------------------------------- 5: idle CPU


async def idle_recv(conn, cfg):
    kind = cfg["kind"]
    layer = make_layer(cfg)
    ch = "bench-idle" if cfg.get("named") else await layer.new_channel()
    await self_probe(layer, ch)
    await asyncio.sleep(0.5)  # past any "traffic was recent" spin window
    task = asyncio.ensure_future(layer.receive(ch))
    await asyncio.sleep(0.2)
    c0, t0 = cpu_s(), time.monotonic()
    await asyncio.sleep(cfg["secs"])
    c1, t1 = cpu_s(), time.monotonic()
    assert not task.done(), "receive() returned with no traffic"
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    conn.send(("result", {"cpu": c1 - c0, "wall": t1 - t0, "threads": len(os.listdir("/proc/self/task"))}))
    await finish(conn, layer, kind)


def idle_recv_mpq(conn, cfg, q):
    import queue

    c0, t0 = cpu_s(), time.monotonic()
    try:
        q.get(timeout=cfg["secs"])
        raise RuntimeError("got a message with no traffic")
    except queue.Empty:
        pass
    c1, t1 = cpu_s(), time.monotonic()
    conn.send(("result", {"cpu": c1 - c0, "wall": t1 - t0, "threads": len(os.listdir("/proc/self/task"))}))
    conn.recv()


ROLES = {
    "tp_recv": tp_recv,
    "tp_send": tp_send,
    "rt_server": rt_server,
    "rt_client": rt_client,
    "grp_recv": grp_recv,
    "grp_send": grp_send,
    "idle_recv": idle_recv,
}
MPQ_ROLES = {
    "tp_recv": tp_recv_mpq,
    "tp_send": tp_send_mpq,
    "rt_server": rt_server_mpq,
    "rt_client": rt_client_mpq,
    "idle_recv": idle_recv_mpq,
}
