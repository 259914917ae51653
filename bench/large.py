#!/usr/bin/env python3
"""Large messages across processes: shmchannels (in-ring and blob paths) vs
channels_redis, one-way cost measured as half an echo round trip.

    .venv/bin/python bench/large.py                 # writes bench/results/large.json
    .venv/bin/python bench/large.py --rounds 5 --no-redis --results-dir /tmp/r

An echo process (spawned) receives on ``bench.in`` and sends the message back
on ``bench.out``; the parent times send + receive of the echo.  Sizes: 64 KiB
to 16 MiB with the default options (in the ring up to 256 KiB, in a blob
above), and ``shm-ring``: up to 1 MiB forced into the ring (the only path
before blobs, which capped a message at 1 MiB + 64 KiB).  Variants are interleaved per round on this
noisy box; each cell is the median over rounds of the per-round median.
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

from _common import RedisServer, find_redis_server, machine_info, median  # noqa: E402
from _results import add_results_dir, print_tables, ratio_table, table, write  # noqa: E402

SIZES = [64 << 10, 512 << 10, 1 << 20, 4 << 20, 8 << 20, 16 << 20]


def make_layer(kind, port, prefix):
    if kind == "redis":
        from channels_redis.core import RedisChannelLayer

        return RedisChannelLayer(hosts=[("127.0.0.1", port)], capacity=100)
    from shmchannels.layers import SharedMemoryChannelLayer

    layer = SharedMemoryChannelLayer(prefix=prefix, max_message_size=32 << 20)
    if kind == "shm-ring":
        layer.core.inline_max = 1 << 30  # every message in the ring: the only path before blobs
    return layer


def echo(kind, port, prefix, n):
    async def main():
        layer = make_layer(kind, port, prefix)
        for _ in range(n):
            msg = await layer.receive("bench.in")
            await layer.send("bench.out", msg)
    asyncio.run(main())


def one(kind, size, port, prefix, reps):
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=echo, args=(kind, port, prefix, reps + 1))
    p.start()

    async def main():
        layer = make_layer(kind, port, prefix)
        msg = {"type": "x", "bytes": os.urandom(size)}
        await layer.send("bench.in", msg)  # warm-up; also waits for the child
        await layer.receive("bench.out")
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            await layer.send("bench.in", msg)
            await layer.receive("bench.out")
            times.append((time.perf_counter() - t) / 2)
        if kind == "redis":
            await layer.flush()
        return statistics.median(times)

    try:
        return asyncio.run(main())
    finally:
        p.join(60)


def tables(cells, kinds):
    """Per size: the median (min-max) one-way time of each variant, and the ratios."""
    def cell(key):
        v = cells.get(key)
        return {"v": median(v), "lo": min(v), "hi": max(v), "f": "time", "paren": True} if v else "n/a"

    cols = {"shm": "shmchannels (blob above 256 KiB)", "shm-ring": "shmchannels, forced into the ring",
            "redis": "channels_redis"}
    rows, ratio_rows = [], []
    for size in SIZES:
        label = f"{size >> 10} KiB" if size < 1 << 20 else f"{size >> 20} MiB"
        rows.append([label] + [cell(f"{k} {size >> 10} KiB") for k in kinds])
        shm, red = cells.get(f"shm {size >> 10} KiB"), cells.get(f"redis {size >> 10} KiB")
        if shm and red:
            ratio_rows.append((f"{label}: channels_redis / shmchannels", [r / s for r, s in zip(red, shm)]))
    return [table("results", "One-way time (half an echo round trip between two processes)",
                  ["size"] + [cols[k] for k in kinds], rows, "l" + "r" * len(kinds)),
            ratio_table(ratio_rows, "round")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-redis", action="store_true")
    add_results_dir(ap)
    args = ap.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    redis = None
    if not args.no_redis and find_redis_server():
        redis = RedisServer(find_redis_server()).start()
    kinds = ["shm", "shm-ring"] + (["redis"] if redis else [])
    cells = {}
    try:
        for rnd in range(args.rounds):
            for size in SIZES:
                reps = 40 if size <= 1 << 20 else 10
                for kind in kinds:
                    if kind == "shm-ring" and size > 1 << 20:
                        continue  # a record needs half of the default 8 MiB ring at most
                    v = one(kind, size, redis.port if redis else 0, f"bench-large-{os.getpid()}", reps)
                    cells.setdefault(f"{kind} {size >> 10} KiB", []).append(v)
                    print(f"round {rnd} {kind:8} {size >> 10:6} KiB  {v * 1e3:8.3f} ms", flush=True)
    finally:
        if redis:
            redis.stop()
    tabs = tables(cells, kinds)
    print_tables(tabs)
    info = machine_info()
    meta = {"machine": {"cpus": info["nproc"], "cpu": info["cpu"], "mem": info["mem"], "kernel": info["kernel"],
                        "python": info["python"]},
            "versions": info["versions"], "source": info["source"], "elapsed_min": round((time.monotonic() - t0) / 60, 1)}
    write(args.results_dir, "large", meta=meta, params={"rounds": args.rounds, "redis": bool(redis)}, runs=cells,
          tables=tabs, started=started)


if __name__ == "__main__":
    main()
