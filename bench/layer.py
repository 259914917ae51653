#!/usr/bin/env python3
"""Channel-layer benchmark: shmchannels vs channels_redis vs multiprocessing.Queue.

    .venv/bin/python bench/layer.py            # full run (5 runs), writes bench/results/layer.json
    .venv/bin/python bench/layer.py --quick --results-dir /tmp/r    # smoke run (no file unless a dir or --write)
    .venv/bin/python bench/layer.py --runs 3 --only stream,rt

Starts its own redis-server on a free 127.0.0.1 port (no persistence) and
stops it at the end, also on errors and Ctrl-C.  Every scenario runs in
separate OS processes started with multiprocessing's "spawn" method (see
METHOD below for why); each process builds its own layer object and uses the
async API.  Variants of all transports are interleaved inside each run, so
slow drifts of this noisy box hit every transport alike; each measurement is
repeated --runs times and reported as median and min-max.

Child-process code lives in bench/_workers.py, helpers in bench/_common.py.
"""

import contextlib
import datetime
import functools
import multiprocessing as mp
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (  # noqa: E402
    BenchError,
    Child,
    RedisServer,
    find_redis_server,
    fmt_num,
    fmt_time,
    log,
    machine_info,
    median,
    percentile,
    shm_files,
    stop_all,
)
from _report import bar, error_lines, panel, ratios, stat, vals  # noqa: E402
from _results import num, print_tables, ratio_table, span_cell, table, target, target_table, write  # noqa: E402
from _run import (  # noqa: E402
    Run,
    interruptible,
    new_parser,
    parse,
    require_modules,
    require_program,
    results_dir,
)
from _workers import FLOOR, MPQ, PUBSUB, REDIS, SHM  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- bench:layer:start -->", "<!-- bench:layer:end -->"

START_METHOD = "spawn"
START_METHOD_WHY = (
    '"spawn": every child is a fresh interpreter, like the separate protocol-server and worker '
    "programs of a Channels deployment, with no inherited event loop, Redis connection, mmap or "
    "bus attachment; and its normal interpreter exit runs atexit handlers, which is where an "
    "shmchannels process detaches from the bus (a forked multiprocessing child ends in os._exit "
    "and would skip that).  Start-up cost (~0.3 s a process) is outside every timed window."
)

# variant key -> (transport, named channel?, label)
VARIANTS = {
    "shm": (SHM, False, "shmchannels new_channel()"),
    "shm-named": (SHM, True, 'shmchannels "bench"'),
    "redis": (REDIS, False, "RedisChannelLayer new_channel()"),
    "redis-named": (REDIS, True, 'RedisChannelLayer "bench"'),
    "pubsub": (PUBSUB, False, "RedisPubSub new_channel()"),
    "mpq": (MPQ, False, "multiprocessing.Queue"),
    # diagnostic, not a target: the same layer with its receive-side busy-wait off
    "shm-nospin": (SHM, False, "shmchannels spin_us=0 (diagnostic)"),
    # the least any layer can cost on asyncio (bench/_floor.py): a FIFO write per
    # process, one decode, a future per member
    "floor": (FLOOR, False, "bare asyncio fan-out (floor)"),
    # the same three on uvloop, the loop uvicorn runs a Channels app on
    "shm-uvloop": (SHM, False, "shmchannels on uvloop"),
    "redis-uvloop": (REDIS, False, "RedisChannelLayer on uvloop"),
    "floor-uvloop": (FLOOR, False, "bare fan-out on uvloop (floor)"),
}
VARIANT_OPTIONS = {"shm-nospin": {"spin_us": 0}, "shm-uvloop": {"uvloop": True}, "redis-uvloop": {"uvloop": True},
                   "floor-uvloop": {"uvloop": True}}
SCENARIOS = {
    "stream": ["shm", "shm-named", "redis", "redis-named", "pubsub", "mpq"],
    "rt": ["shm", "redis", "pubsub", "mpq"],
    "group": ["shm", "redis", "pubsub", "shm-nospin", "floor", "shm-uvloop", "redis-uvloop", "floor-uvloop"],
    "big": ["shm", "shm-named", "redis", "pubsub", "mpq"],
    "idle": ["shm", "shm-named", "redis", "pubsub", "mpq"],
}
SCENARIO_TITLES = {
    "stream": "1. one-to-one throughput, 100-char websocket.receive",
    "rt": "2. round trip via a reply channel",
    "group": "3. group_send to 1000 members in 2 processes",
    "big": "4. 64 KiB messages one-to-one",
    "idle": "5. idle receiver CPU",
}
SCENARIO_TITLES_MD = {"stream": "1. one-to-one 100 B", "rt": "2. round trip", "group": "3. group_send 1000",
                      "big": "4. 64 KiB one-to-one", "idle": "5. idle CPU"}
