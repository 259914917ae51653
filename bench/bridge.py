#!/usr/bin/env python3
"""The bridge between hosts: what it costs on one host, and how it compares
with channels_redis across hosts, on one private redis-server.

    .venv/bin/python bench/bridge.py                 # writes bench/results/bridge.json
    .venv/bin/python bench/bridge.py --rounds 1 --results-dir /tmp/r

Two "hosts" on this machine are two bus prefixes with their own host ids on
one Redis namespace (tests/bridge/test_namespaces.py shows they behave as
real hosts).  Scenarios, each in a fresh pair of processes (the second one
spawned), variants interleaved per round:

    single host, bridge off / on (on: ``hosts`` set, Redis up, no other host;
    which goes first alternates by round)
      send+receive   one process, its own ``!`` channel: time per message
      round trip     to a second process of the host and back (``!`` channels): p50
      fan-out        group_send to 100 members in one process, until all have it
    across hosts, bridge vs channels_redis RedisChannelLayer (same Redis)
      round trip     host a -> host b -> host a (``!`` channels): p50
      group_send     1000 members, 500 on each host, until all 1000 have it (the
                     far host acknowledges): time per group_send
      Redis ops      commands Redis ran per such group_send (INFO commandstats,
                     every command, those inside scripts included, receivers too),
                     and commands the sender sent
"""

import argparse
import asyncio
import datetime
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import RedisServer, find_redis_server, machine_info, median, percentile  # noqa: E402
from _results import add_results_dir, print_tables, ratio_table, table, target, target_table, write  # noqa: E402

MEMBERS_CROSS = 500  # per host
MEMBERS_LOCAL = 100


#: the Redis key prefix every "host" of one run shares (set in main, passed to the peers)
NAMESPACE = f"bench-bridge-{os.getpid()}"


def make_layer(kind, port, prefix, host, namespace=None):
    if kind == "redis":
        from channels_redis.core import RedisChannelLayer

        return RedisChannelLayer(hosts=[("127.0.0.1", port)], prefix=f"bench-redis-{namespace or NAMESPACE}", capacity=2000)
    from shmchannels.layers import SharedMemoryChannelLayer

    if kind == "off":
        return SharedMemoryChannelLayer(prefix=prefix, capacity=2000)
    return SharedMemoryChannelLayer(prefix=prefix, capacity=2000, hosts=[f"redis://127.0.0.1:{port}/0"], host=host,
                                    redis_prefix=namespace or NAMESPACE)


# ------------------------------------------------------------ the second process


def peer(kind, port, prefix, host, role, members, namespace, conn):
    group = f"bench-{host}"
    async def main():
        layer = make_layer(kind, port, prefix, host, namespace)
        if role == "echo":
            mine = await layer.new_channel()
            conn.send(mine)
            while True:
                msg = await layer.receive(mine)
                if msg["type"] == "stop":
                    break
                await layer.send(msg["reply"], msg)
        else:  # members of a group; acknowledge each group message once all have it
            chans = [await layer.new_channel() for _ in range(members)]
            for ch in chans:
                await layer.group_add(group, ch)
            conn.send("ready")
            ack_to = conn.recv()
            while True:
                got = await asyncio.gather(*(layer.receive(ch) for ch in chans))
                if got[0]["type"] == "stop":
                    break
                await layer.send(ack_to, {"type": "ack"})
        if kind == "redis":
            await layer.flush()
    asyncio.run(main())


def start_peer(*args):
    here, there = mp.Pipe()
    p = mp.get_context("spawn").Process(target=peer, args=(*args, NAMESPACE, there), daemon=True)  # never outlive a failed run
    p.start()
    return p, here


# --------------------------------------------------------------- the scenarios


def send_receive(kind, port, prefix, host, reps=20000):
    async def main():
        layer = make_layer(kind, port, prefix, host)
        ch = await layer.new_channel()
        msg = {"type": "x", "text": "hello"}
        for _ in range(1000):
            await layer.send(ch, msg)
            await layer.receive(ch)
        t = time.perf_counter()
        for _ in range(reps):
            await layer.send(ch, msg)
            await layer.receive(ch)
        return (time.perf_counter() - t) / reps
    return asyncio.run(main())


def round_trip(kind, port, prefix, peer_prefix, host, peer_host, reps=2000):
    p, conn = start_peer(kind, port, peer_prefix, peer_host, "echo", 0)
    there = conn.recv()

    async def main():
        layer = make_layer(kind, port, prefix, host)
        mine = await layer.new_channel()
        msg = {"type": "x", "text": "hello", "reply": mine}
        lat = []
        for i in range(reps + 200):
            t = time.perf_counter()
            await layer.send(there, msg)
            await layer.receive(mine)
            if i >= 200:
                lat.append(time.perf_counter() - t)
        await layer.send(there, {"type": "stop", "reply": mine})
        if kind == "redis":
            await layer.flush()
        return percentile(sorted(lat), 50)
    try:
        return asyncio.run(main())
    finally:
        p.join(60)


