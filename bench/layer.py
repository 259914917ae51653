#!/usr/bin/env python3
"""Channel-layer benchmark: shmchannels vs channels_redis vs multiprocessing.Queue.

    .venv/bin/python bench/layer.py            # full run (5 runs), rewrites docs/benchmarks.md + PNG
    .venv/bin/python bench/layer.py --quick    # smoke run; writes docs only with --write
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
from _report import (  # noqa: E402
    closing_sections,
    error_lines,
    generated_line,
    grey_legend,
    ratio_lines,
    ratio_row,
    ratios,
    rng,
    save_chart,
    stat,
    target,
    target_lines,
    target_readings,
    vals,
)
from _run import (  # noqa: E402
    Run,
    docs_wanted,
    interruptible,
    new_parser,
    parse,
    require_modules,
    require_program,
    write_docs,
)
from _workers import MPQ, PUBSUB, REDIS, SHM  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "benchmarks.md")
PNG = os.path.join(ROOT, "docs", "bench_layer.png")
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
}
VARIANT_OPTIONS = {"shm-nospin": {"spin_us": 0}}
SCENARIOS = {
    "stream": ["shm", "shm-named", "redis", "redis-named", "pubsub", "mpq"],
    "rt": ["shm", "redis", "pubsub", "mpq"],
    "group": ["shm", "redis", "pubsub", "shm-nospin"],
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


def fmt_ratio(v):
    return "n/a" if v is None else f"{v:.3g}x" if v < 1000 else f"{v:.0f}x"


def fmt_rate(v):
    return fmt_num(v, "/s")


def fmt_pct(v):
    return "n/a" if v is None else f"{v:.3f}%"


def build_targets(results):
    """The targets of the scenarios that ran (see _report.target)."""
    t = []

    def add(text, values, ok, shown):
        t.append(target(text, values, ok, shown))

    if "stream" in results:
        add("throughput >= 300x RedisChannelLayer (new_channel)", ratios(results, "stream", "shm", "redis", "rate"),
            lambda v: v >= 300, fmt_ratio)
        add('throughput >= 300x RedisChannelLayer (named "bench")',
            ratios(results, "stream", "shm-named", "redis-named", "rate"), lambda v: v >= 300, fmt_ratio)
        add("throughput >= 2x multiprocessing.Queue (new_channel)", ratios(results, "stream", "shm", "mpq", "rate"),
            lambda v: v >= 2, fmt_ratio)
        add('throughput >= 2x multiprocessing.Queue (named "bench")',
            ratios(results, "stream", "shm-named", "mpq", "rate"), lambda v: v >= 2, fmt_ratio)
    if "rt" in results:
        add("round-trip p50 <= 1/20 of RedisChannelLayer's (Redis p50 / shm p50 >= 20)",
            ratios(results, "rt", "shm", "redis", "p50_us", invert=True), lambda v: v >= 20, fmt_ratio)
        add("round-trip p99 <= 3x own p50 (shm p99 / p50)",
            [r["p99_us"] / r["p50_us"] for r in results["rt"]["shm"] if r], lambda v: v <= 3, fmt_ratio)
    if "group" in results:
        add("group_send to 1000 <= 1/4 of RedisChannelLayer's, consumer loops (Redis / shm >= 4)",
            ratios(results, "group", "shm", "redis", "total_ms", invert=True), lambda v: v >= 4, fmt_ratio)
        add("group_send to 1000 <= 1/4 of RedisChannelLayer's, fresh waiters (Redis / shm >= 4)",
            ratios(results, "group", "shm", "redis", "fresh_ms", invert=True), lambda v: v >= 4, fmt_ratio)
    if "big" in results:
        add("64 KiB messages >= 50k/s (new_channel)", vals(results, "big", "shm", "rate"),
            lambda v: v is not None and v >= 50_000, fmt_rate)
        add('64 KiB messages >= 50k/s (named "bench")', vals(results, "big", "shm-named", "rate"),
            lambda v: v is not None and v >= 50_000, fmt_rate)
    if "idle" in results:
        add("idle CPU < 1% (new_channel)", vals(results, "idle", "shm", "pct"),
            lambda v: v is not None and v < 1, fmt_pct)
        add('idle CPU < 1% (named "bench")', vals(results, "idle", "shm-named", "pct"),
            lambda v: v is not None and v < 1, fmt_pct)
    return t


def result_rows(results):
    """Rows (scenario, variant, median, range, extra) for the results table."""
    rows = []
    us = lambda v: fmt_time(v / 1e6) if v is not None else "n/a"  # noqa: E731
    ms = lambda v: fmt_time(v / 1e3) if v is not None else "n/a"  # noqa: E731
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
                rows.append((sc, label, fmt_rate(med), rng(lo, hi, fmt_rate), "; ".join(e for e in extra if e)))
            elif sc == "rt":
                for field, name in (("p50_us", "p50"), ("p99_us", "p99"), ("mean_us", "mean")):
                    med, lo, hi = stat(results, sc, key, field)
                    extra = ""
                    if field == "p50_us":
                        m, _, _ = stat(results, sc, key, "m")
                        p999, _, _ = stat(results, sc, key, "p999_us")
                        mx, _, _ = stat(results, sc, key, "max_us")
                        extra = f"p99.9 {us(p999)}, max {us(mx)}; M={m:.0f}" if m else ""
                    rows.append((sc, f"{label} {name}", us(med), rng(lo, hi, us), extra))
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
                    rows.append((sc, f"{label}, {name}", ms(med), rng(lo, hi, ms), extra))
                if key == SCENARIOS[sc][-1]:
                    rows.append((sc, VARIANTS["mpq"][2], "n/a", "", "not applicable: no groups"))
            elif sc == "idle":
                med, lo, hi = stat(results, sc, key, "pct")
                cpu, _, _ = stat(results, sc, key, "cpu_ms")
                thr, _, _ = stat(results, sc, key, "threads")
                extra = f"{cpu:.2f} ms CPU in the window; {thr:.0f} threads" if med is not None else ""
                rows.append((sc, label, fmt_pct(med), rng(lo, hi, fmt_pct), extra))
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
        ("big", "shm", "redis", "rate", False, "64 KiB msg/s: shm / Redis"),
        ("big", "shm", "mpq", "rate", False, "64 KiB msg/s: shm / mp.Queue"),
    ]
    return [ratio_row(text, ratios(results, sc, a, b, field, invert=inv), fmt_ratio)
            for sc, a, b, field, inv, text in pairs if sc in results]


def print_report(results, targets, env):
    out = []
    out.append("\nRESULTS (median over runs, min – max)")
    cur = None
    for sc, label, med, r, extra in result_rows(results):
        if sc != cur:
            out.append(f"\n  {SCENARIO_TITLES[sc]}")
            cur = sc
        out.append(f"    {label:<38} {med:>12}   [{r}]   {extra}")
    out += ratio_lines(ratio_rows(results), env.unit, 62, 9)
    out += target_lines(targets, env.unit, 72, 10)
    out += error_lines(env.errors)
    print("\n".join(out), flush=True)


def reading(results, targets, env):
    """A short reading of the numbers.  Every sentence is computed from this
    run's results; the diagnostic ones appear only when their symptom does."""
    lines = []

    def g(sc, k, f):
        return stat(results, sc, k, f)[0] if sc in results and k in results[sc] else None

    t = fmt_time
    shm, shm_n, red, mpq = (g("stream", k, "rate") for k in ("shm", "shm-named", "redis", "mpq"))
    if shm and red and mpq:
        lines.append(
            f"- **One-to-one:** shmchannels delivers {fmt_num(shm)} msg/s on a `new_channel()` channel and "
            f"{fmt_num(shm_n)} msg/s on a named one; RedisChannelLayer {fmt_num(red)} msg/s, RedisPubSub "
            f"{fmt_num(g('stream', 'pubsub', 'rate'))} msg/s, a bare multiprocessing.Queue {fmt_num(mpq)} msg/s "
            f"(synchronous, no event loop).  The shmchannels receiver is the bottleneck: it spends "
            f"{g('stream', 'shm', 'recv_cpu_us'):.2f} µs CPU per message on the `new_channel()` path and "
            f"{g('stream', 'shm-named', 'recv_cpu_us'):.2f} µs on the named path, the sender "
            f"{g('stream', 'shm', 'send_cpu_us'):.2f} µs per message."
        )
    if g("rt", "shm", "p50_us"):
        lines.append(
            f"- **Round trip:** shmchannels p50 {t(g('rt', 'shm', 'p50_us') / 1e6)}, p99 "
            f"{t(g('rt', 'shm', 'p99_us') / 1e6)}, p99.9 {t(g('rt', 'shm', 'p999_us') / 1e6)}; RedisChannelLayer p50 "
            f"{t(g('rt', 'redis', 'p50_us') / 1e6)}; RedisPubSub {t(g('rt', 'pubsub', 'p50_us') / 1e6)}; "
            f"multiprocessing.Queue {t(g('rt', 'mpq', 'p50_us') / 1e6)}.  Both shmchannels processes busy-wait up to "
            f"50 µs for the answer (spin_us) instead of sleeping, which is what keeps them under a kernel wake-up; "
            f"on 2 vCPUs shared with the parent, redis-server and other work, the tail is where noise shows first."
        )
    loops, fresh = g("group", "shm", "total_ms"), g("group", "shm", "fresh_ms")
    if loops and fresh:
        lines.append(
            f"- **group_send to 1000:** with Channels-style consumer loops shmchannels needs {t(loops / 1e3)} until the "
            f"last member has its message, RedisChannelLayer {t(g('group', 'redis', 'total_ms') / 1e3)}, RedisPubSub "
            f"{t(g('group', 'pubsub', 'total_ms') / 1e3)}; with fresh waiters {t(fresh / 1e3)}, "
            f"{t(g('group', 'redis', 'fresh_ms') / 1e3)} and {t(g('group', 'pubsub', 'fresh_ms') / 1e3)}.  The "
            f"shmchannels group_send call itself takes {t(g('group', 'shm', 'call_ms') / 1e3)} (one record per "
            f"receiving process; RedisChannelLayer's takes {t(g('group', 'redis', 'call_ms') / 1e3)}: one sorted-set "
            f"entry per member, then one BZPOPMIN per message on the receiving side).  The rest is the receiving "
            f"processes waking, fanning the record out and running 500 tasks each."
        )
        if loops > 3 * fresh:
            lines.append(
                f"- *Diagnosis:* shmchannels' consumer loops are {loops / fresh:.1f}x slower than its fresh waiters "
                f"(RedisChannelLayer: {g('group', 'redis', 'total_ms') / g('group', 'redis', 'fresh_ms'):.1f}x).  A "
                f"consumer that got its message calls receive() again, finds nothing, and - because traffic arrived "
                f"within the last 5 ms - busy-waits spin_us (50 µs) with the event loop blocked before parking; "
                f"{GROUP_MEMBERS} consumers x 50 µs = {GROUP_MEMBERS * 0.05:.0f} ms per broadcast per process, "
                f"before the last consumer even runs."
                + (f"  The diagnostic run of the same layer with `spin_us=0` takes "
                   f"{t(g('group', 'shm-nospin', 'total_ms') / 1e3)} with consumer loops and "
                   f"{t(g('group', 'shm-nospin', 'fresh_ms') / 1e3)} with fresh waiters."
                   if g("group", "shm-nospin", "total_ms") else "")
            )
    big, big_n = g("big", "shm", "rate"), g("big", "shm-named", "rate")
    if big and big_n:
        lines.append(
            f"- **64 KiB:** {fmt_num(big)} msg/s = {g('big', 'shm', 'gbps'):.2g} GB/s on a `new_channel()` channel, "
            f"{fmt_num(big_n)} msg/s = {g('big', 'shm-named', 'gbps'):.2g} GB/s on a named one (multiprocessing.Queue "
            f"{fmt_num(g('big', 'mpq', 'rate'))} msg/s, RedisChannelLayer {fmt_num(g('big', 'redis', 'rate'))} msg/s)."
        )
        rss, rss_n = g("big", "shm", "recv_rss_mb"), g("big", "shm-named", "recv_rss_mb")
        if big < big_n / 4:
            lines.append(
                f"- *Diagnosis:* the `new_channel()` path is {big_n / big:.0f}x slower than the named path at 64 KiB "
                f"({g('big', 'shm', 'recv_cpu_us'):.0f} vs {g('big', 'shm-named', 'recv_cpu_us'):.1f} µs receiver CPU "
                f"per message) and its receiver peaked at {rss:.0f} MB RSS (named: {rss_n:.0f} MB).  The demultiplexer "
                f"drains the ring until it is empty while the sender keeps refilling it, so the stream piles up as "
                f"fresh 64 KiB bytes objects in the receiving process (page faults, cache misses) before receive() "
                f"consumes any; the 8 MiB ring bounds nothing."
            )
    if g("idle", "shm", "pct") is not None:
        lines.append(
            f"- **Idle:** a receiver parked in `receive()` used {g('idle', 'shm', 'pct'):.3f}% of a CPU (named: "
            f"{g('idle', 'shm-named', 'pct'):.3f}%); RedisChannelLayer {g('idle', 'redis', 'pct'):.3f}%, "
            f"multiprocessing.Queue {g('idle', 'mpq', 'pct'):.3f}%, RedisPubSub {g('idle', 'pubsub', 'pct'):.3f}% "
            f"(its reader task polls every 0.1 s)."
        )
    lines += target_readings(targets, env.unit)
    if env.leftovers:
        lines.append(f"- **The layer left files in /dev/shm** after {len(env.leftovers)} scenario run(s) (removed by "
                     "the benchmark): " + "; ".join(f"{p}: {', '.join(f)}" for p, f in env.leftovers[:3]) + ".")
    else:
        lines.append("- Nothing was left in /dev/shm after any clean scenario run (checked after every one).")
    if env.killed_leftovers:
        lines.append(f"- {len(env.killed_leftovers)} failed scenario run(s) (listed below) left files in /dev/shm "
                     "after the benchmark terminated their processes; removed.")
    retries = sum(x for x in vals(results, "group", "shm", "setup_retries") if x) if "group" in results else 0
    if retries:
        lines.append(f"- shmchannels' `group_add` raised `sqlite3.OperationalError: database is locked` {retries} "
                     "time(s) while the two receivers set up their groups concurrently (retried by the benchmark).")
    return "\n".join(lines)