# First-run sizes (messages / round trips) for a ~2 s measurement; later runs
# are resized from the rates measured so far.
INITIAL = {
    "stream": {"shm": 1_000_000, "shm-named": 2_000_000, "redis": 2500, "redis-named": 2500, "pubsub": 2500, "mpq": 300_000},
    "big": {"shm": 20_000, "shm-named": 20_000, "redis": 1000, "pubsub": 1000, "mpq": 20_000},
    "rt": {"shm": 20_000, "redis": 1500, "pubsub": 1500, "mpq": 10_000},
}
LIMITS = {"stream": (500, 3_000_000), "big": (200, 500_000), "rt": (300, 600_000)}
# A receiver that buffers the stream in its own memory instead of leaving it
# in the ring (shmchannels' new_channel() path did: 6.3 GB RSS for 100k x 64
# KiB) must not take the machine down: the next run's N is scaled so that
# such a receiver stays under this peak RSS.
RSS_GUARD_MB = 1024
# Both layers: let the ring (shm) or nothing (Redis) be the limit.  It must
# exceed N: shmchannels' receiver buffers drained records of a new_channel()
# in a deque of maxlen=capacity that drops the oldest (see bench/README.md).
STREAM_CAPACITY = 10_000_000
SEND_BACKOFF = 100e-6  # sender's sleep after ChannelFull
GROUP_MEMBERS = 500  # per receiver process; two receivers
RT_WARMUP = 200
QUIET_BUDGET = 600.0  # seconds a run may spend in all waiting for other processes to leave the CPUs


class Env(Run):
    def __init__(self, args, port, layer_path=None):
        super().__init__(args, quiet_budget=QUIET_BUDGET, prefix_tag="bench", unit="run")
        self.port = port
        self.layer_path = layer_path
        self.ctx = mp.get_context(START_METHOD)
        self.leftovers = []  # (prefix, files) the layer left in /dev/shm after a clean scenario
        self.killed_leftovers = []  # the same after a failed scenario whose processes we terminated
        self.target = 0.3 if args.quick else args.target_secs
        self.sizes = {sc: {k: self._initial(sc, k) for k in ks} for sc, ks in INITIAL.items()}

    def _initial(self, scenario, key):
        lo, hi = LIMITS[scenario]
        return max(lo, min(hi, int(INITIAL[scenario][key] * self.target / 2.0)))

    def resize(self, scenario, key, rate, rss_mb=None):
        """Size the next run's measurement to take ~target seconds at ``rate``/s
        (and to keep a receiver's peak RSS under RSS_GUARD_MB)."""
        if rate:
            lo, hi = LIMITS[scenario]
            n = rate * self.target
            if rss_mb and rss_mb > RSS_GUARD_MB:
                n = min(n, self.sizes[scenario][key] * RSS_GUARD_MB / rss_mb)
            self.sizes[scenario][key] = max(lo, min(hi, int(n)))

    def cfg(self, key, **extra):
        kind, named, _label = VARIANTS[key]
        return {"kind": kind, "named": named, "prefix": self.new_prefix(), "port": self.port,
                "layer_path": self.layer_path, **VARIANT_OPTIONS.get(key, {}), **extra}

    def check_shm(self, prefix, after_failure=False):
        """Remove what a scenario left in /dev/shm; remember it.  After a
        failed scenario (children terminated by us) leftovers are expected."""
        files = shm_files(prefix)
        if files:
            names = [os.path.basename(f) for f in files]
            (self.killed_leftovers if after_failure else self.leftovers).append((prefix, names))
            for f in files:
                try:
                    os.unlink(f)
                except FileNotFoundError:
                    pass

    def remove_all_leftovers(self):
        """Anything a killed child left behind under any prefix of the run."""
        for p in self.prefixes:
            self.check_shm(p, after_failure=True)


