#!/usr/bin/env python3
"""WebSocket benchmark: echo round trip and a 1000-client chat-room broadcast.

    .venv/bin/python bench/websocket.py            # full run (5 runs), writes bench/results/websocket.json
    .venv/bin/python bench/websocket.py --quick    # smoke run; writes results only with --write or --results-dir
    .venv/bin/python bench/websocket.py --runs 3 --only echo

echo   one client, sequential round trips of a 100-char text frame:
         shm        shmchannels serve (1 protocol server + 1 worker): protocol server ->
                    websocket.receive -> worker consumer -> reply channel -> protocol server
         uvicorn    uvicorn, an ASGI 3 echo app in the server process
         daphne     daphne + a Channels 4 AsyncWebsocketConsumer in the server process
bcast  1000 clients in one room (2 client processes x 500 connections); one of them
       sends a message, time until all 1000 have it:
         shm        shmchannels, 1 protocol server + 1 worker, consumer does Group("room").send(...)
         shm-2ps    the same with 2 protocol servers
         daphne     daphne + Channels 4 + channels_redis RedisChannelLayer (group_add / group_send)
         daphne-pubsub  the same with RedisPubSubChannelLayer (extra, no target)

A private redis-server on a free 127.0.0.1 port is started for the daphne
runs and stopped at the end, like every server process (also on errors and
Ctrl-C).  Helpers: bench/_wsclient.py (the clients), bench/_servers.py,
bench/_common.py; the apps are in bench/apps/.
"""

import os
import sys

# Keep this script's directory from shadowing an installed ``websocket`` module.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import contextlib  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import multiprocessing as mp  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import _wsclient  # noqa: E402
from _common import (  # noqa: E402
    BenchError,
    PipeChild,
    RedisServer,
    find_redis_server,
    fmt_time,
    free_port,
    log,
    median,
    percentile,

)
from _report import bar, error_lines, panel, ratios, roles_text, scenario_ratio_rows, stat, vals  # noqa: E402
from _results import num, print_tables, ratio_table, span_cell, table, target, target_table, write  # noqa: E402
from _run import (  # noqa: E402
    interruptible,
    new_parser,
    parse,
    require_modules,
    require_program,
    results_dir,
)
from _servers import (  # noqa: E402
    Server,
    ServerRun,
    check_runs_snapshot,
    cpu_by_role,
    cpu_times,
    expect_hello,
    raise_nofile,
    server_env,
    venv_exe,
)

QUIET_BUDGET = 300.0
MSG_SIZE = 100  # characters of every text frame
CLIENT_STOP_TIMEOUT = 10.0
PACKAGES = ("shmchannels", "uvicorn", "websockets", "uvloop", "daphne", "Twisted", "autobahn", "channels",
            "channels_redis", "redis", "Django")

VARIANTS = {
    "echo": {
        "shm": ("shmchannels (worker consumer)", "#1f77b4"),
        "uvicorn": ("uvicorn (ASGI 3, in-process)", "#2ca02c"),
        "daphne": ("daphne + Channels 4 (in-process)", "#d62728"),
        # diagnostic, no target: the same shmchannels with the layer's receive-side busy-wait off
        "shm-nospin": ("shmchannels, spin_us=0 (diagnostic)", "#9467bd"),
    },
    "bcast": {
        "shm": ("shmchannels, 1 protocol server", "#1f77b4"),
        "shm-2ps": ("shmchannels, 2 protocol servers", "#17becf"),
        "daphne": ("daphne + Channels 4 + channels_redis", "#d62728"),
        "daphne-pubsub": ("daphne + Channels 4 + RedisPubSub (extra)", "#ff7f0e"),
    },
}
TITLES = {"echo": "echo round trip", "bcast": "broadcast to 1000 clients"}
ROLE_NAMES = {"protocol": "protocol server(s)", "worker": "worker", "master": "master", "server": "server process",
              "redis": "redis-server", "other": "other"}


