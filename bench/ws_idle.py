#!/usr/bin/env python3
"""10,000 idle WebSockets on one server: memory per connection, and what they
do to another client's echo.

    .venv/bin/python bench/ws_idle.py            # full run (3 runs), writes bench/results/ws_idle.json
    .venv/bin/python bench/ws_idle.py --quick    # smoke run (2000 idle); writes only with --write or --results-dir

For each server, in one run: start it, time a client's echo round trips (the
baseline), open the idle connections (2 client processes; they answer pings
and send nothing), let it settle, read the server's memory, time the same
echo again, close everything.

    shm       shmchannels serve, 1 protocol server + 1 worker (bench_shm:routes):
              memory is the protocol server's, where the sockets live
    uvicorn   uvicorn, an ASGI 3 echo app (bench_asgi:app) in the server process

Memory is RssAnon from /proc/PID/status (the process's own pages: the bus's
shared-memory rings count in VmRSS of every process that maps them, and are
not per connection).  Helpers: bench/_wsclient.py, bench/_servers.py.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import contextlib  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import multiprocessing as mp  # noqa: E402
import time  # noqa: E402

import _wsclient  # noqa: E402
from _common import BenchError, PipeChild, free_port, log, percentile  # noqa: E402
from _report import error_lines, ratios, stat, vals  # noqa: E402
from _results import num, print_tables, ratio_table, span_cell, table, target, target_table, write  # noqa: E402
from _run import interruptible, new_parser, parse, require_modules, results_dir  # noqa: E402
from _servers import Server, ServerRun, check_runs_snapshot, expect_hello, raise_nofile, server_env, venv_exe  # noqa: E402

MSG_SIZE = 100
VARIANTS = {"idle": {
    "shm": ("shmchannels serve (1 protocol server + 1 worker)", "#1f77b4"),
    "uvicorn": ("uvicorn (ASGI 3, in-process)", "#2ca02c"),
}}
PACKAGES = ("shmchannels", "uvicorn", "websockets", "uvloop")


def server_argv(key, port, prefix):
    if key == "shm":
        return [venv_exe("shmchannels"), "serve", "--bind", f"127.0.0.1:{port}", "--protocol-servers", "1",
                "--workers", "1", "--routing", "bench_shm:routes", "--prefix", prefix, "--log-level", "warning",
                "--backlog", "4096"]
    return [venv_exe("uvicorn"), "bench_asgi:app", "--host", "127.0.0.1", "--port", str(port), "--http", "httptools",
            "--log-level", "warning", "--no-access-log", "--lifespan", "off", "--backlog", "4096"]


def rss_anon(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no RssAnon for pid {pid}")


def echo(env, port):
    a = env.args
    cfg = {"port": port, "path": "/echo/", "size": MSG_SIZE, "warm": a.echo_warm, "m": a.echo_m, "timeout": 10.0}
    client = PipeChild(env.ctx, "echo-client", _wsclient.echo_main, (cfg,), daemon=True)
    try:
        lat = sorted(client.expect("result", 60 + a.echo_m * 0.02)["lat_ns"])
    finally:
        client.stop(10)
    return {"p50": percentile(lat, 50) / 1e9, "p99": percentile(lat, 99) / 1e9}


def run_idle(env, key, rnd):
    a = env.args
    port = free_port()
    prefix = env.new_prefix() if key == "shm" else None
    srv = Server(VARIANTS["idle"][key][0], server_argv(key, port, prefix), port, expect_hello,
                 env=server_env(env.snap), prefix=prefix, log_path=os.path.join(env.logdir, f"idle-{key}-{rnd}.log"))
    srv.start()
    holders = []
    try:
        if prefix:
            check_runs_snapshot(srv, env.snap)
            owner = next(p for p, role in srv.shm_roles().items() if role == "protocol")
        else:
            owner = srv.pids()[0]
        base = echo(env, port)
        mem0 = rss_anon(owner)
        per = [a.idle // a.client_procs + (1 if i < a.idle % a.client_procs else 0) for i in range(a.client_procs)]
        for i, n in enumerate(per):
            cfg = {"port": port, "path": "/echo/", "n": n, "size": MSG_SIZE, "timeout": 60.0, "index": i,
                   "connect_concurrency": 50}
            holders.append(PipeChild(env.ctx, f"idle-client-{i}", _wsclient.bcast_main, (cfg,), daemon=True))
        ready = [c.expect("ready", 600) for c in holders]
        time.sleep(a.settle)
        mem1 = rss_anon(owner)
        loaded = echo(env, port)
        for c in holders:
            c.send("exit")
        unclosed = sum(c.expect("bye", 60)["unclosed"] for c in holders)
        codes = [c.stop(10) for c in holders]
        holders = []
        if any(codes):
            raise BenchError(f"idle client exit codes {codes}")
        if not srv.alive():
            raise BenchError(f"{srv.name} died")
    except BenchError as exc:
        raise BenchError(f"{exc}{srv._tail()}") from None
    finally:
        for c in holders:
            with contextlib.suppress(OSError):
                c.send("exit")
            c.stop(5)
        env.stop_server(srv, f"run {rnd + 1} idle/{key}")
    return {"per_conn_kib": (mem1 - mem0) / a.idle / 1024, "mem0": mem0, "mem1": mem1, "idle": a.idle,
            "connect_s": max(r["connect_s"] for r in ready), "refused": sum(r["refused"] for r in ready),
            "unclosed": unclosed, "p50_base": base["p50"], "p99_base": base["p99"],
            "p50_idle": loaded["p50"], "p99_idle": loaded["p99"], "p99_ratio": loaded["p99"] / base["p99"]}


def describe(r):
    return (f"{r['per_conn_kib']:.1f} KiB/conn ({r['mem0'] >> 20} -> {r['mem1'] >> 20} MiB)  echo p99 "
            f"{r['p99_base'] * 1e6:.0f} -> {r['p99_idle'] * 1e6:.0f} µs  connect {r['connect_s']:.1f} s")


def tables(results, unit):
    rows = []
    for key in results["idle"]:
        label = VARIANTS["idle"][key][0]
        for field, metric, f in (("per_conn_kib", "memory per idle connection (KiB)", "f1"),
                                 ("p99_base", "echo p99, no idle connections", "time"),
                                 ("p99_idle", "echo p99, with the idle connections", "time"),
                                 ("p99_ratio", "echo p99 with / without", "x2")):
            med, lo, hi = stat(results, "idle", key, field)
            notes = ""
            if field == "per_conn_kib" and med is not None:
                n = stat(results, "idle", key, "idle")[0]
                m0, m1 = stat(results, "idle", key, "mem0")[0], stat(results, "idle", key, "mem1")[0]
                conn = stat(results, "idle", key, "connect_s")[0]
                notes = (f"{n:.0f} connections; RssAnon {m0 / 2**20:.0f} -> {m1 / 2**20:.0f} MiB; "
                         f"{conn:.2g} s to connect all")
                unclosed = sum(r["unclosed"] for r in results["idle"][key] if r)
                if unclosed:
                    notes += f"; **{unclosed} connection(s) did not close cleanly**"
            rows.append((label, metric, num(med, f), span_cell(lo, hi, f), notes))
    ratio_rows = []
    if {"shm", "uvicorn"} <= set(results["idle"]):
        ratio_rows.append(("memory per idle connection: shmchannels / uvicorn",
                           ratios(results, "idle", "shm", "uvicorn", "per_conn_kib")))
    targets = []
    if "shm" in results["idle"]:
        targets.append(target("shmchannels echo p99 with the idle connections <= 1.5x without (unchanged within "
                              "noise)", vals(results, "idle", "shm", "p99_ratio"), lambda v: v <= 1.5))
    return [table("results", "Results", ["server", "metric", "median", "min – max", "notes"], rows, "llrll"),
            ratio_table(ratio_rows, unit), target_table(targets, unit)]


def parse_args(argv=None):
    p = new_parser(__doc__, quick="smoke run: 1 run, 2000 idle connections", runs="runs (default 3; 1 with --quick)",
                   write="with --quick or --only: still write bench/results/ws_idle.json",
                   only="idle", only_help="scenarios: idle")
    p.add_argument("--variants", default=None, help="comma-separated subset: shm,uvicorn (default both)")
    p.add_argument("--idle", type=int, default=None, help="idle connections (default 10000)")
    p.add_argument("--client-procs", type=int, default=2, help="client processes holding them (default 2)")
    p.add_argument("--echo-m", type=int, default=None, help="timed echo round trips (default 3000)")
    p.add_argument("--echo-warm", type=int, default=300, help="warm-up round trips (default 300)")
    p.add_argument("--settle", type=float, default=2.0, help="seconds after the last connect (default 2)")
    p.add_argument("--quiet-wait", type=float, default=None, help="seconds to wait for a quiet box (default 30)")
    runs_given = "--runs" in (argv if argv is not None else sys.argv)
    a = parse(p, argv, choices=VARIANTS, kind="scenario")
    if not runs_given and not a.quick:
        a.runs = 3
    a.idle = a.idle or (2000 if a.quick else 10000)
    a.echo_m = a.echo_m or (1000 if a.quick else 3000)
    a.quiet_wait = (0.0 if a.quick else 30.0) if a.quiet_wait is None else a.quiet_wait
    a.variants = [s.strip() for s in a.variants.split(",")] if a.variants else None
    return a


def main(argv=None):
    args = parse_args(argv)
    require_modules(("uvicorn",))
    out_dir = results_dir(args, full=not args.quick and args.variants is None)
    nofile = raise_nofile(max(16384, args.idle * 2 + 1024))
    if nofile < args.idle + 512:
        raise SystemExit(f"the open-file limit is {nofile}: too low for {args.idle} connections")
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    results = {"idle": {k: [] for k in VARIANTS["idle"] if args.variants is None or k in args.variants}}
    with interruptible(), contextlib.ExitStack() as cleanup:
        env = ServerRun(args, cleanup, logs="ws-idle", quiet_budget=300.0, prefix_tag="bi", unit="run")
        env.ctx = mp.get_context("spawn")
        info = env.machine_info(PACKAGES)
        log(f"{args.runs} run(s) of {list(results['idle'])}, {args.idle} idle connections; open-file limit {nofile}")
        for run, where in env.runs():
            for key in results["idle"]:
                results["idle"][key].append(env.measure(where, f"idle/{key}", f"idle {VARIANTS['idle'][key][0]:<50}",
                                                        functools.partial(run_idle, env, key, run), describe))
    elapsed = time.monotonic() - t_start
    env.note_source_change(info)
    tabs = tables(results, env.unit)
    print_tables(tabs)
    print("\n".join((["\nPROBLEMS", *env.problems] if env.problems else []) + error_lines(env.errors)), flush=True)
    env.print_runtime(elapsed)
    if out_dir:
        params = {k: getattr(args, k) for k in ("runs", "quick", "variants", "idle", "client_procs", "echo_m",
                                                "echo_warm", "settle", "quiet_wait")}
        write(out_dir, "ws_idle", meta=env.meta(info, elapsed), params=params, runs=results, tables=tabs,
              started=started)
    return 1 if env.errors else 0


if __name__ == "__main__":
    sys.exit(main())
