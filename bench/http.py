#!/usr/bin/env python3
"""HTTP benchmark: shmchannels serve vs uvicorn, daphne and gunicorn, same app logic.

    .venv/bin/python bench/http.py            # full run (5 rounds), writes bench/results/http.json
    .venv/bin/python bench/http.py --quick    # smoke run; writes results only with --write or --results-dir
    .venv/bin/python bench/http.py --runs 3 --only shm,uvicorn

Every server answers GET / with 200 text/plain "Hello, world!":

  shm        shmchannels serve, 1 protocol server + 1 worker, a Channels-1 consumer (bench/apps/bench_shm.py)
  uvicorn    uvicorn, 1 process, httptools, an ASGI 3 app (bench/apps/bench_asgi.py)
  daphne     daphne, the same ASGI 3 app
  gunicorn   gunicorn, 1 sync worker, a WSGI app (bench/apps/bench_wsgi.py)
  shm-wsgi   shmchannels serve --wsgi, the same WSGI app through the workers' WSGI adapter
  shm-metrics  "shm" with --metrics on, /metrics scraped every second during the warm-up and the load
  shm-log    "shm" with its access log on (the default of serve: --log-level info, to its stderr, a file here)
  uvicorn-log  "uvicorn" with its access log on (--log-level info), the same way
  shm-django   shmchannels serve --wsgi, a Django hello view (bench/apps/bench_django.py)
  gunicorn-django  gunicorn gthread, 2 workers x 4 threads, the same Django project
  floor-2proc  the floor of serve's design: a protocol server and a worker process with
               nothing but httptools, msgpack and two pipes between them (bench/_http_floor.py)

Load: wrk on 127.0.0.1 (pinned to one CPU with taskset), a warm-up then a
timed run per server; servers interleaved round by round, each round a fresh
server process started and stopped by this script (also on errors and
Ctrl-C).  Helpers: bench/_servers.py, bench/_common.py.
"""

import os
import sys

# This file is called http.py: keep its directory out of the way of the
# standard library's ``http`` package (sys.path[0] is the script's directory).
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import contextlib  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402

from _common import BenchError, fmt_num, fmt_time, free_port, log, median  # noqa: E402
from _report import bar, error_lines, panel, ratios, stat  # noqa: E402
from _results import num, print_tables, ratio_table, span_cell, table, target, target_table, write  # noqa: E402
from _run import interruptible, new_parser, parse, require_program, results_dir  # noqa: E402
from _servers import (  # noqa: E402
    Server,
    ServerRun,
    check_runs_snapshot,
    cpu_by_role,
    cpu_times,
    expect_hello,
    run_wrk,
    server_env,
    venv_exe,
    wrk_version,
)

QUIET_BUDGET = 300.0  # seconds a run may spend in all waiting for other processes to leave the CPUs
PACKAGES = ("shmchannels", "uvicorn", "httptools", "uvloop", "daphne", "Twisted", "gunicorn")

# key -> (label, colour)
SERVERS = {
    "shm": ("shmchannels (consumer)", "#1f77b4"),
    "uvicorn": ("uvicorn (httptools, ASGI 3)", "#2ca02c"),
    "daphne": ("daphne (ASGI 3)", "#d62728"),
    "gunicorn": ("gunicorn sync (WSGI)", "#9467bd"),
    "shm-wsgi": ("shmchannels --wsgi (WSGI)", "#17becf"),
    "shm-metrics": ("shmchannels, metrics scraped 1/s", "#ff7f0e"),
    "shm-log": ("shmchannels, access log on", "#8c564b"),
    "uvicorn-log": ("uvicorn, access log on", "#bcbd22"),
    "shm-django": ("shmchannels --wsgi, Django view", "#e377c2"),
    "gunicorn-django": ("gunicorn gthread 2x4, Django view", "#7f7f7f"),
    "floor-2proc": ("floor: 2 processes, no layer", "#aec7e8"),
}
SCRAPE_EVERY = 1.0