def wrap_up(children, flusher, kind):
    """Flush once (in ``flusher``), then let every child exit."""
    if kind != MPQ:
        flusher.send("flush")
        flusher.expect("flushed", 60)
    for c in children:
        c.send("exit")
    codes = stop_all(children)
    if any(code != 0 for code in codes):
        raise BenchError(f"child exit codes {codes}")


def scenario_run(env, cfg, body):
    """Run ``body(children)``; always reap the children and check /dev/shm."""
    children = []
    ok = False
    try:
        out = body(children)
        ok = True
        return out
    finally:
        # On success every child has exited already.  On failure, closing our
        # pipe ends makes children blocked on a command exit (EOFError);
        # stragglers are terminated, then killed.
        for c in children:
            if c.proc.is_alive():
                c.conn.close()
        stop_all(children, timeout=3)
        env.check_shm(cfg["prefix"], after_failure=not ok)


# ------------------------------------------------------------------ scenarios


def run_stream(env, scenario, key):
    n = env.sizes[scenario][key]
    msg = "text" if scenario == "stream" else "big"
    timeout = max(60.0, 30 * env.target)
    cfg = env.cfg(key, n=n, msg=msg, capacity=STREAM_CAPACITY, backoff=SEND_BACKOFF, timeout=timeout)
    kind = cfg["kind"]

    def body(children):
        queues = (env.ctx.Queue(),) if kind == MPQ else ()
        recv = Child(env.ctx, "tp_recv", cfg, queues)
        children.append(recv)
        send = Child(env.ctx, "tp_send", cfg, queues)
        children.append(send)
        ch = recv.expect("ready", 60)
        send.send("channel", ch)
        send.expect("warm", 60)
        recv.expect("probed", 60)
        send.send("go")
        s = send.expect("result", timeout + 30)
        r = recv.expect("result", timeout + 30)
        wrap_up(children, recv, kind)
        return r, s

    r, s = scenario_run(env, cfg, body)
    want = 65536 if msg == "big" else 100
    if r["size"] != want or r["count"] != n:
        raise BenchError(f"received {r['count']} messages of {r['size']} bytes, expected {n} of {want}")
    secs = (r["t_last"] - r["t_first"]) / 1e9
    rate = (n - 1) / secs
    send_secs = (s["t1"] - s["t0"]) / 1e9
    env.resize(scenario, key, rate, r["maxrss_kb"] / 1024)
    return {
        "rate": rate,
        "send_rate": n / send_secs,
        "n": n,
        "secs": secs,
        "recv_cpu_us": r["cpu"] / (n - 1) * 1e6,
        "send_cpu_us": s["cpu"] / n * 1e6,
        "full": s["full"],
        "recv_rss_mb": r["maxrss_kb"] / 1024,
        "gbps": rate * 65536 / 1e9 if msg == "big" else None,
    }


def run_rt(env, key):
    m = env.sizes["rt"][key]
    timeout = max(60.0, 30 * env.target)
    cfg = env.cfg(key, m=m, warm=RT_WARMUP, timeout=timeout)
    kind = cfg["kind"]

    def body(children):
        queues = (env.ctx.Queue(), env.ctx.Queue()) if kind == MPQ else ()
        server = Child(env.ctx, "rt_server", cfg, queues)
        children.append(server)
        client = Child(env.ctx, "rt_client", cfg, queues)
        children.append(client)
        sch = server.expect("ready", 60)
        client.expect("ready", 60)
        client.send("server", sch)
        res = client.expect("result", timeout + 30)
        served = server.expect("result", 30)["served"]
        wrap_up(children, client, kind)
        return res, served

    res, served = scenario_run(env, cfg, body)
    lat = sorted(res["lat_ns"])
    if len(lat) != m or served != m + RT_WARMUP:
        raise BenchError(f"{len(lat)} round trips measured, {served} served; expected {m}")
    mean = sum(lat) / len(lat)
    env.resize("rt", key, 1e9 / mean)
    return {
        "p50_us": percentile(lat, 50) / 1e3,
        "p99_us": percentile(lat, 99) / 1e3,
        "p999_us": percentile(lat, 99.9) / 1e3,
        "max_us": lat[-1] / 1e3,
        "mean_us": mean / 1e3,
        "m": m,
        "lat_ns": lat,
    }