def server_argv(scenario, key, port, prefix):
    bind = f"127.0.0.1:{port}"
    if key.startswith("shm"):
        ps = "2" if key == "shm-2ps" else "1"
        return [venv_exe("shmchannels"), "serve", "--bind", bind, "--protocol-servers", ps, "--workers", "1",
                "--routing", "bench_shm:routes", "--prefix", prefix, "--log-level", "warning"]
    if key == "uvicorn":
        return [venv_exe("uvicorn"), "bench_asgi:app", "--host", "127.0.0.1", "--port", str(port),
                "--http", "httptools", "--log-level", "warning", "--no-access-log", "--lifespan", "off"]
    if key.startswith("daphne"):
        return [venv_exe("daphne"), "-b", "127.0.0.1", "-p", str(port), "-v", "0", "bench_channels:application"]
    raise KeyError(key)


class Env(ServerRun):
    def __init__(self, args, cleanup):
        super().__init__(args, cleanup, logs="ws", quiet_budget=QUIET_BUDGET, prefix_tag="bw", unit="run")
        self.snap_nospin = None
        self.redis = None
        self.ctx = mp.get_context("spawn")
        self.client_loop = None
        self.ws_impl = {}


def start_client(env, target, cfg, name):
    return PipeChild(env.ctx, name, target, (cfg,), daemon=True)


def redis_cmd(port, *words):
    """One command to the private redis-server (RESP by hand); the raw reply."""
    data = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data.encode())
        return s.recv(1024)


def nospin_snapshot(snap):
    """A second copy of the snapshot whose layer does not busy-wait before
    parking (``DEFAULT_SPIN_US = 0``; `shmchannels serve` has no setting for
    it).  Only for the diagnostic echo variant."""
    nospin = tempfile.mkdtemp(prefix="bench-shm-nospin-")
    shutil.copytree(os.path.join(snap, "shmchannels"), os.path.join(nospin, "shmchannels"))
    path = os.path.join(nospin, "shmchannels", "engine", "core.py")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    patched, n = re.subn(r"^DEFAULT_SPIN_US = \d+", "DEFAULT_SPIN_US = 0", text, flags=re.M)
    if n != 1:
        shutil.rmtree(nospin, ignore_errors=True)
        raise BenchError("cannot find DEFAULT_SPIN_US in shmchannels/engine/core.py for the spin_us=0 variant")
    with open(path, "w", encoding="utf-8") as f:
        f.write(patched)
    return nospin


def start_server(env, scenario, key, rnd):
    port = free_port()
    prefix = env.new_prefix() if key.startswith("shm") else None
    extra = {}
    if key.startswith("daphne") and scenario == "bcast":
        extra["BENCH_REDIS_URL"] = f"redis://127.0.0.1:{env.redis.port}"
        if key == "daphne-pubsub":
            extra["BENCH_LAYER"] = "pubsub"
        if not redis_cmd(env.redis.port, "FLUSHALL").startswith(b"+OK"):
            raise BenchError("redis FLUSHALL failed")
    snap = env.snap_nospin if key == "shm-nospin" else env.snap
    srv = Server(VARIANTS[scenario][key][0], server_argv(scenario, key, port, prefix), port, expect_hello,
                 env=server_env(snap, extra), prefix=prefix,
                 log_path=os.path.join(env.logdir, f"{scenario}-{key}-{rnd}.log"))
    srv.start()  # stops the server itself if it fails
    try:
        roles = srv.shm_roles() if prefix else {}
        pids = srv.pids()
        if not roles:
            roles = {p: "server" for p in pids}
        if key.startswith("daphne") and scenario == "bcast":
            roles[env.redis.pid()] = "redis"
            pids.append(env.redis.pid())
        if prefix:
            check_runs_snapshot(srv, snap)
    except BaseException:
        env.stop_server(srv, f"run {rnd + 1} {scenario}/{key}")
        raise
    return srv, roles, pids


def socket_count(pid):
    n = 0
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                    n += 1
            except OSError:
                pass
    except OSError:
        return None
    return n


# ------------------------------------------------------------------ scenarios


