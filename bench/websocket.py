#!/usr/bin/env python3
"""WebSocket benchmark: echo round trip and a 1000-client chat-room broadcast.

    .venv/bin/python bench/websocket.py            # full run (5 runs), rewrites its docs/benchmarks.md section + PNG
    .venv/bin/python bench/websocket.py --quick    # smoke run; writes docs only with --write
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
    span,
)
from _report import (  # noqa: E402
    closing_sections,
    error_lines,
    fx,
    generated_line,
    grey_legend,
    problem_lines,
    ratio_lines,
    ratio_row,
    ratios,
    rng,
    save_chart,
    server_machine_line,
    stat,
    target,
    target_lines,
    target_readings,
    vals,
)
from _run import (  # noqa: E402
    docs_wanted,
    interruptible,
    new_parser,
    parse,
    require_modules,
    require_program,
    write_docs,
)
from _servers import (  # noqa: E402
    ROOT,
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

DOC = os.path.join(ROOT, "docs", "benchmarks.md")
PNG = os.path.join(ROOT, "docs", "bench_websocket.png")
START, END = "<!-- bench:websocket:start -->", "<!-- bench:websocket:end -->"
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
ROLE_COLORS = {"protocol": "#1f77b4", "worker": "#ff7f0e", "master": "#7f7f7f", "server": "#d62728",
               "redis": "#8c564b", "other": "#cccccc"}


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
    path = os.path.join(nospin, "shmchannels", "core.py")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    patched, n = re.subn(r"^DEFAULT_SPIN_US = \d+", "DEFAULT_SPIN_US = 0", text, flags=re.M)
    if n != 1:
        shutil.rmtree(nospin, ignore_errors=True)
        raise BenchError("cannot find DEFAULT_SPIN_US in shmchannels/core.py for the spin_us=0 variant")
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
                          lambda v: v is not None and v <= 1e-3, fmt_time))
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
    return [ratio_row(text, ratios(results, sc, a, b, field))
            for sc, a, b, field, text in RATIO_PAIRS if sc in results and a in results[sc] and b in results[sc]]


def roles_text(results, sc, key, field, unit):
    per = {}
    for r in results[sc][key]:
        if r:
            for role, v in r[field].items():
                per.setdefault(role, []).append(v)
    order = ["protocol", "worker", "master", "server", "redis", "other"]
    meds = {x: median(per[x]) for x in order if x in per}
    total = sum(v for v in meds.values() if v) or 1.0
    # roles below 1% of the total (the idle master) are left out
    return ", ".join(f"{ROLE_NAMES[x]} {v:.3g} {unit}" for x, v in meds.items() if v and v >= 0.01 * total)


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
                             f"µs per round trip ({roles_text(results, 'echo', key, 'cpu_role_us', 'µs')})")
                failed = sum(1 for r in results["echo"][key] if not r)
                if failed and field == "p50":
                    notes += f"; **{failed} run(s) failed**"
                rows.append(("echo", label, field, fmt_time(med), rng(lo, hi, fmt_time), notes))
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
                         f"({roles_text(results, 'bcast', key, 'cpu_role_ms', 'ms')}); 1000 connects took "
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
            rows.append(("bcast", label, "all 1000 received", fmt_time(med), rng(lo, hi, fmt_time), notes))
    return rows


def print_report(results, targets, env):
    out = ["\nRESULTS (median over runs, [min – max])"]
    cur = None
    for sc, label, metric, med, r, notes in result_rows(results):
        if sc != cur:
            out.append(f"\n  {TITLES[sc]}")
            cur = sc
        out.append(f"    {label:<44} {metric:<18} {med:>9}   [{r}]")
        if notes:
            out.append(f"        {notes}")
    out += ratio_lines(ratio_rows(results), env.unit, 64, 8)
    out += target_lines(targets, env.unit, 80, 9)
    out += problem_lines(env.problems) + error_lines(env.errors)
    print("\n".join(out), flush=True)


def g_role(results, key, role, sc="echo", field="cpu_role_us"):
    return median([r[field].get(role, 0.0) for r in results.get(sc, {}).get(key, []) if r]) or 0.0


def reading(results, targets, env):
    lines = []
    g = lambda sc, k, f: stat(results, sc, k, f)[0] if k in results.get(sc, {}) else None  # noqa: E731
    if g("echo", "shm", "p50"):
        lines.append(
            f"- **Echo:** a round trip through the shmchannels worker takes {fmt_time(g('echo', 'shm', 'p50'))} "
            f"(p50; p99 {fmt_time(g('echo', 'shm', 'p99'))}), against {fmt_time(g('echo', 'uvicorn', 'p50'))} for "
            f"uvicorn and {fmt_time(g('echo', 'daphne', 'p50'))} for Daphne + Channels, which answer inside the "
            f"server process.  shmchannels' path has two extra process hops (protocol server → worker → "
            f"protocol server), and its per-connection ordering adds an `__ack__` message per frame; server CPU per "
            f"round trip: "
            f"{roles_text(results, 'echo', 'shm', 'cpu_role_us', 'µs')} (uvicorn "
            f"{g('echo', 'uvicorn', 'cpu_us'):.0f} µs, Daphne + Channels {g('echo', 'daphne', 'cpu_us'):.0f} µs)."
            if g("echo", "uvicorn", "p50") and g("echo", "daphne", "p50") else
            f"- **Echo:** shmchannels p50 {fmt_time(g('echo', 'shm', 'p50'))}, "
            f"p99 {fmt_time(g('echo', 'shm', 'p99'))}.")
    ns, sp = g("echo", "shm-nospin", "p50"), g("echo", "shm", "p50")
    if ns and sp:
        wk_ns, wk_sp = g_role(results, "shm-nospin", "worker"), g_role(results, "shm", "worker")
        per_run = ratios(results, "echo", "shm-nospin", "shm", "p50")
        lo, hi = span(per_run)
        _, uv_lo, uv_hi = stat(results, "echo", "uvicorn", "p50")
        drift = (f", and what a wake-up costs on this VM changed between runs (uvicorn's own p50 ranged "
                 f"{fmt_time(uv_lo)} – {fmt_time(uv_hi)})" if uv_lo and uv_hi > 1.5 * uv_lo else "")
        common = (f"an echo costs shmchannels four cross-process wake-ups (client → protocol server → worker → "
                  f"protocol server → client) where uvicorn needs two{drift}.  The worker's consumer thread "
                  f"(blocking `receive`, no event loop to ask) spins up to 50 µs after each message while traffic "
                  f"is recent; in a sequential echo the next frame comes a whole round trip later, so the spin "
                  f"either is wasted or, when wake-ups are slow, saves one.  ")
        if ns < 0.8 * sp:
            verdict = (f"Here it was wasted: with `spin_us=0` the p50 is {fmt_time(ns)} instead of {fmt_time(sp)} "
                       f"and the worker burns {wk_ns:.0f} instead of {wk_sp:.0f} µs of CPU per round trip (on 2 "
                       f"vCPUs shared by client, protocol server and worker the spinning worker holds a CPU the "
                       f"others wait for).")
        elif ns > 1.2 * sp:
            verdict = (f"Here it paid off: with `spin_us=0` the p50 is {fmt_time(ns)} instead of {fmt_time(sp)}, for "
                       f"{wk_sp - wk_ns:.0f} µs more worker CPU per round trip.")
        else:
            verdict = (f"On the median it made little difference ({fmt_time(ns)} without vs {fmt_time(sp)} with; "
                       f"worker CPU {wk_ns:.0f} vs {wk_sp:.0f} µs per round trip).")
        lines.append("- *Diagnostic (echo, spin_us=0):* " + common + verdict +
                     f"  Per run the ratio (no spin / spin) ranged {fx(lo)} – {fx(hi)}.")
    if g("bcast", "shm", "total"):
        s = (f"- **Broadcast:** with 1000 clients in the room, shmchannels (1 protocol server) delivers a message to "
             f"all of them in {fmt_time(g('bcast', 'shm', 'total'))}")
        if g("bcast", "shm-2ps", "total"):
            s += f", with 2 protocol servers in {fmt_time(g('bcast', 'shm-2ps', 'total'))}"
        if g("bcast", "daphne", "total"):
            s += (f"; Daphne + Channels 4 + channels_redis needs {fmt_time(g('bcast', 'daphne', 'total'))}"
                  + (f" (RedisPubSub layer: {fmt_time(g('bcast', 'daphne-pubsub', 'total'))})"
                     if g("bcast", "daphne-pubsub", "total") else ""))
        s += (f".  Server-side CPU per broadcast: shmchannels {roles_text(results, 'bcast', 'shm', 'cpu_role_ms', 'ms')}"
              + (f"; Daphne {roles_text(results, 'bcast', 'daphne', 'cpu_role_ms', 'ms')}"
                 if g("bcast", "daphne", "total") else "") + ".  ")
        s += ("Both layers move one record per receiving process: shmchannels' `Group.send` writes one per "
              "protocol-server process, and channels_redis' `group_send` batches all members that share a process "
              "into one sorted-set entry.  The difference is what happens per member inside the server: the "
              f"shmchannels protocol server writes a frame to each socket "
              f"(~{1e3 * g_role(results, 'shm', 'protocol', 'bcast', 'cpu_role_ms') / env.args.clients:.0f} µs of "
              f"CPU per member), while in Daphne each member's consumer task is woken through its queue, "
              f"dispatches `chat_message`, and `self.send` goes through asgiref, Daphne and autobahn onto Twisted's "
              f"loop before the socket write"
              + (f" (~{1e3 * g_role(results, 'daphne', 'server', 'bcast', 'cpu_role_ms') / env.args.clients:.0f} µs "
                 f"of CPU per member; redis-server itself used "
                 f"{g_role(results, 'daphne', 'redis', 'bcast', 'cpu_role_ms'):.2g} ms per broadcast)"
                 if g("bcast", "daphne", "total") else "")
              + ".  The times include the clients' own processing "
              f"({env.client_loop or 'asyncio'} loops, 2 processes sharing the 2 vCPUs with the servers).")
        lines.append(s)
        two, one = g("bcast", "shm-2ps", "total"), g("bcast", "shm", "total")
        if two and two < 0.9 * one:
            lines.append(
                f"- **Two protocol servers** cut the broadcast to {fmt_time(two)} from {fmt_time(one)}: each fans "
                f"the record out to its ~{env.args.clients // 2} sockets, in parallel on the two vCPUs, for about the "
                f"same CPU in all ({g('bcast', 'shm-2ps', 'cpu_ms'):.3g} vs {g('bcast', 'shm', 'cpu_ms'):.3g} ms "
                f"per broadcast).  Almost all of that CPU is the protocol servers' socket writes: "
                f"{g_role(results, 'shm', 'protocol', 'bcast', 'cpu_role_ms'):.3g} ms per 1000 sockets with one, "
                f"against {g_role(results, 'shm', 'worker', 'bcast', 'cpu_role_ms'):.2g} ms for the worker's "
                f"`Group.send`.")
        if two and two > 0.9 * one:
            lines.append(
                f"- **Two protocol servers** do not help on this 2-vCPU box "
                f"({fmt_time(g('bcast', 'shm-2ps', 'total'))} vs {fmt_time(g('bcast', 'shm', 'total'))}): the two "
                "fan-outs run in parallel only if two CPUs are free, and the two client processes need them too.")
    refused = [(k, r) for k, rs in results.get("bcast", {}).items() for r in rs
               if r and r.get("refused") and k.startswith("shm")]
    if refused:
        lines.append(
            f"- **Bug seen: spurious 503 on WebSocket connect.**  In {len(refused)} shmchannels run(s) "
            f"({', '.join(sorted({VARIANTS['bcast'][k][0] for k, _ in refused}))}) the protocol server refused "
            f"{sum(r['refused'] for _, r in refused)} handshake(s) with `{refused[0][1]['refusal']}` although "
            f"the clients never have more than {env.args.client_procs * 20} handshakes in flight and "
            f"`websocket.connect` holds 100: `send` raised ChannelFull on a channel that was not full.  The "
            f"clients retried those handshakes, so the broadcast figures stand.  It needs more than one writer "
            f"on the channel (here the 2 protocol servers); "
            f"`tests/test_multiprocess.py::test_capacity_is_never_refused_below_it_with_racing_writers` "
            f"reproduces it without a server (fixed in 8fe7f02: the full check re-reads a tail/head snapshot "
            f"that a consumer has overtaken).")
    lines += target_readings(targets, env.unit)
    if env.problems:
        lines.append("- **Problems while stopping servers:** " + "; ".join(env.problems[:5]) + ".")
    else:
        lines.append("- Every server stopped on SIGTERM within the timeout and no shmchannels bus files were left in "
                     "/dev/shm (checked after every stop).")
    return "\n".join(lines)


def markdown(results, targets, info, env, started, elapsed, png_name):
    a = env.args
    md = ["## WebSocket", "", generated_line("websocket.py", a, env.unit, started, elapsed), "",
          server_machine_line(info, env), ""]
    md.append("### Method")
    md.append("")
    md.extend([
        "- Every server is a separate process group started by the script on a free 127.0.0.1 port (checked "
        "with `GET /` → `Hello, world!`), and stopped with SIGTERM (SIGKILL after 20 s), also on errors and "
        "Ctrl-C; a fresh server for every measurement.  shmchannels: `shmchannels serve --protocol-servers 1 "
        "--workers 1 --routing bench_shm:routes` (`bench/apps/bench_shm.py`: Channels-1 consumers), run from a "
        "copy of its source taken at the start.  uvicorn: `--http httptools`, default WebSocket implementation "
        f"({env.ws_impl.get('uvicorn', 'websockets')}), the ASGI 3 app `bench/apps/bench_asgi.py`.  Daphne: "
        "`daphne -v 0 bench_channels:application` (`bench/apps/bench_channels.py`: Django settings in the module, "
        "Channels 4 `AsyncWebsocketConsumer`s).  No access logs anywhere.",
        "- Clients are separate processes (multiprocessing \"spawn\") speaking RFC 6455 by hand "
        "(`bench/_wsclient.py`): no client library, so that client-side cost stays small and equal for all "
        "servers.  Every text frame has 100 characters.",
        f"- **Echo:** one client, one connection to `/echo/`, blocking socket with TCP_NODELAY; {a.echo_warm} "
        f"warm-up round trips, then {a.echo_m} sequential ones, each timed with `perf_counter_ns` from just before "
        "`sendall` of a pre-built masked frame to the complete echoed frame (checked byte for byte).  "
        "shmchannels: the protocol server sends `websocket.receive` to the worker, the consumer "
        "`message.reply_channel.send({\"text\": ...})`, the protocol server writes the frame.  uvicorn: "
        "the ASGI app's `receive`/`send` in the server process.  Daphne: Channels 4 `AsyncWebsocketConsumer."
        "receive` → `self.send(text_data=...)` in the server process, with no channel layer configured (an "
        "echo needs none; this spares Daphne the per-connection layer receive loop).  Server CPU per round "
        "trip: on-CPU time of all threads of the server's processes (`/proc/PID/task/*/schedstat`) over the "
        "client's whole life (warm-up included) / round trips; it includes the layer's receive-side busy-wait "
        "(`spin_us`), so it is an upper bound on the work done.  A diagnostic variant (no target) runs the "
        "same shmchannels copy with `DEFAULT_SPIN_US = 0` patched into its `core.py` (`serve` has no setting "
        "for the spin), to show what the busy-wait costs or gains.",
        f"- **Broadcast:** {a.clients} clients in one room, {a.client_procs} client processes × "
        f"{a.clients // a.client_procs} connections, each process one asyncio loop ({env.client_loop or 'uvloop'}) "
        "with one `asyncio.Protocol` per connection that parses frames in `data_received`; at most 20 handshakes "
        "in flight per process.  Room membership is set up on connect before the handshake completes "
        "(shmchannels: `Group(\"room\").add(message.reply_channel)` then `{\"accept\": True}`; Channels: "
        "`group_add` then `accept()`).  One connection of client process 0 sends a text frame; its room "
        "consumer sends it to the room (`Group(\"room\").send(...)` / `group_send` → `chat_message` → "
        "`self.send`); every connection stamps `time.monotonic_ns()` when the frame is parsed (CLOCK_MONOTONIC "
        "is system-wide, so stamps compare across processes).  Time = last stamp in any process − stamp just "
        f"before the sender's `write`.  Per run {a.warm_reps} warm-up broadcasts (the first reported as "
        f"'first broadcast of a run'), then {a.reps} timed ones {a.rep_pause:g} s apart; per run the median.  "
        "Daphne runs use a private `redis-server` on loopback (`--save '' --appendonly no`, flushed before each "
        "run) with channels_redis' `RedisChannelLayer` (the default; `RedisPubSubChannelLayer` as an extra "
        "variant).  shmchannels is also run with 2 protocol servers (the kernel spreads the connections over "
        "the two processes that accept on the shared listening socket; the socket counts per process are "
        "listed).  Server CPU per broadcast covers all server processes (and redis-server for Daphne) over the "
        "timed broadcasts, pauses included.",
        f"- {a.runs} run(s); in every run all variants of a scenario run one after the other, so ratios are "
        "computed within each run and then summarised (median, min – max).",
    ])
    md.append("")
    md.append("### Results")
    md.append("")
    md.append("| scenario | server | metric | median | min – max | notes |")
    md.append("|---|---|---|---:|---|---|")
    for sc, label, metric, med, r, notes in result_rows(results):
        md.append(f"| {TITLES[sc]} | {label} | {metric} | {med} | {r} | {notes} |")
    md.append("")
    md += closing_sections(ratio_rows(results), targets, env.unit,
                           "WebSocket benchmark: medians with min – max whiskers", png_name,
                           reading(results, targets, env), env.errors)
    return "\n".join(md) + "\n"


def chart(results, env, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(15, 10.5))
    fig.suptitle(f"WebSocket on 127.0.0.1, {env.args.runs} run(s) (bars: median over runs; whiskers: min – max)",
                 fontsize=12)
    tfmt = matplotlib.ticker.FuncFormatter(lambda v, _: fmt_time(v))

    def hbars(ax, sc, fields, title, xlabel, target=None, target_label=None, legend=None):
        keys = [k for k in results.get(sc, {}) if stat(results, sc, k, fields[0])[0] is not None]
        if not keys:
            ax.set_visible(False)
            return
        h = 0.8 / len(fields)
        allv = []
        for j, field in enumerate(fields):
            st = [stat(results, sc, k, field) for k in keys]
            m = [s[0] for s in st]
            allv += [s[1] for s in st] + [s[2] for s in st]
            ys = [i - 0.4 + h * (j + 0.5) for i in range(len(keys))]
            ax.barh(ys, m, height=h * 0.9, color=[VARIANTS[sc][k][1] for k in keys], alpha=1.0 if j == 0 else 0.5,
                    hatch=None if j == 0 else "//", edgecolor="k", linewidth=0.3, capsize=2,
                    xerr=[[a - s[1] for a, s in zip(m, st)], [s[2] - a for a, s in zip(m, st)]],
                    label=legend[j] if legend else None)
            for y, v, s in zip(ys, m, st):
                ax.text(s[2], y, "  " + fmt_time(v), va="center", fontsize=8.5)
        ax.set_xscale("log")
        pos = [v for v in allv if v]
        lo = min(pos + ([target] if target else []))
        ax.set_xlim(lo / 2.5, max(pos) * 8)
        ax.xaxis.set_major_formatter(tfmt)
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels([VARIANTS[sc][k][0] for k in keys], fontsize=9)
        ax.invert_yaxis()
        if target:
            ax.axvline(target, color="k", ls="--", lw=0.9, label=target_label)
        if legend or target:
            grey_legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3, frameon=False)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", which="both", alpha=0.3)

    hbars(axes[0, 0], "echo", ["p50", "p99"], "Echo round trip, 100-char text frame",
          "round-trip time (log; lower is better)", target=1e-3, target_label="target: shmchannels p50 <= 1 ms",
          legend=["p50", "p99"])

    ax = axes[0, 1]
    if "echo" in results:
        for k in results["echo"]:
            for i, r in enumerate(x for x in results["echo"][k] if x):
                lat = r["lat_ns"]
                step = max(1, len(lat) // 1500)
                xs = [lat[j] / 1e9 for j in range(0, len(lat), step)] + [lat[-1] / 1e9]
                ys = [j / len(lat) for j in range(0, len(lat), step)] + [1.0]
                ax.plot(xs, ys, color=VARIANTS["echo"][k][1], lw=1, alpha=0.7,
                        label=VARIANTS["echo"][k][0] if i == 0 else None)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(tfmt)
        ax.axhline(0.99, color="grey", lw=0.6, ls=":")
        ax.axvline(1e-3, color="k", lw=0.9, ls="--", label="target: shmchannels p50 <= 1 ms")
        ax.set_xlabel("round-trip time (log)")
        ax.set_ylabel("fraction of round trips")
        ax.set_title("Echo round-trip CDF (one line per run; dotted: p99)")
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(which="both", alpha=0.3)
    else:
        ax.set_visible(False)

    target = None
    if "bcast" in results and "daphne" in results["bcast"] and stat(results, "bcast", "daphne", "total")[0]:
        target = stat(results, "bcast", "daphne", "total")[0] / 3
    hbars(axes[1, 0], "bcast", ["total", "first"], f"Broadcast to {env.args.clients} clients in one room",
          "time from send to delivery (log; lower is better)", target=target,
          target_label="target: 1/3 of Daphne + channels_redis", legend=["all received", "first received"])

    ax = axes[1, 1]
    keys = [k for k in results.get("bcast", {}) if stat(results, "bcast", k, "cpu_ms")[0] is not None]
    if keys:
        left = [0.0] * len(keys)
        for role in ("protocol", "worker", "master", "server", "redis", "other"):
            w = []
            for k in keys:
                xs = [r["cpu_role_ms"].get(role, 0.0) for r in results["bcast"][k] if r]
                w.append(median(xs) if xs else 0.0)
            if any(x >= 0.1 for x in w):
                ax.barh(range(len(keys)), w, left=left, color=ROLE_COLORS[role], edgecolor="k", linewidth=0.3,
                        label=ROLE_NAMES[role])
                left = [a + b for a, b in zip(left, w)]
        for i, v in enumerate(left):
            ax.text(v, i, f"  {v:.3g} ms", va="center", fontsize=8.5)
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels([VARIANTS["bcast"][k][0] for k in keys], fontsize=9)
        ax.invert_yaxis()
        ax.set_xlim(0, max(left) * 1.3)
        ax.set_xlabel("server on-CPU time per broadcast, ms (lower is better)")
        ax.set_title("Broadcast: where the server-side CPU goes")
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3, frameon=False)
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.set_visible(False)

    save_chart(fig, path, top=0.95)


# ----------------------------------------------------------------------- main


def parse_args(argv=None):
    p = new_parser(__doc__, quick="smoke run: 1 run, fewer round trips and broadcasts",
                   runs="runs (default 5; 1 with --quick)",
                   write="with --quick or --only: still rewrite the docs section and PNG",
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
    a = parse(p, argv, md=DOC, png=PNG, choices=VARIANTS, kind="scenario")
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
    write = docs_wanted(args, full=not args.quick and set(args.only) == set(VARIANTS) and args.variants is None)
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
    print_report(results, targets, env)
    env.print_runtime(elapsed)
    if write:
        write_docs(args, (START, END), functools.partial(chart, results, env),
                   lambda png_name: markdown(results, targets, info, env, started, elapsed, png_name))
    return 1 if env.errors else 0


if __name__ == "__main__":
    sys.exit(main())