def server_argv(key, port, prefix, metrics_port=None):
    bind = f"127.0.0.1:{port}"
    if key in ("shm", "shm-wsgi", "shm-metrics", "shm-log", "shm-django"):
        wsgi = {"shm-wsgi": "bench_wsgi:app", "shm-django": "bench_django:application"}.get(key)
        app = ["--wsgi", wsgi] if wsgi else ["--routing", "bench_shm:routes"]
        metrics = ["--metrics", f"127.0.0.1:{metrics_port}"] if metrics_port else []
        level = "info" if key == "shm-log" else "warning"
        return [venv_exe("shmchannels"), "serve", "--bind", bind, "--protocol-servers", "1", "--workers", "1",
                *app, *metrics, "--prefix", prefix, "--log-level", level]
    if key in ("uvicorn", "uvicorn-log"):
        logs = ["--log-level", "info"] if key == "uvicorn-log" else ["--log-level", "warning", "--no-access-log"]
        return [venv_exe("uvicorn"), "bench_asgi:app", "--host", "127.0.0.1", "--port", str(port),
                "--http", "httptools", *logs, "--lifespan", "off"]
    if key == "daphne":
        return [venv_exe("daphne"), "-b", "127.0.0.1", "-p", str(port), "-v", "0", "bench_asgi:app"]
    if key == "gunicorn":
        return [venv_exe("gunicorn"), "-w", "1", "-k", "sync", "-b", bind, "--log-level", "warning",
                "bench_wsgi:app"]
    if key == "floor-2proc":
        return [sys.executable, os.path.join(_HERE, "_http_floor.py"), "--bind", bind]
    if key == "gunicorn-django":
        return [venv_exe("gunicorn"), "-w", "2", "-k", "gthread", "--threads", "4", "-b", bind,
                "--log-level", "warning", "bench_django:application"]
    raise KeyError(key)


class Env(ServerRun):
    def __init__(self, args, cleanup):
        super().__init__(args, cleanup, logs="http", quiet_budget=QUIET_BUDGET, prefix_tag="bh", unit="round")
        self.headers = {}  # key -> response headers of GET / (for the report)
        self.snapshot_checked = False
        self.loops = {}  # key -> "uvloop" / "asyncio", from the server processes' memory maps


def event_loop(pids, roles):
    """'uvloop' if the serving process has uvloop's extension mapped, else 'asyncio'."""
    for pid in pids:
        if roles and roles.get(pid) != "protocol":
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                if "uvloop/loop." in f.read():
                    return "uvloop"
        except OSError:
            pass
    return "asyncio"