def fan_out_local(kind, port, prefix, host, reps=200):
    async def main():
        layer = make_layer(kind, port, prefix, host)
        chans = [await layer.new_channel() for _ in range(MEMBERS_LOCAL)]
        for ch in chans:
            await layer.group_add("bench-local", ch)
        times = []
        for i in range(reps + 20):
            t = time.perf_counter()
            await layer.group_send("bench-local", {"type": "x", "text": "hello"})
            for ch in chans:
                await layer.receive(ch)
            if i >= 20:
                times.append(time.perf_counter() - t)
        await layer.flush()
        return statistics.median(times)
    return asyncio.run(main())


def commands_run(redis):
    stats = redis_info(redis)
    return sum(v["calls"] for k, v in stats.items() if k.startswith("cmdstat_") and k != "cmdstat_info")


_info_clients = {}


def redis_info(redis):
    """INFO commandstats through one connection kept open, so that reading the
    counts adds no connection handshake (HELLO) to them."""
    import redis as redis_py

    client = _info_clients.get(redis.port)
    if client is None:
        client = _info_clients[redis.port] = redis_py.Redis(port=redis.port)
    return client.info("commandstats")


def group_cross(kind, port, redis, prefix, peer_prefix, host, peer_host, reps=30):
    p, conn = start_peer(kind, port, peer_prefix, peer_host, "members", MEMBERS_CROSS)
    assert conn.recv() == "ready"

    group = f"bench-{peer_host}"

    async def main():
        layer = make_layer(kind, port, prefix, host)
        chans = [await layer.new_channel() for _ in range(MEMBERS_CROSS)]
        for ch in chans:
            await layer.group_add(group, ch)
        acks = await layer.new_channel()
        conn.send(acks)
        times, ops = [], []
        for i in range(reps + 5):
            before = commands_run(redis)
            t = time.perf_counter()
            await layer.group_send(group, {"type": "x", "text": "hello"})
            await asyncio.gather(*(layer.receive(ch) for ch in chans))
            await layer.receive(acks)
            elapsed = time.perf_counter() - t
            if i >= 5:
                times.append(elapsed)
                # minus the ack: a send and its receive, counted alike for both layers
                ops.append(commands_run(redis) - before)
        await layer.group_send(group, {"type": "stop"})
        await asyncio.sleep(0.5)
        if kind == "redis":
            await layer.flush()
        return statistics.median(times), statistics.median(ops)
    try:
        return asyncio.run(main())
    finally:
        p.join(60)


def sender_commands(kind, port, redis, prefix, peer_prefix, n=50):
    """Commands Redis runs per group_send from one process to 500 members on
    another host, the far side's pulls and acknowledgements included."""
    p, conn = start_peer(kind, port, peer_prefix, "sb", "members", MEMBERS_CROSS)
    assert conn.recv() == "ready"

    async def main():
        layer = make_layer(kind, port, prefix, "sa")
        acks = await layer.new_channel()
        conn.send(acks)
        before = {k: v["calls"] for k, v in redis_info(redis).items()}
        for _ in range(n):
            await layer.group_send("bench-sb", {"type": "x"})
        await asyncio.sleep(1.0)  # the bridge's group sends are queued: let them all run
        after = {k: v["calls"] for k, v in redis_info(redis).items()}
        await layer.group_send("bench-sb", {"type": "stop"})
        return {k[len("cmdstat_"):]: (after[k] - before.get(k, 0)) / n for k in after
                if k != "cmdstat_info" and after[k] != before.get(k, 0)}
    try:
        return asyncio.run(main())
    finally:
        p.join(30)  # it leaves at the stop message (a kill would leave its bridge lock in /dev/shm)
        if p.is_alive():
            p.kill()
            p.join(10)


# ----------------------------------------------------------------------- report


def cell(values, f="time"):
    return {"v": median(values), "lo": min(values), "hi": max(values), "f": f, "paren": True} if values else "n/a"