def run_echo(env, key, rnd):
    a = env.args
    srv, roles, pids = start_server(env, "echo", key, rnd)
    client = None
    try:
        cfg = {"port": srv.port, "path": "/echo/", "size": MSG_SIZE, "warm": a.echo_warm, "m": a.echo_m,
               "timeout": 10.0}
        c0 = cpu_times(pids)
        t0 = time.monotonic()
        client = start_client(env, _wsclient.echo_main, cfg, "echo-client")
        res = client.expect("result", 60 + a.echo_m * 0.02)
        wall = time.monotonic() - t0
        c1 = cpu_times(pids)
        if client.stop(CLIENT_STOP_TIMEOUT) != 0:
            raise BenchError(f"echo client exit code {client.proc.exitcode}")
        client = None
        if not srv.alive():
            raise BenchError(f"{srv.name} died")
    except BenchError as exc:
        raise BenchError(f"{exc}{srv._tail()}") from None
    finally:
        if client is not None:
            client.stop(2)
        env.stop_server(srv, f"run {rnd + 1} echo/{key}")
    lat = sorted(res["lat_ns"])
    if len(lat) != a.echo_m:
        raise BenchError(f"{len(lat)} round trips, expected {a.echo_m}")
    total = a.echo_m + a.echo_warm
    by_role, _ = cpu_by_role(c0, c1, roles)
    return {
        "p50": percentile(lat, 50) / 1e9,
        "p90": percentile(lat, 90) / 1e9,
        "p99": percentile(lat, 99) / 1e9,
        "p999": percentile(lat, 99.9) / 1e9,
        "max": lat[-1] / 1e9,
        "mean": sum(lat) / len(lat) / 1e9,
        "m": len(lat),
        "lat_ns": lat,
        "cpu_us": sum(by_role.values()) / total * 1e6,
        "cpu_role_us": {r: v / total * 1e6 for r, v in by_role.items()},
        "wall": wall,
    }


def run_bcast(env, key, rnd):
    a = env.args
    srv, roles, pids = start_server(env, "bcast", key, rnd)
    clients = []
    try:
        per = [a.clients // a.client_procs + (1 if i < a.clients % a.client_procs else 0)
               for i in range(a.client_procs)]
        for i, n in enumerate(per):
            cfg = {"port": srv.port, "path": "/room/", "n": n, "size": MSG_SIZE, "timeout": 30.0, "index": i,
                   "connect_concurrency": 20}
            clients.append(start_client(env, _wsclient.bcast_main, cfg, f"bcast-client-{i}"))
        ready = [c.expect("ready", 180) for c in clients]
        env.client_loop = ready[0]["loop"]
        connect_s = max(r["connect_s"] for r in ready)
        retries = sum(r["retries"] for r in ready)
        refused = sum(r["refused"] for r in ready)
        refusal = next((r["refusal"] for r in ready if r["refusal"]), None)
        if refused:
            log(f"    {refused} handshake(s) refused and retried: {refusal}")
        sockets = [socket_count(p) for p, role in roles.items() if role == "protocol"]
        time.sleep(0.5)
        reps = []
        c0 = None
        for rep in range(a.warm_reps + a.reps):
            if rep == a.warm_reps:
                c0 = cpu_times(pids)
            for i, c in enumerate(clients):
                c.send("go", {"rep": rep, "sender": i == 0, "timeout": 30.0})
            t_send = clients[0].expect("sent", 30)["t0"]
            done = [c.expect("done", 40) for c in clients]
            counts = [d["count"] for d in done]
            if counts != per:
                raise BenchError(f"broadcast {rep}: clients got {counts} messages, expected {per}")
            reps.append({
                "total": (max(d["t_last"] for d in done) - t_send) / 1e9,
                "first": (min(d["t_first"] for d in done) - t_send) / 1e9,
            })
            time.sleep(a.rep_pause)
        c1 = cpu_times(pids)
        for c in clients:
            c.send("exit")
        unclosed = sum(c.expect("bye", 30)["unclosed"] for c in clients)
        codes = [c.stop(CLIENT_STOP_TIMEOUT) for c in clients]
        clients = []
        if any(codes):
            raise BenchError(f"client exit codes {codes}")
        if not srv.alive():
            raise BenchError(f"{srv.name} died")
    except BenchError as exc:
        raise BenchError(f"{exc}{srv._tail()}") from None
    finally:
        for c in clients:
            with_conn_closed(c)
        env.stop_server(srv, f"run {rnd + 1} bcast/{key}")
    timed = reps[a.warm_reps:]
    by_role, _ = cpu_by_role(c0, c1, roles)
    return {
        "total": median([r["total"] for r in timed]),
        "first": median([r["first"] for r in timed]),
        "total_max": max(r["total"] for r in timed),
        "totals": [r["total"] for r in timed],
        "cold": reps[0]["total"],
        "connect_s": connect_s,
        "retries": retries,
        "refused": refused,
        "refusal": refusal,
        "unclosed": unclosed,
        "sockets": sockets,
        "cpu_ms": sum(by_role.values()) / len(timed) * 1e3,
        "cpu_role_ms": {r: v / len(timed) * 1e3 for r, v in by_role.items()},
    }