def run_group(env, key):
    reps = env.args.reps
    timeout = 120.0
    cfg = env.cfg(key, members=GROUP_MEMBERS, group="bench-group", timeout=timeout)

    def one_rep(s, receivers, rep):
        s.send("go", rep)
        sent = s.expect("sent", timeout)
        done = [r.expect("done", timeout + 10) for r in receivers]
        if any(d["count"] != GROUP_MEMBERS for d in done):
            raise BenchError(f"receivers got {[d['count'] for d in done]} messages")
        return {
            "total_ms": (max(d["t_last"] for d in done) - sent["t0"]) / 1e6,
            "first_ms": (min(d["t_first"] for d in done) - sent["t0"]) / 1e6,
            "call_ms": (sent["t1"] - sent["t0"]) / 1e6,
        }

    def body(children):
        r1 = Child(env.ctx, "grp_recv", cfg)
        children.append(r1)
        r2 = Child(env.ctx, "grp_recv", cfg)
        children.append(r2)
        s = Child(env.ctx, "grp_send", cfg)
        children.append(s)
        retries = sum((r.expect("ready", 180) or {}).get("retries", 0) for r in (r1, r2))
        s.expect("ready", 60)
        fresh = []
        for rep in range(reps + 1):  # fresh waiters; rep 0 is the warm-up
            for r in (r1, r2):
                r.send("arm")
            for r in (r1, r2):
                r.expect("armed", 60)
            fresh.append(one_rep(s, (r1, r2), rep))
        for r in (r1, r2):  # consumer loops; rep 0 is the warm-up
            r.send("consume", reps + 1)
        for r in (r1, r2):
            r.expect("armed", 60)
        loops = [one_rep(s, (r1, r2), rep) for rep in range(reps + 1)]
        s.send("flush")
        s.expect("flushed", 60)
        for c in children:
            c.send("exit")
        codes = stop_all(children)
        if any(codes):
            raise BenchError(f"child exit codes {codes}")
        return fresh, loops, retries

    fresh, loops, retries = scenario_run(env, cfg, body)
    return {
        "total_ms": median([r["total_ms"] for r in loops[1:]]),
        "first_ms": median([r["first_ms"] for r in loops[1:]]),
        "call_ms": median([r["call_ms"] for r in loops[1:]]),
        "fresh_ms": median([r["total_ms"] for r in fresh[1:]]),
        "fresh_first_ms": median([r["first_ms"] for r in fresh[1:]]),
        "fresh_call_ms": median([r["call_ms"] for r in fresh[1:]]),
        "cold_ms": fresh[0]["total_ms"],
        "setup_retries": retries,
    }


def run_idle(env, key):
    secs = 1.0 if env.args.quick else env.args.idle_secs
    cfg = env.cfg(key, secs=secs)
    kind = cfg["kind"]

    def body(children):
        queues = (env.ctx.Queue(),) if kind == MPQ else ()
        c = Child(env.ctx, "idle_recv", cfg, queues)
        children.append(c)
        res = c.expect("result", secs + 90)
        wrap_up(children, c, kind)
        return res

    res = scenario_run(env, cfg, body)
    return {"pct": 100.0 * res["cpu"] / res["wall"], "cpu_ms": res["cpu"] * 1e3, "threads": res["threads"]}


# ------------------------------------------------------------------ reporting


def fmt_rate(v):
    return fmt_num(v, "/s")


def us(v):
    return fmt_time(v / 1e6) if v is not None else "n/a"


def ms(v):
    return fmt_time(v / 1e3) if v is not None else "n/a"