def markdown(results, targets, info, env, started, elapsed, png_name):
    a = env.args
    md = ["## Layer", "", generated_line("layer.py", a, env.unit, started, elapsed), ""]
    md.append(f"**Machine:** {info['nproc']} vCPU ({info['cpu']}), {info['mem']} RAM, Linux {info['kernel']}, "
              f"load average (1/5/15 min) at start {info['loadavg']}, highest 1-min value seen between "
              f"measurements {env.max_load:.2f}, at the end {os.getloadavg()[0]:.2f} (a 2-vCPU box shared with other "
              f"work: anything above ~0.5 means something else competed for the CPUs).  Before each of the "
              f"{env.measurements} measurements the script waited (up to {a.quiet_wait:g} s each, "
              f"{QUIET_BUDGET:.0f} s in all; {env.waited:.0f} s spent) until no other process was runnable; "
              + (f"{len(env.contended)} started anyway with others busy (number of busy CPUs): "
                 f"{', '.join(env.contended)}." if env.contended else "none started with others busy.")
              + f"  **Layer source:** {info['source']}.  "
              f"**Python:** {info['python']}.  **Packages:** "
              + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + ".")
    md.append("")
    md.append("### Method")
    md.append("")
    md.extend([
        f"- Separate OS processes for every role (multiprocessing start method {START_METHOD_WHY})  Each "
        "process builds its own layer object and uses the async API (`asyncio.run`); multiprocessing.Queue is "
        "used synchronously (`put`/`get`, pickled by multiprocessing as usual), which is its best case.",
        "- A private `redis-server` on a free 127.0.0.1 port with `--save '' --appendonly no` (and the pubsub "
        "output-buffer limit lifted, because the pubsub sender outruns its subscriber), stopped at the end.  "
        "Each scenario run uses its own layer prefix, flushes once at the end, and is checked for files left "
        "in /dev/shm.",
        f"- Each measurement is repeated {a.runs} time(s); all variants run one after another inside each run, so "
        "ratios are computed run by run and then summarised (median, min – max).  Sizes adapt: the next run's "
        f"N or M is set from the rates measured so far to take about {env.target:g} s.",
        "- **1. One-to-one:** sender process `await send(ch, msg)` N times, receiver process `await receive(ch)` "
        "N times, msg `{\"type\": \"websocket.receive\", \"text\": \"x\"*100}`.  The receiver makes the "
        "channel (`new_channel()`, name passed to the sender through the parent) or uses the named channel "
        "`\"bench\"`.  Rate = (N-1) / (time from the receiver's first to last message).  Both layers run with "
        f"`capacity={STREAM_CAPACITY}` (more than N) so that capacity is not what is measured (for shmchannels "
        "the 8 MiB ring is then the limit); a sender that gets ChannelFull sleeps "
        f"{SEND_BACKOFF * 1e6:.0f} µs and retries (retries are counted).  One untimed probe message per "
        "direction warms connections first.  The receiver checks that it got exactly N messages of the right "
        "size; its peak RSS (`ru_maxrss`) is reported.",
        f"- **2. Round trip:** the client makes its reply channel with `new_channel()`, sends `{{\"type\": \"req\", "
        f"\"reply\": ..., \"text\": \"x\"*100}}` to the server's channel (named `\"bench-rt\"` like a worker's; "
        f"RedisPubSub uses a `new_channel()` of the server because it only receives on channels subscribed before "
        f"the first send), the server echoes to `reply`; {RT_WARMUP} warm-up round trips, then M sequential ones "
        "timed with `perf_counter_ns` in the client.  mp.Queue: two queues.",
        f"- **3. group_send:** two receiver processes each make {GROUP_MEMBERS} channels with `new_channel()` and "
        f"`group_add` them to one group (for RedisPubSub too: each process adds only its own channels, which is "
        f"exactly what that layer supports); a third process calls `group_send` once per repetition.  Time = "
        "last receive() return in either receiver minus `time.monotonic_ns()` just before `group_send` "
        "(CLOCK_MONOTONIC is system-wide).  Two ways of receiving, in the same processes: **consumer loops** "
        f"({GROUP_MEMBERS} tasks per process, each `while True: await receive(its channel)` for the whole "
        "series, as Channels consumers do; this is the main figure) and **fresh waiters** (per repetition "
        f"{GROUP_MEMBERS} new tasks each parked in one `receive()` before the send).  {a.reps} timed "
        "repetitions of each per run after one warm-up (the very first group_send of a run is reported as "
        "'cold'); per run the median repetition.  multiprocessing.Queue: not applicable (no groups).  "
        "A diagnostic variant runs shmchannels with `spin_us=0` (receive-side busy-wait off); it has no target.",
        "- **4. 64 KiB:** as 1 with `{\"type\": \"x\", \"bytes\": b\"z\"*65536}`; GB/s counts the 65536 payload bytes.",
        f"- **5. Idle CPU:** one receiver parked in `await receive(ch)` with no traffic for "
        f"{1.0 if a.quick else a.idle_secs:g} s (entered 0.5 s after its last message); CPU = "
        "`resource.getrusage(RUSAGE_SELF)` user+sys over the window / wall time.",
    ])
    md.append("")
    md.append("### Results")
    md.append("")
    md.append("| scenario | variant | median | min – max | notes |")
    md.append("|---|---|---:|---|---|")
    titles = {"stream": "1. one-to-one 100 B", "rt": "2. round trip", "group": "3. group_send 1000",
              "big": "4. 64 KiB one-to-one", "idle": "5. idle CPU"}
    for sc, label, med, r, extra in result_rows(results):
        md.append(f"| {titles[sc]} | {label} | {med} | {r} | {extra} |")
    md.append("")
    md += closing_sections(ratio_rows(results), targets, env.unit, "Layer benchmark: medians with min – max whiskers",
                           png_name, reading(results, targets, env), env.errors)
    return "\n".join(md) + "\n"