def with_conn_closed(c):
    """A failed run: closing our pipe end makes the client's loop exit; then reap it."""
    try:
        c.send("exit")
    except OSError:
        pass
    c.stop(5)


# ------------------------------------------------------------------ reporting


def build_targets(results):
    out = []
    if "echo" in results and "shm" in results["echo"]:
        out.append(target("shmchannels echo p50 <= 1 ms", vals(results, "echo", "shm", "p50"),
                          lambda v: v is not None and v <= 1e-3, "time"))
    if "bcast" in results and "shm" in results["bcast"] and "daphne" in results["bcast"]:
        out.append(target("shmchannels broadcast time <= 1/3 of Daphne + channels_redis (Daphne / shm >= 3)",
                          ratios(results, "bcast", "daphne", "shm", "total"), lambda v: v >= 3))
    return out


RATIO_PAIRS = [
    ("echo", "shm", "uvicorn", "p50", "echo p50: shmchannels / uvicorn"),
    ("echo", "shm", "daphne", "p50", "echo p50: shmchannels / daphne + Channels"),
    ("echo", "shm", "uvicorn", "p99", "echo p99: shmchannels / uvicorn"),
    ("echo", "shm", "daphne", "p99", "echo p99: shmchannels / daphne + Channels"),
    ("echo", "shm-nospin", "shm", "p50", "echo p50: shmchannels spin_us=0 (diagnostic) / default"),
    ("bcast", "daphne", "shm", "total", "broadcast time: daphne + channels_redis / shmchannels (1 PS)"),
    ("bcast", "daphne", "shm-2ps", "total", "broadcast time: daphne + channels_redis / shmchannels (2 PS)"),
    ("bcast", "daphne-pubsub", "shm", "total", "broadcast time: daphne + RedisPubSub / shmchannels (1 PS)"),
    ("bcast", "shm-2ps", "shm", "total", "broadcast time: shmchannels 2 PS / 1 PS"),
]


def ratio_rows(results):
    return scenario_ratio_rows(results, RATIO_PAIRS)


def role_cpu(results, sc, key, field, unit):
    return roles_text(results, sc, key, field, unit, ROLE_NAMES)