def build_targets(results):
    """The targets of the scenarios that ran (see _report.target)."""
    t = []

    def add(text, values, ok, f):
        t.append(target(text, values, ok, f))

    if "stream" in results:
        add("throughput >= 300x RedisChannelLayer (new_channel)", ratios(results, "stream", "shm", "redis", "rate"),
            lambda v: v >= 300, "ratio")
        add('throughput >= 300x RedisChannelLayer (named "bench")',
            ratios(results, "stream", "shm-named", "redis-named", "rate"), lambda v: v >= 300, "ratio")
        add("throughput >= 2x multiprocessing.Queue (new_channel)", ratios(results, "stream", "shm", "mpq", "rate"),
            lambda v: v >= 2, "ratio")
        add('throughput >= 2x multiprocessing.Queue (named "bench")',
            ratios(results, "stream", "shm-named", "mpq", "rate"), lambda v: v >= 2, "ratio")
    if "rt" in results:
        add("round-trip p50 <= 1/20 of RedisChannelLayer's (Redis p50 / shm p50 >= 20)",
            ratios(results, "rt", "shm", "redis", "p50_us", invert=True), lambda v: v >= 20, "ratio")
        add("round-trip p99 <= 3x own p50 (shm p99 / p50)",
            [r["p99_us"] / r["p50_us"] for r in results["rt"]["shm"] if r], lambda v: v <= 3, "ratio")
    if "group" in results:
        add("group_send to 1000 <= 1/4 of RedisChannelLayer's, consumer loops (Redis / shm >= 4)",
            ratios(results, "group", "shm", "redis", "total_ms", invert=True), lambda v: v >= 4, "ratio")
        add("group_send to 1000 <= 1/4 of RedisChannelLayer's, fresh waiters (Redis / shm >= 4)",
            ratios(results, "group", "shm", "redis", "fresh_ms", invert=True), lambda v: v >= 4, "ratio")
        add("issue 12: group_send to 1000 <= 1.0 ms until all received, consumer loops",
            [None if v is None else v / 1e3 for v in vals(results, "group", "shm", "total_ms")],
            lambda v: v is not None and v <= 1e-3, "time")
        add("issue 12: group_send to 1000 >= 8x faster than RedisChannelLayer, consumer loops",
            ratios(results, "group", "shm", "redis", "total_ms", invert=True), lambda v: v >= 8, "ratio")
        add("issue 12: group_send to 1000 <= 1.0 ms until all received, consumer loops on uvloop",
            [None if v is None else v / 1e3 for v in vals(results, "group", "shm-uvloop", "total_ms")],
            lambda v: v is not None and v <= 1e-3, "time")
        add("issue 12: group_send to 1000 >= 8x faster than RedisChannelLayer, consumer loops, both on uvloop",
            ratios(results, "group", "shm-uvloop", "redis-uvloop", "total_ms", invert=True), lambda v: v >= 8, "ratio")
    if "big" in results:
        add("64 KiB messages >= 50k/s (new_channel)", vals(results, "big", "shm", "rate"),
            lambda v: v is not None and v >= 50_000, "rate")
        add('64 KiB messages >= 50k/s (named "bench")', vals(results, "big", "shm-named", "rate"),
            lambda v: v is not None and v >= 50_000, "rate")
    if "idle" in results:
        add("idle CPU < 1% (new_channel)", vals(results, "idle", "shm", "pct"),
            lambda v: v is not None and v < 1, "pct")
        add('idle CPU < 1% (named "bench")', vals(results, "idle", "shm-named", "pct"),
            lambda v: v is not None and v < 1, "pct")
    return t


def secs(med, lo, hi, scale):
    """Median and range cells of a time measured in ``scale`` seconds."""
    if med is None:
        return "n/a", "n/a"
    return num(med * scale, "time"), span_cell(lo * scale, hi * scale, "time")