class Scraper(threading.Thread):
    """GET /metrics every SCRAPE_EVERY seconds, as a Prometheus server would."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.done = threading.Event()
        self.times = []
        self.sizes = []
        self.errors = 0

    def run(self):
        while not self.done.wait(SCRAPE_EVERY):
            t0 = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:
                    self.sizes.append(len(r.read()))
                self.times.append(time.monotonic() - t0)
            except OSError:
                self.errors += 1

    def stop(self):
        self.done.set()
        self.join(10)


def measure(env, key, rnd):
    a = env.args
    port = free_port()
    metrics_port = free_port() if key == "shm-metrics" else None
    prefix = env.new_prefix() if key.startswith("shm") else None
    srv = Server(SERVERS[key][0], server_argv(key, port, prefix, metrics_port), port, expect_hello,
                 env=server_env(env.snap), prefix=prefix, log_path=os.path.join(env.logdir, f"{key}-{rnd}.log"))
    scraper = None
    try:
        srv.start()
        if metrics_port:
            scraper = Scraper(metrics_port)
            scraper.start()
        env.headers.setdefault(key, expect_hello(port))
        roles = {}
        if prefix:
            roles = srv.shm_roles()
            if not env.snapshot_checked:
                check_runs_snapshot(srv, env.snap)
                env.snapshot_checked = True
        pids = srv.pids()
        leader = srv.proc.pid
        env.loops.setdefault(key, event_loop(pids, roles))
        if key == "floor-2proc":
            roles = {p: ("protocol" if p == leader else "worker") for p in pids}
        if not roles:
            roles = {p: ("master" if (key.startswith("gunicorn") and p == leader) else "server") for p in pids}
        warm, _ = run_wrk(port, a.warmup, a.connections, cpu=a.wrk_cpu)
        if not srv.alive():
            raise BenchError(f"{srv.name} died during the warm-up")
        c0 = cpu_times(pids)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        res, text = run_wrk(port, a.duration, a.connections, cpu=a.wrk_cpu)
        wall = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        c1 = cpu_times(pids)
        if not srv.alive():
            raise BenchError(f"{srv.name} died during the measurement")
        expect_hello(port)  # still answering correctly after the load
    finally:
        if scraper is not None:
            scraper.stop()
        env.stop_server(srv, f"round {rnd + 1} {key}")
    n = res.get("requests") or res["rps"] * a.duration
    by_role, wait_role = cpu_by_role(c0, c1, roles)
    server_cpu = sum(by_role.values())
    wrk_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    bad = res["non2xx"] + sum(res["errors"].values())
    return {
        "rps": res["rps"],
        "p50": res.get("p50"),
        "p75": res.get("p75"),
        "p90": res.get("p90"),
        "p99": res.get("p99"),
        "max": res.get("max"),
        "avg": res.get("avg"),
        "requests": n,
        "errors": res["errors"],
        "non2xx": res["non2xx"],
        "bad": bad,
        "warm_rps": warm["rps"],
        "cpu_us": server_cpu / n * 1e6,
        "cpu_role_us": {r: v / n * 1e6 for r, v in by_role.items()},
        "cores": server_cpu / wall,
        # share of the wall time each role was runnable but waited for a CPU
        "wait_role": {r: v / wall for r, v in wait_role.items()},
        "wrk_cores": wrk_cpu / wall,
        "wrk_cpu_us": wrk_cpu / n * 1e6,
        **({"scrapes": len(scraper.times), "scrape_errors": scraper.errors,
            "scrape_s": median(scraper.times) if scraper.times else None,
            "scrape_bytes": median(scraper.sizes) if scraper.sizes else None} if scraper else {}),
    }


# ------------------------------------------------------------------ reporting


def build_targets(results):
    t = []
    if "shm" in results and "daphne" in results:
        t.append(target("shmchannels req/s >= 2x daphne", ratios(results, "shm", "daphne", "rps"), lambda v: v >= 2))
    if "shm" in results and "uvicorn" in results:
        t.append(target("shmchannels req/s >= 0.6x uvicorn", ratios(results, "shm", "uvicorn", "rps"),
                        lambda v: v >= 0.6))
        t.append(target("shmchannels p99 <= 2x uvicorn's p99", ratios(results, "shm", "uvicorn", "p99"),
                        lambda v: v <= 2))
    if "shm" in results and "uvicorn" in results:
        t.append(target("issue 12: Channels-1 consumer req/s >= 1.3x uvicorn", ratios(results, "shm", "uvicorn", "rps"),
                        lambda v: v >= 1.3))
    if "shm-wsgi" in results and "uvicorn" in results:
        t.append(target("issue 12: --wsgi req/s >= 1.0x uvicorn", ratios(results, "shm-wsgi", "uvicorn", "rps"),
                        lambda v: v >= 1.0))
    if "shm-django" in results and "gunicorn-django" in results:
        t.append(target("issue 12: Django view via --wsgi req/s >= 1.4x gunicorn gthread 2x4",
                        ratios(results, "shm-django", "gunicorn-django", "rps"), lambda v: v >= 1.4))
    if "shm" in results and "shm-log" in results:
        t.append(target("access log on costs <= 15% of req/s (with / without >= 0.85)",
                        ratios(results, "shm-log", "shm", "rps"), lambda v: v >= 0.85))
    return t


RATIO_PAIRS = [
    ("shm", "uvicorn", "rps", "req/s: shmchannels / uvicorn"),
    ("shm", "daphne", "rps", "req/s: shmchannels / daphne"),
    ("shm", "gunicorn", "rps", "req/s: shmchannels / gunicorn sync"),
    ("shm-wsgi", "gunicorn", "rps", "req/s: shmchannels --wsgi / gunicorn sync"),
    ("shm-wsgi", "shm", "rps", "req/s: shmchannels --wsgi / shmchannels consumer"),
    ("shm-wsgi", "uvicorn", "rps", "req/s: shmchannels --wsgi / uvicorn"),
    ("shm-django", "gunicorn-django", "rps", "req/s: Django view, shmchannels --wsgi / gunicorn gthread 2x4"),
    ("shm-metrics", "shm", "rps", "req/s: shmchannels with metrics scraped 1/s / without"),
    ("shm-metrics", "shm", "p99", "p99 latency: shmchannels with metrics scraped 1/s / without"),
    ("shm-log", "shm", "rps", "req/s: shmchannels with its access log / without"),
    ("uvicorn-log", "uvicorn", "rps", "req/s: uvicorn with its access log / without"),
    ("shm", "uvicorn", "p50", "p50 latency: shmchannels / uvicorn"),
    ("shm", "uvicorn", "p99", "p99 latency: shmchannels / uvicorn"),
    ("shm", "daphne", "p99", "p99 latency: shmchannels / daphne"),
    ("shm", "uvicorn", "cpu_us", "server CPU per request: shmchannels / uvicorn"),
    ("floor-2proc", "uvicorn", "rps", "req/s: two-process floor / uvicorn"),
    ("shm", "floor-2proc", "rps", "req/s: shmchannels consumer / two-process floor"),
    ("shm", "floor-2proc", "cpu_us", "server CPU per request: shmchannels / two-process floor"),
]


def ratio_rows(results):
    return [(text, ratios(results, a, b, field)) for a, b, field, text in RATIO_PAIRS if a in results and b in results]


def role_text(results, key):
    per = {}
    for r in results.get(key, []):
        if r:
            for role, v in r["cpu_role_us"].items():
                per.setdefault(role, []).append(v)
    order = ["protocol", "worker", "master", "server", "other"]
    return ", ".join(f"{role} {median(per[role]):.1f}" for role in order if role in per)


def wait_text(results, key):
    """Median share of the wall time each process role sat runnable waiting for a CPU."""
    per = {}
    for r in results.get(key, []):
        if r:
            for role, v in r.get("wait_role", {}).items():
                if role != "master":
                    per.setdefault(role, []).append(v)
    return ", ".join(f"{role} {100 * median(v):.0f}%" for role, v in sorted(per.items()))


def result_rows(results):
    rows = []
    for key in results:
        label = SERVERS[key][0]
        rps = stat(results, key, "rps")
        p50 = stat(results, key, "p50")
        p99 = stat(results, key, "p99")
        cpu = stat(results, key, "cpu_us")
        cores = stat(results, key, "cores")
        wcores = stat(results, key, "wrk_cores")
        bad = sum(r["bad"] for r in results[key] if r)
        failed = sum(1 for r in results[key] if not r)
        notes = [f"server CPU {cpu[0]:.1f} µs/req ({role_text(results, key)}); {cores[0]:.2f} cores busy; "
                 f"wrk {wcores[0]:.2f} cores; waiting for a CPU: {wait_text(results, key)} of the time"
                 if cpu[0] is not None else ""]
        scrapes = [r for r in results[key] if r and r.get("scrape_s") is not None]
        if scrapes:
            notes.append(f"{sum(r['scrapes'] for r in scrapes)} scrapes, median "
                         f"{fmt_time(median([r['scrape_s'] for r in scrapes]))} and "
                         f"{median([r['scrape_bytes'] for r in scrapes]) / 1024:.1f} KiB each, "
                         f"{sum(r['scrape_errors'] for r in scrapes)} failed")
        if bad:
            notes.append(f"**{bad} socket errors / non-2xx in all**")
        if failed:
            notes.append(f"**{failed} round(s) failed**")
        rows.append((label, rps, p50, p99, "; ".join(n for n in notes if n)))
    return rows


def tables(results, targets, unit):
    rows = [(label, num(rps[0], "num"), span_cell(rps[1], rps[2], "num"), num(p50[0], "time"),
             span_cell(p50[1], p50[2], "time"), num(p99[0], "time"), span_cell(p99[1], p99[2], "time"), notes)
            for label, rps, p50, p99, notes in result_rows(results)]
    cols = ["server", "req/s median", "req/s min – max", "p50", "p50 min – max", "p99", "p99 min – max", "notes"]
    return [table("results", "Results", cols, rows, "lrlrlrll"), ratio_table(ratio_rows(results), unit),
            target_table(targets, unit)]


def chart(results):
    return {"png": "bench_http.png", "alt": "HTTP benchmark: medians with min – max whiskers",
            "title": "HTTP hello world, wrk -c50 (bars: median over rounds; whiskers: min – max)",
            "panels": [
                panel("Throughput", "requests/s", [bar(SERVERS[k][0], stat(results, k, "rps")) for k in results], "num",
                      log=False),
                panel("Latency", "seconds (log)", [bar(SERVERS[k][0], stat(results, k, f), series=f)
                                                   for f in ("p50", "p99") for k in results], "time"),
                panel("Server CPU per request", "seconds", [bar(SERVERS[k][0], stat(results, k, "cpu_us"), 1e-6)
                                                            for k in results], "time", log=False)]}


def parse_args(argv=None):
    p = new_parser(__doc__, quick="smoke run: 1 round, 1 s warm-up, 2 s load",
                   runs="rounds (default 5; 1 with --quick)",
                   write="with --quick or --only: still write bench/results/http.json",
                   only=",".join(SERVERS), only_help=f"comma-separated subset of {','.join(SERVERS)}")
    p.add_argument("--duration", type=float, default=None, help="seconds of timed load per server (default 5)")
    p.add_argument("--warmup", type=float, default=None, help="seconds of warm-up load per server (default 2)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--wrk-cpu", type=int, default=None, help="CPU wrk is pinned to (default: the last one)")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="before each measurement wait up to this many seconds until no other process is "
                        "runnable (default 30; 0 with --quick)")
    a = parse(p, argv, choices=SERVERS, kind="server")
    a.duration = a.duration or (2.0 if a.quick else 5.0)
    a.warmup = a.warmup or (1.0 if a.quick else 2.0)
    a.quiet_wait = (0.0 if a.quick else 30.0) if a.quiet_wait is None else a.quiet_wait
    if a.wrk_cpu is None:
        a.wrk_cpu = max(os.sched_getaffinity(0))
    return a


def check_prerequisites(args):
    require_program("wrk", shutil.which("wrk") or os.path.exists("/usr/bin/wrk"))
    need = {"uvicorn": "uvicorn", "daphne": "daphne", "gunicorn": "gunicorn", "gunicorn-django": "gunicorn"}
    missing = [exe for key, exe in need.items() if key in args.only and
               not os.path.exists(os.path.join(os.path.dirname(sys.executable), exe))]
    if missing:
        log(f"missing {missing} in the venv; install the bench extra:\n\n    .venv/bin/pip install -e '.[test,bench]'\n")
        sys.exit(2)


def describe(r):
    """A measurement's progress line."""
    return (f"{fmt_num(r['rps']):>7} req/s  p50 {fmt_time(r['p50']):>8}  p99 {fmt_time(r['p99']):>8}  "
            f"CPU {r['cpu_us']:.1f} µs/req ({', '.join(f'{k} {v:.1f}' for k, v in r['cpu_role_us'].items())}); "
            f"waiting {', '.join(f'{k} {100 * v:.0f}%' for k, v in r['wait_role'].items() if k != 'master')}"
            + (f"  ERRORS {r['errors']} non2xx {r['non2xx']}" if r["bad"] else ""))