def result_rows(results):
    """(scenario, variant label, metric, median, range, notes)"""
    rows = []
    if "echo" in results:
        for key in results["echo"]:
            label = VARIANTS["echo"][key][0]
            for field in ("p50", "p99", "mean"):
                med, lo, hi = stat(results, "echo", key, field)
                notes = ""
                if field == "p50" and med is not None:
                    p999 = stat(results, "echo", key, "p999")[0]
                    mx = stat(results, "echo", key, "max")[0]
                    m = stat(results, "echo", key, "m")[0]
                    cpu = stat(results, "echo", key, "cpu_us")[0]
                    notes = (f"p99.9 {fmt_time(p999)}, max {fmt_time(mx)}; M={m:.0f} per run; server CPU {cpu:.0f} "
                             f"µs per round trip ({role_cpu(results, 'echo', key, 'cpu_role_us', 'µs')})")
                failed = sum(1 for r in results["echo"][key] if not r)
                if failed and field == "p50":
                    notes += f"; **{failed} run(s) failed**"
                rows.append(("echo", label, field, num(med, "time"), span_cell(lo, hi, "time"), notes))
    if "bcast" in results:
        for key in results["bcast"]:
            label = VARIANTS["bcast"][key][0]
            med, lo, hi = stat(results, "bcast", key, "total")
            notes = ""
            if med is not None:
                first = stat(results, "bcast", key, "first")[0]
                cold = stat(results, "bcast", key, "cold")[0]
                conn = stat(results, "bcast", key, "connect_s")[0]
                cpu = stat(results, "bcast", key, "cpu_ms")[0]
                worst = stat(results, "bcast", key, "total_max")[2]
                notes = (f"first client after {fmt_time(first)}; slowest repetition {fmt_time(worst)}; first "
                         f"broadcast of a run {fmt_time(cold)}; server CPU {cpu:.3g} ms per broadcast "
                         f"({role_cpu(results, 'bcast', key, 'cpu_role_ms', 'ms')}); 1000 connects took "
                         f"{conn:.2g} s")
                refused = [r["refused"] for r in results["bcast"][key] if r and r.get("refused")]
                if refused:
                    notes += (f"; **{sum(refused)} handshake(s) refused with 503 in {len(refused)} run(s)** "
                              f"(retried by the client; see the reading)")
                socks = [r["sockets"] for r in results["bcast"][key] if r and len(r["sockets"]) > 1]
                if socks:
                    notes += "; sockets per protocol server " + ", ".join("/".join(map(str, s)) for s in socks)
            failed = sum(1 for r in results["bcast"][key] if not r)
            if failed:
                notes += f"; **{failed} run(s) failed**"
            rows.append(("bcast", label, "all 1000 received", num(med, "time"), span_cell(lo, hi, "time"), notes))
    return rows


def tables(results, targets, unit):
    rows = [(TITLES[sc], *rest) for sc, *rest in result_rows(results)]
    return [table("results", "Results", ["scenario", "server", "metric", "median", "min – max", "notes"], rows,
                  "lllrll"), ratio_table(ratio_rows(results), unit), target_table(targets, unit)]


def chart(results):
    def bars(sc, fields):
        return [bar(VARIANTS[sc][k][0], stat(results, sc, k, f), series=f if len(fields) > 1 else "")
                for f in fields for k in results.get(sc, {})]

    return {"png": "bench_websocket.png", "alt": "WebSocket benchmark: medians with min – max whiskers",
            "title": "WebSocket echo and broadcast (bars: median over runs; whiskers: min – max)",
            "panels": [panel("Echo round trip, 100-char text frame", "seconds (log)", bars("echo", ["p50", "p99"]),
                             "time"),
                       panel("Broadcast to 1000 clients", "seconds until all received (log)",
                             bars("bcast", ["total"]), "time")]}


def parse_args(argv=None):
    p = new_parser(__doc__, quick="smoke run: 1 run, fewer round trips and broadcasts",
                   runs="runs (default 5; 1 with --quick)",
                   write="with --quick or --only: still write bench/results/websocket.json",
                   only="echo,bcast", only_help="scenarios: echo,bcast (default both)")
    p.add_argument("--variants", default=None,
                   help="comma-separated subset of variants, e.g. shm,daphne (default: all of each scenario)")
    p.add_argument("--echo-m", type=int, default=None, help="timed echo round trips per run (default 5000)")
    p.add_argument("--echo-warm", type=int, default=None, help="warm-up round trips (default 500)")
    p.add_argument("--clients", type=int, default=1000, help="clients in the room (default 1000)")
    p.add_argument("--client-procs", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--reps", type=int, default=None, help="timed broadcasts per run (default 10)")
    p.add_argument("--warm-reps", type=int, default=3, help="warm-up broadcasts per run (default 3)")
    p.add_argument("--rep-pause", type=float, default=0.2, help="seconds between broadcasts (default 0.2)")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="before each measurement wait up to this many seconds until no other process is "
                        "runnable (default 30; 0 with --quick)")
    a = parse(p, argv, choices=VARIANTS, kind="scenario")
    a.echo_m = a.echo_m or (1000 if a.quick else 5000)
    a.echo_warm = a.echo_warm or (200 if a.quick else 500)
    a.reps = a.reps or (3 if a.quick else 10)
    a.quiet_wait = (0.0 if a.quick else 30.0) if a.quiet_wait is None else a.quiet_wait
    a.variants = [s.strip() for s in a.variants.split(",")] if a.variants else None
    if a.clients < a.client_procs or a.client_procs < 1:
        p.error("need at least one client per client process")
    return a