def result_rows(results):
    """Rows (scenario, variant, median, range, extra) for the results table."""
    rows = []
    for sc in SCENARIOS:
        if sc not in results:
            continue
        for key in SCENARIOS[sc]:
            label = VARIANTS[key][2]
            if sc in ("stream", "big"):
                med, lo, hi = stat(results, sc, key, "rate")
                smed, _, _ = stat(results, sc, key, "send_rate")
                rc, _, _ = stat(results, sc, key, "recv_cpu_us")
                sc_cpu, _, _ = stat(results, sc, key, "send_cpu_us")
                full, _, _ = stat(results, sc, key, "full")
                n, _, _ = stat(results, sc, key, "n")
                rss, _, rss_hi = stat(results, sc, key, "recv_rss_mb")
                extra = [f"sender {fmt_rate(smed)}", f"CPU/msg recv {us(rc)}, send {us(sc_cpu)}",
                         f"receiver peak RSS {rss:.0f} MB (max {rss_hi:.0f})" if rss else ""]
                if sc == "big":
                    g, glo, ghi = stat(results, sc, key, "gbps")
                    extra.insert(0, f"{g:.3g} GB/s ({glo:.3g}–{ghi:.3g})" if g else "")
                if full:
                    extra.append(f"ChannelFull retries {full:.0f}")
                extra.append(f"N={n:.0f}" if n else "")
                rows.append((sc, label, num(med, "rate"), span_cell(lo, hi, "rate"), "; ".join(e for e in extra if e)))
            elif sc == "rt":
                for field, name in (("p50_us", "p50"), ("p99_us", "p99"), ("mean_us", "mean")):
                    med, lo, hi = stat(results, sc, key, field)
                    extra = ""
                    if field == "p50_us":
                        m, _, _ = stat(results, sc, key, "m")
                        p999, _, _ = stat(results, sc, key, "p999_us")
                        mx, _, _ = stat(results, sc, key, "max_us")
                        extra = f"p99.9 {us(p999)}, max {us(mx)}; M={m:.0f}" if m else ""
                    rows.append((sc, f"{label} {name}", *secs(med, lo, hi, 1e-6), extra))
            elif sc == "group":
                for field, first, call, name in (("total_ms", "first_ms", "call_ms", "consumer loops"),
                                                 ("fresh_ms", "fresh_first_ms", "fresh_call_ms", "fresh waiters")):
                    med, lo, hi = stat(results, sc, key, field)
                    f, _, _ = stat(results, sc, key, first)
                    c, _, _ = stat(results, sc, key, call)
                    extra = f"first delivery {ms(f)}; group_send call {ms(c)}" if med else ""
                    if field == "fresh_ms" and med:
                        cold, _, _ = stat(results, sc, key, "cold_ms")
                        retr = sum(x for x in vals(results, sc, key, "setup_retries") if x)
                        extra += f"; first (cold) group_send of a run {ms(cold)}"
                        if retr:
                            extra += f"; group_add 'database is locked' retries {retr}"
                    rows.append((sc, f"{label}, {name}", *secs(med, lo, hi, 1e-3), extra))
                if key == SCENARIOS[sc][-1]:
                    rows.append((sc, VARIANTS["mpq"][2], "n/a", "", "not applicable: no groups"))
            elif sc == "idle":
                med, lo, hi = stat(results, sc, key, "pct")
                cpu, _, _ = stat(results, sc, key, "cpu_ms")
                thr, _, _ = stat(results, sc, key, "threads")
                extra = f"{cpu:.2f} ms CPU in the window; {thr:.0f} threads" if med is not None else ""
                rows.append((sc, label, num(med, "pct"), span_cell(lo, hi, "pct"), extra))
    return rows


def ratio_rows(results):
    pairs = [
        ("stream", "shm", "redis", "rate", False, "one-to-one msg/s: shm new_channel / Redis new_channel"),
        ("stream", "shm-named", "redis-named", "rate", False, 'one-to-one msg/s: shm "bench" / Redis "bench"'),
        ("stream", "shm", "mpq", "rate", False, "one-to-one msg/s: shm new_channel / mp.Queue"),
        ("stream", "shm-named", "mpq", "rate", False, 'one-to-one msg/s: shm "bench" / mp.Queue'),
        ("stream", "shm", "pubsub", "rate", False, "one-to-one msg/s: shm new_channel / RedisPubSub"),
        ("rt", "shm", "redis", "p50_us", True, "round-trip p50: Redis / shm"),
        ("rt", "shm", "redis", "p99_us", True, "round-trip p99: Redis / shm"),
        ("rt", "shm", "mpq", "p50_us", True, "round-trip p50: mp.Queue / shm"),
        ("group", "shm", "redis", "total_ms", True, "group_send 1000, consumer loops: Redis time / shm time"),
        ("group", "shm", "pubsub", "total_ms", True, "group_send 1000, consumer loops: RedisPubSub / shm"),
        ("group", "shm", "redis", "fresh_ms", True, "group_send 1000, fresh waiters: Redis time / shm time"),
        ("group", "shm", "pubsub", "fresh_ms", True, "group_send 1000, fresh waiters: RedisPubSub / shm"),
        ("group", "shm", "floor", "total_ms", False, "group_send 1000, consumer loops: shm time / bare-asyncio floor"),
        ("group", "shm-uvloop", "redis-uvloop", "total_ms", True, "group_send 1000 on uvloop, consumer loops: Redis / shm"),
        ("group", "shm-uvloop", "floor-uvloop", "total_ms", False,
         "group_send 1000 on uvloop, consumer loops: shm time / bare floor"),
        ("big", "shm", "redis", "rate", False, "64 KiB msg/s: shm / Redis"),
        ("big", "shm", "mpq", "rate", False, "64 KiB msg/s: shm / mp.Queue"),
    ]
    return [(text, ratios(results, sc, a, b, field, invert=inv)) for sc, a, b, field, inv, text in pairs if sc in results]


