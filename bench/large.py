#!/usr/bin/env python3
"""Large messages across processes: shmchannels (in-ring and blob paths) vs
channels_redis, one-way cost measured as half an echo round trip.

    .venv/bin/python bench/large.py                 # writes bench/results/large.json
    .venv/bin/python bench/large.py --rounds 5 --no-redis

An echo process (spawned) receives on ``bench.in`` and sends the message back
on ``bench.out``; the parent times send + receive of the echo.  Sizes: 64 KiB
to 16 MiB with the default options (in the ring up to 256 KiB, in a blob
above), and ``shm-ring``: up to 1 MiB forced into the ring (the only path
before blobs, which capped a message at 1 MiB + 64 KiB).  Variants are interleaved per round on this
noisy box; each cell is the median over rounds of the per-round median.
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import RedisServer, find_redis_server  # noqa: E402

SIZES = [64 << 10, 512 << 10, 1 << 20, 4 << 20, 8 << 20, 16 << 20]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-redis", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "large.json"))
    args = ap.parse_args()
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
    result = {k: {"median_ms": statistics.median(v) * 1e3, "min_ms": min(v) * 1e3, "max_ms": max(v) * 1e3}
              for k, v in cells.items()}
    for k, v in result.items():
        print(f"{k:24} {v['median_ms']:8.3f} ms ({v['min_ms']:.3f} - {v['max_ms']:.3f})")
    with open(args.out, "w") as f:
        json.dump({"when": time.strftime("%Y-%m-%d %H:%M"), "one_way": result}, f, indent=1)


if __name__ == "__main__":
    main()