COLORS = {SHM: "#1f77b4", REDIS: "#d62728", PUBSUB: "#ff7f0e", MPQ: "#2ca02c"}


def chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    fig.suptitle("Channel layers on one host: shmchannels vs channels_redis vs multiprocessing.Queue "
                 "(bars: median over runs; whiskers: min – max)", fontsize=12)

    def bars(ax, sc, fields, fmt, title, xlabel, log=True, target=None, target_label=None, legend=None):
        """Horizontal bars, one group per variant, one bar per field."""
        if sc not in results:
            ax.set_visible(False)
            return
        keys = [k for k in SCENARIOS[sc] if stat(results, sc, k, fields[0])[0] is not None]
        if not keys:
            ax.set_visible(False)
            return
        h = 0.8 / len(fields)
        allv = []
        for i, field in enumerate(fields):
            st = [stat(results, sc, k, field) for k in keys]
            meds, los, his = [x[0] for x in st], [x[1] for x in st], [x[2] for x in st]
            allv += los + his
            ys = [j - 0.4 + h * (i + 0.5) for j in range(len(keys))]
            ax.barh(ys, meds, height=h * 0.9,
                    xerr=[[m - lo for m, lo in zip(meds, los)], [hi - m for m, hi in zip(meds, his)]],
                    color=[COLORS[VARIANTS[k][0]] for k in keys], alpha=1.0 if i == 0 else 0.5,
                    hatch=None if i == 0 else "//", edgecolor="k", linewidth=0.3, capsize=2,
                    error_kw={"elinewidth": 0.8}, label=legend[i] if legend else None)
            for yy, m, hi in zip(ys, meds, his):
                ax.text(hi, yy, "  " + fmt(m), va="center", ha="left", fontsize=7.5)
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels([VARIANTS[k][2] for k in keys], fontsize=8.5)
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
            pos = [v for v in allv if v and v > 0]
            ax.set_xlim(min(pos) / 3, max(pos) * 12)
        if target is not None:
            ax.axvline(target, color="k", ls="--", lw=1)
            ax.text(target, -0.45, f" {target_label}", fontsize=8, va="bottom")
        if legend:
            grey_legend(ax, loc="lower right")
        ax.set_title(title, fontsize=10.5)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(axis="x", which="both", alpha=0.25)

    bars(axes[0, 0], "stream", ["rate"], fmt_rate, "1. One-to-one throughput, 100-char message",
         "messages/s received (log)")
    bars(axes[0, 1], "rt", ["p50_us", "p99_us"], lambda v: fmt_time(v / 1e6),
         "2. Round trip via a reply channel", "µs per round trip (log)", legend=["p50", "p99"])
    bars(axes[1, 0], "group", ["total_ms", "fresh_ms"], lambda v: fmt_time(v / 1e3),
         "3. group_send to 1000 members in 2 processes", "ms until all 1000 received (log)",
         legend=["500 consumer loops / process", "fresh receive() per member"])
    bars(axes[1, 1], "big", ["rate"], fmt_rate, "4. 64 KiB messages one-to-one", "messages/s received (log)",
         target=50_000, target_label="target 50k/s")
    bars(axes[1, 2], "idle", ["pct"], lambda v: f"{v:.3f}%", "5. Idle receiver CPU",
         "% of one CPU while parked (log)", target=1.0, target_label="target < 1%")

    # round-trip latency CDF, one line per run (a disturbed run shows as an outlier line)
    ax = axes[0, 2]
    if "rt" in results:
        for k in SCENARIOS["rt"]:
            for i, r in enumerate(x for x in results["rt"][k] if x):
                lat = r["lat_ns"]  # sorted
                step = max(1, len(lat) // 2000)
                xs = [lat[j] / 1e3 for j in range(0, len(lat), step)] + [lat[-1] / 1e3]
                ys = [j / len(lat) for j in range(0, len(lat), step)] + [1.0]
                ax.plot(xs, ys, color=COLORS[VARIANTS[k][0]], lw=1, alpha=0.7,
                        label=VARIANTS[k][2] if i == 0 else None)
        ax.set_xscale("log")
        ax.set_xlabel("round-trip latency, µs (log)", fontsize=9)
        ax.set_ylabel("fraction of round trips", fontsize=9)
        ax.set_title("2. Round-trip latency CDF (one line per run)", fontsize=10.5)
        ax.axhline(0.99, color="grey", lw=0.6, ls=":")
        ax.text(ax.get_xlim()[0], 0.99, " p99", fontsize=7, va="bottom", color="grey")
        ax.legend(fontsize=8, loc="center right")
        ax.grid(which="both", alpha=0.25)
    else:
        ax.set_visible(False)

    save_chart(fig, path, top=0.96)


# ----------------------------------------------------------------------- main


def parse_args(argv=None):
    p = new_parser(__doc__, quick="short smoke run (1 run, ~0.3 s per measurement)",
                   runs="repetitions of every measurement (default 5; 1 with --quick)",
                   write="with --quick or --only: still rewrite docs/benchmarks.md and the PNG",
                   only=",".join(SCENARIOS), only_help=f"comma-separated subset of {','.join(SCENARIOS)}")
    p.add_argument("--reps", type=int, default=None, help="group_send repetitions per run (default 10; 3 with --quick)")
    p.add_argument("--idle-secs", type=float, default=3.0, help="idle window in seconds (default 3)")
    p.add_argument("--target-secs", type=float, default=2.0, help="aimed duration of one measurement (default 2)")
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="before each measurement wait up to this many seconds for other busy processes to "
                        "finish (default 60; 0 with --quick)")
    a = parse(p, argv, md=DOC, png=PNG, choices=SCENARIOS, kind="scenario",
              md_help="markdown file whose layer section is rewritten", png_help="chart path")
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
    c_src = os.path.join(pkg, "_shm.c")
    built = [f for f in os.listdir(pkg) if f.startswith("_shm.") and f.endswith(".so")]
    if os.path.exists(c_src) and built and os.path.getmtime(os.path.join(pkg, built[0])) < os.path.getmtime(c_src):
        warning = "shmchannels/_shm.c is newer than the built extension: rebuild (pip install -e .) first"
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


def main(argv=None):
    args = parse_args(argv)
    binary = check_prerequisites()
    write = docs_wanted(args, full=not args.quick and set(args.only) == set(SCENARIOS))
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
    print_report(results, targets, env)
    print(f"\ntotal runtime {elapsed:.0f} s", flush=True)
    if env.leftovers:
        print(f"WARNING: the layer left files in /dev/shm after clean scenario runs (removed): {env.leftovers}", flush=True)
    if env.killed_leftovers:
        print(f"note: removed files of failed scenario runs from /dev/shm: {env.killed_leftovers}", flush=True)
    if write:
        write_docs(args, (START, END), functools.partial(chart, results),
                   lambda png_name: markdown(results, targets, info, env, started, elapsed, png_name))
    return 1 if env.errors else 0


if __name__ == "__main__":
    sys.exit(main())