def tables(results, targets, unit):
    rows = [(SCENARIO_TITLES_MD[sc], *rest) for sc, *rest in result_rows(results)]
    return [table("results", "Results", ["scenario", "variant", "median", "min – max", "notes"], rows, "llrll"),
            ratio_table(ratio_rows(results), unit), target_table(targets, unit)]


def chart(results):
    """The chart's panels: medians with min – max whiskers."""
    def bars(sc, fields, scale=1.0, names=("",)):
        if sc not in results:
            return []
        return [bar(VARIANTS[k][2], stat(results, sc, k, f), scale, name)
                for f, name in zip(fields, names) for k in SCENARIOS[sc]]

    return {"png": "bench_layer.png", "alt": "Layer benchmark: medians with min – max whiskers",
            "title": "Channel layers on one host (bars: median over runs; whiskers: min – max)",
            "panels": [
                panel("1. One-to-one throughput, 100-char message", "messages/s received (log)",
                      bars("stream", ["rate"]), "rate"),
                panel("2. Round trip via a reply channel", "seconds per round trip (log)",
                      bars("rt", ["p50_us", "p99_us"], 1e-6, ("p50", "p99")), "time"),
                panel("3. group_send to 1000 members in 2 processes", "seconds until all 1000 received (log)",
                      bars("group", ["total_ms", "fresh_ms"], 1e-3, ("consumer loops", "fresh receive()")), "time"),
                panel("4. 64 KiB messages one-to-one", "messages/s received (log)", bars("big", ["rate"]), "rate",
                      target=50_000),
                panel("5. Idle receiver CPU", "% of one CPU while parked (log)", bars("idle", ["pct"]), "pct",
                      target=1.0)]}


# ----------------------------------------------------------------------- main


def parse_args(argv=None):
    p = new_parser(__doc__, quick="short smoke run (1 run, ~0.3 s per measurement)",
                   runs="repetitions of every measurement (default 5; 1 with --quick)",
                   write="with --quick or --only: still write bench/results/layer.json",
                   only=",".join(SCENARIOS), only_help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--reps", type=int, default=None, help="group_send repetitions per run (default 10; 3 with --quick)")
    p.add_argument("--idle-secs", type=float, default=3.0, help="idle window in seconds (default 3)")
    p.add_argument("--target-secs", type=float, default=2.0, help="aimed duration of one measurement (default 2)")
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="before each measurement wait up to this many seconds for other busy processes to "
                        "finish (default 60; 0 with --quick)")
    a = parse(p, argv, choices=SCENARIOS, kind="scenario")
    a.reps = a.reps or (3 if a.quick else 10)
    if a.quick:
        a.quiet_wait = 0.0
    return a