def tables(cells):
    rows = []
    for key, label in (("send_receive", "send+receive, one process (per message)"),
                       ("rtt_local", "round trip to another process of the host (p50)"),
                       ("fanout_local", f"group_send to {MEMBERS_LOCAL} members in one process, all received")):
        off, on = cells.get(f"{key} off"), cells.get(f"{key} on")
        rows.append((label, cell(off), cell(on),
                     cell([b / a for a, b in zip(off, on)], "x2") if off and on else "n/a"))
    single = table("single", "One host: bridge off and on", ["", "bridge off", "bridge on", "on / off"], rows, "lrrr")
    rows = []
    for key, label in (("rtt_cross", "round trip host a -> host b -> host a (p50)"),
                       ("group_cross", f"group_send to {2 * MEMBERS_CROSS} members, {MEMBERS_CROSS} per host, "
                                       "all received")):
        on, red = cells.get(f"{key} on"), cells.get(f"{key} redis")
        rows.append((label, cell(on), cell(red), cell([a / b for a, b in zip(on, red)], "x2") if on and red else "n/a"))
    ops_on, ops_red = cells.get("group_ops on"), cells.get("group_ops redis")
    rows.append(("Redis commands run per cross-host group_send (all, receivers included)",
                 cell(ops_on, "int"), cell(ops_red, "int"),
                 cell([a / b for a, b in zip(ops_on, ops_red)], "x2") if ops_on and ops_red else "n/a"))
    cross = table("cross", "Across two hosts: the bridge vs channels_redis on the same Redis",
                  ["", "shmchannels bridge", "channels_redis", "bridge / channels_redis"], rows, "lrrr")
    names = {"on": "shmchannels bridge", "redis": "channels_redis"}
    rows = [(names.get(kind, kind), ", ".join(f"{k} {v:g}" for k, v in sorted(ops.items())))
            for kind, ops in cells.get("sender_commands", {}).items()]
    sender = table("sender", "Redis commands per cross-host group_send, by command (50 group_sends from host a to "
                   "500 members on host b, whose receives and acknowledgements are included)",
                   ["layer", "commands per group_send"], rows, "ll")
    ratio_rows = []
    for key, what in (("send_receive", "send+receive"), ("rtt_local", "round trip"), ("fanout_local", "fan-out")):
        off, on = cells.get(f"{key} off"), cells.get(f"{key} on")
        if off and on:
            ratio_rows.append((f"one host, {what}: bridge on / off", [b / a for a, b in zip(off, on)]))
    for key, what in (("rtt_cross", "round trip"), ("group_cross", "group_send to 1000")):
        on, red = cells.get(f"{key} on"), cells.get(f"{key} redis")
        if on and red:
            ratio_rows.append((f"across hosts, {what}: bridge / channels_redis", [a / b for a, b in zip(on, red)]))
    targets = []
    for key, what in (("send_receive", "send+receive"), ("rtt_local", "round trip"), ("fanout_local", "fan-out")):
        off, on = cells.get(f"{key} off"), cells.get(f"{key} on")
        if off and on:
            targets.append(target(f"one host, {what}: bridge on within 10% of off",
                                  [b / a for a, b in zip(off, on)], lambda v: v <= 1.10))
    on, red = cells.get("rtt_cross on"), cells.get("rtt_cross redis")
    if on and red:
        targets.append(target("cross-host round trip p50 <= 1.2x channels_redis", [a / b for a, b in zip(on, red)],
                              lambda v: v <= 1.2))
    on, red = cells.get("group_cross on"), cells.get("group_cross redis")
    if on and red:
        targets.append(target("cross-host group_send to 1000 <= 1/3 of channels_redis",
                              [a / b for a, b in zip(on, red)], lambda v: v <= 1 / 3))
    return [single, cross, sender, ratio_table(ratio_rows, "round"), target_table(targets, "round")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    add_results_dir(ap)
    args = ap.parse_args()
    if not find_redis_server():
        raise SystemExit("bench/bridge.py needs redis-server (apt-get install redis-server)")
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    redis = RedisServer(find_redis_server()).start()
    port, pid = redis.port, os.getpid()
    cells = {}

    def note(key, v, fmt=lambda v: f"{v * 1e6:10.1f} us"):
        cells.setdefault(key, []).append(v)
        print(f"round {rnd}  {key:20} {fmt(v)}", flush=True)
    try:
        for rnd in range(args.rounds):
            for kind in ("off", "on") if rnd % 2 == 0 else ("on", "off"):  # neither always first
                p, h = f"bench-bridge-{pid}-{kind}{rnd}", f"solo{rnd}"  # one host: one bus, one host id
                note(f"send_receive {kind}", send_receive(kind, port, p, h))
                note(f"rtt_local {kind}", round_trip(kind, port, p, p, h, h))
                note(f"fanout_local {kind}", fan_out_local(kind, port, p, h))
            for kind in ("on", "redis"):
                pa, pb = f"bench-bridge-{pid}-{kind}{rnd}a", f"bench-bridge-{pid}-{kind}{rnd}b"
                note(f"rtt_cross {kind}", round_trip(kind, port, pa, pb, f"a{rnd}", f"b{rnd}"))
                t, ops = group_cross(kind, port, redis, pa + "g", pb + "g", f"ga{rnd}", f"gb{rnd}")
                note(f"group_cross {kind}", t)
                note(f"group_ops {kind}", ops, lambda v: f"{v:10.0f} commands")
        for kind in ("on", "redis"):
            cells.setdefault("sender_commands", {})[kind] = sender_commands(
                kind, port, redis, f"bench-bridge-{pid}-{kind}sa", f"bench-bridge-{pid}-{kind}sb")
            print(kind, cells["sender_commands"][kind], flush=True)
    finally:
        redis.stop()
    tabs = tables(cells)
    print_tables(tabs)
    info = machine_info()
    meta = {"machine": {"cpus": info["nproc"], "cpu": info["cpu"], "mem": info["mem"], "kernel": info["kernel"],
                        "python": info["python"]},
            "versions": info["versions"], "source": info["source"], "redis": redis.version,
            "elapsed_min": round((time.monotonic() - t0) / 60, 1)}
    write(args.results_dir, "bridge", meta=meta, params={"rounds": args.rounds, "members_cross": MEMBERS_CROSS,
                                                        "members_local": MEMBERS_LOCAL}, runs=cells, tables=tabs,
          started=started)


if __name__ == "__main__":
    main()