def check_prerequisites(args):
    """The redis-server binary if the run needs one, else None."""
    redis = None
    needs_redis = "bcast" in args.only and (args.variants is None or any(v.startswith("daphne") for v in args.variants))
    if needs_redis:
        redis = find_redis_server()
        require_program("redis-server", redis)
    require_modules(("uvicorn", "daphne", "channels", "channels_redis", "django"))
    return redis


def describe_echo(r):
    return (f"p50 {fmt_time(r['p50'])}  p99 {fmt_time(r['p99'])}  p99.9 {fmt_time(r['p999'])}  "
            f"CPU {r['cpu_us']:.0f} µs/rt")


def describe_bcast(r):
    return (f"all {fmt_time(r['total'])}  first {fmt_time(r['first'])}  cold {fmt_time(r['cold'])}  "
            f"CPU {r['cpu_ms']:.3g} ms/bcast  connect {r['connect_s']:.2g} s"
            + (f"  sockets/PS {r['sockets']}" if len(r["sockets"]) > 1 else ""))


# scenario -> (measure one variant, its progress line)
SCENARIO_RUNS = {"echo": (run_echo, describe_echo), "bcast": (run_bcast, describe_bcast)}


def start_redis(env, cleanup, binary):
    env.redis = RedisServer(binary)
    cleanup.callback(env.redis.stop)
    env.redis.start()


def main(argv=None):
    args = parse_args(argv)
    redis_binary = check_prerequisites(args)
    out_dir = results_dir(args, full=not args.quick and set(args.only) == set(VARIANTS) and args.variants is None)
    nofile = raise_nofile(max(16384, args.clients * 4))
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    results = {sc: {k: [] for k in VARIANTS[sc] if args.variants is None or k in args.variants} for sc in args.only}
    with interruptible(), contextlib.ExitStack() as cleanup:
        env = Env(args, cleanup)
        if redis_binary:
            start_redis(env, cleanup, redis_binary)
        info = env.machine_info(PACKAGES)
        if env.redis:
            info["versions"]["redis-server"] = env.redis.version
        if "shm-nospin" in results.get("echo", {}):
            env.snap_nospin = nospin_snapshot(env.snap)
            cleanup.callback(shutil.rmtree, env.snap_nospin, ignore_errors=True)
        env.ws_impl["uvicorn"] = ("websockets-sansio" if info["versions"]["websockets"] != "not installed"
                                  else "wsproto")
        log(f"{args.runs} run(s) of {', '.join(f'{sc}: {list(v)}' for sc, v in results.items())}; "
            f"open-file limit {nofile}"
            + (f"; redis-server {env.redis.version} on port {env.redis.port}" if env.redis else ""))
        for run, where in env.runs():
            for sc, variants in results.items():
                take, describe = SCENARIO_RUNS[sc]
                for key in variants:
                    variants[key].append(env.measure(where, f"{sc}/{key}", f"{sc:<5} {VARIANTS[sc][key][0]:<44}",
                                                     functools.partial(take, env, key, run), describe))
    elapsed = time.monotonic() - t_start
    env.note_source_change(info)
    targets = build_targets(results)
    tabs = tables(results, targets, env.unit)
    print_tables(tabs)
    print("\n".join((["\nPROBLEMS", *env.problems] if env.problems else []) + error_lines(env.errors)), flush=True)
    env.print_runtime(elapsed)
    if out_dir:
        params = {k: getattr(args, k) for k in ("runs", "quick", "only", "variants", "echo_m", "echo_warm", "clients",
                                                "client_procs", "reps", "warm_reps", "rep_pause", "quiet_wait")}
        write(out_dir, "websocket", meta=env.meta(info, elapsed), params=params, runs=results, tables=tabs,
              chart=chart(results), started=started)
    return 1 if env.errors else 0


if __name__ == "__main__":
    sys.exit(main())