def main(argv=None):
    args = parse_args(argv)
    check_prerequisites(args)
    out_dir = results_dir(args, full=not args.quick and set(args.only) == set(SERVERS))
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    results = {k: [] for k in SERVERS if k in args.only}
    with interruptible(), contextlib.ExitStack() as cleanup:
        env = Env(args, cleanup)
        info = env.machine_info(PACKAGES)
        info["versions"]["wrk"] = wrk_version()
        log(f"{args.runs} round(s) of {', '.join(results)}; wrk -c{args.connections} -d{args.duration:g}s "
            f"(warm-up {args.warmup:g}s) pinned to CPU {args.wrk_cpu}")
        for rnd, where in env.runs():
            for key in results:
                results[key].append(env.measure(where, key, f"{SERVERS[key][0]:<30}",
                                                functools.partial(measure, env, key, rnd), describe))
    elapsed = time.monotonic() - t_start
    env.note_source_change(info)
    targets = build_targets(results)
    tabs = tables(results, targets, env.unit)
    print_tables(tabs)
    print("\n".join((["\nPROBLEMS", *env.problems] if env.problems else []) + error_lines(env.errors)), flush=True)
    env.print_runtime(elapsed)
    if out_dir:
        params = {"rounds": args.runs, "quick": args.quick, "only": args.only, "duration_s": args.duration,
                  "warmup_s": args.warmup, "connections": args.connections, "wrk_cpu": args.wrk_cpu,
                  "quiet_wait": args.quiet_wait}
        write(out_dir, "http", meta=env.meta(info, elapsed), params=params, runs=results, tables=tabs,
              chart=chart(results), started=started)
    return 1 if env.errors else 0


if __name__ == "__main__":
    sys.exit(main())