def snapshot_layer():
    """Copy the shmchannels package (sources and the built extension) aside.

    Children import this copy, so every measurement of a run uses one version
    of the layer even if the working tree is edited meanwhile.  Returns the
    directory to put first on the children's sys.path, and a warning if the
    built extension is older than its C source."""
    import tempfile

    import shmchannels

    pkg = os.path.dirname(os.path.abspath(shmchannels.__file__))
    snap = tempfile.mkdtemp(prefix="bench-layer-src-")
    shutil.copytree(pkg, os.path.join(snap, "shmchannels"), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    warning = None
    bus_dir = os.path.join(pkg, "bus")
    sources = [os.path.join(bus_dir, f) for f in os.listdir(bus_dir) if f.endswith((".c", ".h"))]
    built = [os.path.join(bus_dir, f) for f in os.listdir(bus_dir) if f.startswith("_shm.") and f.endswith(".so")]
    if sources and built and os.path.getmtime(built[0]) < max(map(os.path.getmtime, sources)):
        warning = "shmchannels/bus/*.c or *.h is newer than the built extension: rebuild (pip install -e .) first"
    return snap, warning


def check_prerequisites():
    binary = find_redis_server()
    require_program("redis-server", binary)
    require_modules(("channels_redis", "redis", "shmchannels", "channels"))
    return binary


def run_scenario(env, sc, key):
    if sc in ("stream", "big"):
        return run_stream(env, sc, key)
    if sc == "rt":
        return run_rt(env, key)
    if sc == "group":
        return run_group(env, key)
    return run_idle(env, key)


def describe(sc, r):
    """A measurement's progress line."""
    if sc in ("stream", "big"):
        return f"{fmt_num(r['rate'])} msg/s (sender {fmt_num(r['send_rate'])}/s, N={r['n']}, full={r['full']})"
    if sc == "rt":
        return f"p50 {fmt_time(r['p50_us'] / 1e6)} p99 {fmt_time(r['p99_us'] / 1e6)} (M={r['m']})"
    if sc == "group":
        return (f"loops {fmt_time(r['total_ms'] / 1e3)}, fresh {fmt_time(r['fresh_ms'] / 1e3)} "
                f"(call {fmt_time(r['call_ms'] / 1e3)}, cold {fmt_time(r['cold_ms'] / 1e3)}, "
                f"retries {r['setup_retries']})")
    return f"{r['pct']:.3f}% CPU"


def start_redis(cleanup, binary):
    server = RedisServer(binary)
    cleanup.callback(server.stop)
    try:
        server.start()
    except BenchError as exc:
        log(f"cannot start redis-server: {exc}")
        raise SystemExit(2) from None
    return server


def machine_of(info):
    return {"cpus": info["nproc"], "cpu": info["cpu"], "mem": info["mem"], "kernel": info["kernel"],
            "python": info["python"]}


def main(argv=None):
    args = parse_args(argv)
    binary = check_prerequisites()
    out_dir = results_dir(args, full=not args.quick and set(args.only) == set(SCENARIOS))
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    results = {sc: {k: [] for k in SCENARIOS[sc]} for sc in args.only}
    with interruptible(), contextlib.ExitStack() as cleanup:
        server = start_redis(cleanup, binary)
        layer_path, snap_warning = snapshot_layer()
        cleanup.callback(shutil.rmtree, layer_path, ignore_errors=True)
        info = machine_info(server.version)
        if snap_warning:
            log(f"WARNING: {snap_warning}")
            info["source"] += f" (**{snap_warning}**)"
        log(f"redis-server {server.version} on 127.0.0.1:{server.port} (pid {server.pid()}); "
            f"start method {START_METHOD}; {args.runs} run(s); scenarios {','.join(args.only)}")
        env = Env(args, server.port, layer_path)
        cleanup.callback(env.remove_all_leftovers)
        for _run, where in env.runs():
            for sc in args.only:
                for key in SCENARIOS[sc]:
                    results[sc][key].append(env.measure(where, f"{sc}/{key}", f"{sc:<6} {VARIANTS[key][2]:<34}",
                                                        functools.partial(run_scenario, env, sc, key),
                                                        functools.partial(describe, sc)))
    elapsed = time.monotonic() - t_start
    end_source = machine_info()["source"]
    if end_source != info["source"]:
        info["source"] += (f", copied aside at the start and used for every measurement (the working tree "
                           f"changed during the run; at the end: {end_source})")
        log(f"note: the layer's working tree changed during the run; the run used its snapshot: {info['source']}")
    targets = build_targets(results)
    tabs = tables(results, targets, env.unit)
    print_tables(tabs)
    print("\n".join(error_lines(env.errors)), flush=True)
    print(f"\ntotal runtime {elapsed:.0f} s", flush=True)
    if env.leftovers:
        print(f"WARNING: the layer left files in /dev/shm after clean scenario runs (removed): {env.leftovers}", flush=True)
    if env.killed_leftovers:
        print(f"note: removed files of failed scenario runs from /dev/shm: {env.killed_leftovers}", flush=True)
    if out_dir:
        meta = {"machine": machine_of(info), "versions": info["versions"], "source": info["source"],
                "elapsed_min": round(elapsed / 60, 1), "loadavg_start": info["loadavg"],
                "loadavg_max_1min": env.max_load, "start_method": START_METHOD,
                "quiet_wait": {"measurements": env.measurements, "max_each_s": args.quiet_wait,
                               "budget_s": QUIET_BUDGET, "spent_s": round(env.waited), "contended": env.contended},
                "errors": env.errors, "shm_leftovers": env.leftovers}
        params = {"runs": args.runs, "quick": args.quick, "only": args.only, "reps": args.reps,
                  "idle_secs": args.idle_secs, "target_secs": args.target_secs, "quiet_wait": args.quiet_wait}
        write(out_dir, "layer", meta=meta, params=params, runs=results, tables=tabs, chart=chart(results),
              started=started)
    return 1 if env.errors else 0


if __name__ == "__main__":
    sys.exit(main())
