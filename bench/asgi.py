#!/usr/bin/env python3
"""ASGI benchmark: one Channels 4 app under `shmchannels serve` and under uvicorn.

    .venv/bin/python bench/asgi.py            # full run (3 runs), writes bench/results/asgi.json
    .venv/bin/python bench/asgi.py --quick    # smoke run; writes results only with --write or --results-dir
    .venv/bin/python bench/asgi.py --runs 5 --only echo,bcast --variants shm,uv-redis

The app is bench/apps/asgi_chat.py (Django settings in the module, no
project): a Channels 4 echo consumer at /ws/echo/, a room consumer at
/ws/room/<name>/ (group_add on connect, group_send of every frame, each group
message forwarded to the socket) and a Django view at /hello/ through
get_asgi_application().  The same module is served by

  shm        shmchannels serve asgi_chat:application, 1 protocol server + 1 worker:
             the app runs in the worker, the protocol server relays HTTP and
             WebSocket over the bus; channel layer: SharedMemoryChannelLayer on
             the serve's prefix
  uv-shm     uvicorn (1 process, httptools), the app in the server process,
             SharedMemoryChannelLayer (in-process, a prefix of its own)
  uv-redis   uvicorn, the same, channels_redis RedisChannelLayer on a private redis-server
  uvicorn    (http) uvicorn with the shm layer configured (the view does not use it)

echo    one client, sequential round trips of a 100-char text frame (shm, uv-shm, uv-redis)
bcast   1000 clients in one room (2 client processes x 500 connections); one of them
        sends a message, time until all 1000 have it (shm, uv-shm, uv-redis)
http    wrk -t1 -c32 on GET /hello/ (shm, uvicorn)
resume  shm only: 20 clients each send a sequence-numbered frame every 20 ms to
        /ws/echo/ and await its echo while the serve master is sent SIGHUP 5 times
        (the workers restart, every WebSocket stays open and is resumed in the
        new worker); per client and HUP the largest gap between consecutive
        echoes, closes, lost and duplicated echoes

A private redis-server on a free 127.0.0.1 port serves the uv-redis runs and
is stopped at the end, like every server process (own session; also on
errors and Ctrl-C).  Helpers: bench/_wsclient.py (echo and broadcast
clients), bench/_servers.py, bench/_common.py; the resume client is below.
"""

import os
import sys

# Keep this script's directory from shadowing anything (and its own name from
# shadowing an ``asgi`` module); its helpers are imported from the end of the path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

import asyncio  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import multiprocessing as mp  # noqa: E402
import random  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import _wsclient  # noqa: E402
from _common import (  # noqa: E402
    BenchError,
    PipeChild,
    RedisServer,
    find_redis_server,
    fmt_num,
    fmt_time,
    free_port,
    log,
    median,
    percentile,
    shm_files,
)
from _report import error_lines, ratios, roles_text, scenario_ratio_rows, stat, vals  # noqa: E402
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
    http_get,
    proc_stat,
    raise_nofile,
    run_wrk,
    server_env,
    venv_exe,
    wrk_version,
)

QUIET_BUDGET = 300.0
MSG_SIZE = 100  # characters of every text frame
CLIENT_STOP_TIMEOUT = 10.0
APP = "asgi_chat:application"
PLAIN_APP = "bench_asgi:app"
ROOM_PATH = "/ws/room/bench/"
ECHO_PATH = "/ws/echo/"
HELLO_PATH = "/hello/"
PACKAGES = ("shmchannels", "uvicorn", "httptools", "websockets", "uvloop", "channels", "channels_redis", "redis",
            "Django")

VARIANTS = {
    "echo": {
        "shm": "shmchannels serve (app in the worker)",
        "uv-shm": "uvicorn + shm layer (in-process)",
        "uv-redis": "uvicorn + channels_redis",
    },
    "bcast": {
        "shm": "shmchannels serve (app in the worker)",
        "uv-shm": "uvicorn + shm layer (in-process)",
        "uv-redis": "uvicorn + channels_redis",
    },
    "http": {
        "shm": "shmchannels serve (app in the worker)",
        "uvicorn": "uvicorn (httptools)",
    },
    "resume": {
        "shm": "shmchannels serve, SIGHUP to the master",
        # the same with a plain ASGI echo app (bench/apps/bench_asgi.py): what the
        # resume itself costs, without a Channels consumer starting per socket
        "shm-plain": "shmchannels serve, plain ASGI echo app, SIGHUP",
    },
}
TITLES = {"echo": "echo round trip", "bcast": "broadcast to the room", "http": "HTTP Django view",
          "resume": "resume across worker restarts"}
ROLE_NAMES = {"protocol": "protocol server", "worker": "worker", "master": "master", "server": "server process",
              "redis": "redis-server", "other": "other"}


def layer_of(key):
    return "redis" if key == "uv-redis" else "shm"


def is_serve(key):
    return key in ("shm", "shm-plain")


def server_argv(key, port, prefix):
    if is_serve(key):
        return [venv_exe("shmchannels"), "serve", PLAIN_APP if key == "shm-plain" else APP,
                "--bind", f"127.0.0.1:{port}", "--protocol-servers", "1",
                "--workers", "1", "--prefix", prefix, "--log-level", "warning"]
    return [venv_exe("uvicorn"), APP, "--host", "127.0.0.1", "--port", str(port), "--http", "httptools",
            "--log-level", "warning", "--no-access-log", "--lifespan", "off"]


def expect_django_hello(port):
    status, headers, body = http_get(port, HELLO_PATH)
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = dechunk(body)
    if status != 200 or body != b"Hello, world!":
        raise BenchError(f"GET {HELLO_PATH} answered {status} {body[:80]!r}")
    return headers


def dechunk(body):
    out, pos = b"", 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            return out
        n = int(body[pos:end].split(b";")[0] or b"0", 16)
        if n == 0:
            return out
        out += body[end + 2:end + 2 + n]
        pos = end + 2 + n + 2


class Env(ServerRun):
    def __init__(self, args, cleanup):
        super().__init__(args, cleanup, logs="asgi", quiet_budget=QUIET_BUDGET, prefix_tag="ba", unit="run")
        self.redis = None
        self.ctx = mp.get_context("spawn")
        self.snapshot_checked = set()


def redis_cmd(port, *words):
    data = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data.encode())
        return s.recv(1024)


class Running:
    """A started server of one measurement: the Server, its process roles and
    pids (redis-server's included for uv-redis), and the in-process layer's
    bus prefix of a uvicorn + shm run."""

    def __init__(self, env, scenario, key, rnd):
        self.env = env
        self.label = f"run {rnd + 1} {scenario}/{key}"
        port = free_port()
        # shm: the serve's bus, which the app's layer shares; uv-shm: the app's own bus
        self.bus = env.new_prefix() if layer_of(key) == "shm" else None
        extra = {"BENCH_ASGI_LAYER": layer_of(key)}
        if self.bus:
            extra["BENCH_SHM_PREFIX"] = self.bus
        if key == "uv-redis":
            extra["BENCH_REDIS_URL"] = f"redis://127.0.0.1:{env.redis.port}"
            if not redis_cmd(env.redis.port, "FLUSHALL").startswith(b"+OK"):
                raise BenchError("redis FLUSHALL failed")
        # Server(prefix=...) makes stop() check the serve's bus files; uvicorn's are checked in stop() below
        self.srv = Server(VARIANTS[scenario][key], server_argv(key, port, self.bus), port, expect_django_hello,
                          env=server_env(env.snap, extra), prefix=self.bus if is_serve(key) else None,
                          log_path=os.path.join(env.logdir, f"{scenario}-{key}-{rnd}.log"))
        self.uv_bus_files = None
        self.srv.start(timeout=90)
        try:
            self.roles = self.srv.shm_roles() if is_serve(key) else {p: "server" for p in self.srv.pids()}
            self.pids = self.srv.pids()
            if key == "uv-redis":
                self.roles[env.redis.pid()] = "redis"
                self.pids.append(env.redis.pid())
            if self.bus and key not in env.snapshot_checked:
                check_runs_snapshot(self.srv, env.snap)
                env.snapshot_checked.add(key)
        except BaseException:
            self.stop()
            raise

    @property
    def port(self):
        return self.srv.port

    def tail(self):
        return self.srv._tail()

    def stop(self):
        self.env.stop_server(self.srv, self.label)
        if self.bus and self.srv.prefix is None:
            # uvicorn ends its graceful shutdown by re-raising SIGTERM, so it runs no exit hook and the
            # in-process layer's bus stays in /dev/shm (the next attach on the prefix would collect it).
            left = shm_files(self.bus)
            self.uv_bus_files = len(left)
            for f in left:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f)


def start_client(env, target, cfg, name):
    return PipeChild(env.ctx, name, target, (cfg,), daemon=True)


def with_conn_closed(c):
    with contextlib.suppress(OSError):
        c.send("exit")
    c.stop(5)


def roles_per(r, total):
    return {role: v / total for role, v in r.items()}


# ------------------------------------------------------------------ echo


def run_echo(env, key, rnd):
    a = env.args
    run = Running(env, "echo", key, rnd)
    client = None
    try:
        cfg = {"port": run.port, "path": ECHO_PATH, "size": MSG_SIZE, "warm": a.echo_warm, "m": a.echo_m,
               "timeout": 10.0}
        c0 = cpu_times(run.pids)
        client = start_client(env, _wsclient.echo_main, cfg, "echo-client")
        res = client.expect("result", 60 + a.echo_m * 0.02)
        c1 = cpu_times(run.pids)
        if client.stop(CLIENT_STOP_TIMEOUT) != 0:
            raise BenchError(f"echo client exit code {client.proc.exitcode}")
        client = None
        if not run.srv.alive():
            raise BenchError(f"{run.srv.name} died")
    except BenchError as exc:
        raise BenchError(f"{exc}{run.tail()}") from None
    finally:
        if client is not None:
            client.stop(2)
        run.stop()
    lat = sorted(res["lat_ns"])
    if len(lat) != a.echo_m:
        raise BenchError(f"{len(lat)} round trips, expected {a.echo_m}")
    total = a.echo_m + a.echo_warm
    by_role, _ = cpu_by_role(c0, c1, run.roles)
    return {"p50": percentile(lat, 50) / 1e9, "p90": percentile(lat, 90) / 1e9, "p99": percentile(lat, 99) / 1e9,
            "p999": percentile(lat, 99.9) / 1e9, "max": lat[-1] / 1e9, "mean": sum(lat) / len(lat) / 1e9,
            "m": len(lat), "lat_ns": lat, "cpu_us": sum(by_role.values()) / total * 1e6,
            "cpu_role_us": {r: v * 1e6 for r, v in roles_per(by_role, total).items()},
            "uv_bus_files": run.uv_bus_files}


# ------------------------------------------------------------------ broadcast


def run_bcast(env, key, rnd):
    a = env.args
    run = Running(env, "bcast", key, rnd)
    clients = []
    try:
        per = [a.clients // a.client_procs + (1 if i < a.clients % a.client_procs else 0)
               for i in range(a.client_procs)]
        for i, n in enumerate(per):
            cfg = {"port": run.port, "path": ROOM_PATH, "n": n, "size": MSG_SIZE, "timeout": 30.0, "index": i,
                   "connect_concurrency": 20}
            clients.append(start_client(env, _wsclient.bcast_main, cfg, f"bcast-client-{i}"))
        ready = [c.expect("ready", 180) for c in clients]
        connect_s = max(r["connect_s"] for r in ready)
        refused = sum(r["refused"] for r in ready)
        if refused:
            log(f"    {refused} handshake(s) refused and retried: {next(r['refusal'] for r in ready if r['refusal'])}")
        time.sleep(0.5)
        reps, c0 = [], None
        for rep in range(a.warm_reps + a.reps):
            if rep == a.warm_reps:
                c0 = cpu_times(run.pids)
            for i, c in enumerate(clients):
                c.send("go", {"rep": rep, "sender": i == 0, "timeout": 30.0})
            t_send = clients[0].expect("sent", 30)["t0"]
            done = [c.expect("done", 40) for c in clients]
            counts = [d["count"] for d in done]
            if counts != per:
                raise BenchError(f"broadcast {rep}: clients got {counts} messages, expected {per}")
            reps.append({"total": (max(d["t_last"] for d in done) - t_send) / 1e9,
                         "first": (min(d["t_first"] for d in done) - t_send) / 1e9})
            time.sleep(a.rep_pause)
        c1 = cpu_times(run.pids)
        for c in clients:
            c.send("exit")
        unclosed = sum(c.expect("bye", 30)["unclosed"] for c in clients)
        codes = [c.stop(CLIENT_STOP_TIMEOUT) for c in clients]
        clients = []
        if any(codes):
            raise BenchError(f"client exit codes {codes}")
        if not run.srv.alive():
            raise BenchError(f"{run.srv.name} died")
    except BenchError as exc:
        raise BenchError(f"{exc}{run.tail()}") from None
    finally:
        for c in clients:
            with_conn_closed(c)
        run.stop()
    timed = reps[a.warm_reps:]
    by_role, _ = cpu_by_role(c0, c1, run.roles)
    return {"total": median([r["total"] for r in timed]), "first": median([r["first"] for r in timed]),
            "total_max": max(r["total"] for r in timed), "totals": [r["total"] for r in timed],
            "cold": reps[0]["total"], "connect_s": connect_s, "refused": refused, "unclosed": unclosed,
            "cpu_ms": sum(by_role.values()) / len(timed) * 1e3,
            "cpu_role_ms": {r: v * 1e3 for r, v in roles_per(by_role, len(timed)).items()},
            "uv_bus_files": run.uv_bus_files}


# ------------------------------------------------------------------ HTTP


def run_http(env, key, rnd):
    a = env.args
    run = Running(env, "http", key, rnd)
    try:
        warm, _ = run_wrk(run.port, a.warmup, a.connections, cpu=a.wrk_cpu, path=HELLO_PATH)
        if not run.srv.alive():
            raise BenchError(f"{run.srv.name} died during the warm-up")
        c0 = cpu_times(run.pids)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        res, _text = run_wrk(run.port, a.duration, a.connections, cpu=a.wrk_cpu, path=HELLO_PATH)
        wall = time.monotonic() - t0
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        c1 = cpu_times(run.pids)
        if not run.srv.alive():
            raise BenchError(f"{run.srv.name} died during the measurement")
        expect_django_hello(run.port)
    except BenchError as exc:
        raise BenchError(f"{exc}{run.tail()}") from None
    finally:
        run.stop()
    n = res.get("requests") or res["rps"] * a.duration
    by_role, wait_role = cpu_by_role(c0, c1, run.roles)
    wrk_cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return {"rps": res["rps"], "p50": res.get("p50"), "p99": res.get("p99"), "max": res.get("max"), "requests": n,
            "errors": res["errors"], "non2xx": res["non2xx"], "bad": res["non2xx"] + sum(res["errors"].values()),
            "warm_rps": warm["rps"], "cpu_us": sum(by_role.values()) / n * 1e6,
            "cpu_role_us": {r: v * 1e6 for r, v in roles_per(by_role, n).items()},
            "cores": sum(by_role.values()) / wall, "wait_role": {r: v / wall for r, v in wait_role.items()},
            "wrk_cores": wrk_cpu / wall, "uv_bus_files": run.uv_bus_files}


# ------------------------------------------------------------------ resume


def _pids_of_kind(roles, kind):
    return {p for p, k in roles.items() if k == kind}


class SessionWatch:
    """The pids of one session, cheaply: a pid of another session is read once
    and remembered (no pid is reused within the seconds of a HUP), so a poll
    is one listdir of /proc and a stat of each pid of the session or new."""

    def __init__(self, sid):
        self.sid = sid
        self.others = set()

    def pids(self):
        out = set()
        for d in os.listdir("/proc"):
            if d.isdigit():
                pid = int(d)
                if pid in self.others:
                    continue
                st = proc_stat(pid)
                if st and st[0] == self.sid:
                    out.add(pid)
                elif st:
                    self.others.add(pid)
        return out


def wait_worker_replaced(srv, watch, old_workers, known, timeout):
    """Poll /proc (no subprocess while the clients are timed) until every old
    worker is gone and a process the session did not have before the HUP
    exists.  Returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not srv.alive():
            raise BenchError(f"{srv.name} exited after SIGHUP with {srv.proc.returncode}")
        pids = watch.pids()
        if not (old_workers & pids) and (pids - known):
            return time.monotonic() - t0
        time.sleep(0.02)
    raise BenchError(f"the worker(s) {sorted(old_workers)} were not replaced within {timeout:.0f} s of SIGHUP")


def run_resume(env, key, rnd):
    a = env.args
    run = Running(env, "resume", key, rnd)
    client = None
    hups = []
    try:
        workers = _pids_of_kind(run.roles, "worker")
        if not workers:
            raise BenchError(f"`shmchannels status` lists no worker: {run.roles}")
        cfg = {"port": run.port, "path": ECHO_PATH, "n": a.resume_clients, "size": MSG_SIZE,
               "period": a.resume_period, "echo_timeout": 5.0, "timeout": 30.0, "connect_concurrency": 10}
        client = start_client(env, resume_main, cfg, "resume-client")
        client.expect("ready", 120)
        client.send("start")
        t_start = client.expect("started", 30)["t0"]
        time.sleep(a.resume_steady)
        steady = (t_start + int(1e9), time.monotonic_ns())  # the first second is the app warming up
        watch = SessionWatch(run.srv.proc.pid)
        for i in range(a.hups):
            known = watch.pids()
            t_hup = time.monotonic_ns()
            os.kill(run.srv.proc.pid, signal.SIGHUP)
            replaced_s = wait_worker_replaced(run.srv, watch, workers, known, a.hup_timeout)
            time.sleep(a.hup_settle)
            t_end = time.monotonic_ns()
            roles = run.srv.shm_roles()  # outside the window: a subprocess costs the 2 CPUs a lot
            new = _pids_of_kind(roles, "worker")
            if not new or new & workers:
                raise BenchError(f"after SIGHUP {i + 1} the workers are {sorted(new)} (before: {sorted(workers)})")
            hups.append({"t_hup": t_hup, "t_end": t_end, "replaced_s": replaced_s, "workers": sorted(new)})
            workers = new
            run.roles.update(roles)
            log(f"    HUP {i + 1}: old worker gone, new one up after {replaced_s * 1e3:.0f} ms")
            time.sleep(a.hup_pause)
        client.send("stop", {"windows": [(h["t_hup"], h["t_end"]) for h in hups], "steady": steady})
        res = client.expect("result", 60)
        if client.stop(CLIENT_STOP_TIMEOUT) != 0:
            raise BenchError(f"resume client exit code {client.proc.exitcode}")
        client = None
        if not run.srv.alive():
            raise BenchError(f"{run.srv.name} died")
    except BenchError as exc:
        raise BenchError(f"{exc}{run.tail()}") from None
    finally:
        if client is not None:
            with_conn_closed(client)
        run.stop()
    gaps = sorted(g for per_conn in res["gaps"] for g in per_conn if g is not None)
    steady_gaps = sorted(g for g in res["steady_gaps"] if g is not None)
    if not gaps:
        raise BenchError("no echo gaps measured during the HUPs")
    return {"gap_p50": percentile(gaps, 50) / 1e9, "gap_p99": percentile(gaps, 99) / 1e9, "gap_max": gaps[-1] / 1e9,
            "gaps_ns": gaps, "steady_p50": percentile(steady_gaps, 50) / 1e9 if steady_gaps else None,
            "steady_p99": percentile(steady_gaps, 99) / 1e9 if steady_gaps else None,
            "replaced_s": median([h["replaced_s"] for h in hups]),
            "replaced_max_s": max(h["replaced_s"] for h in hups), "hups": len(hups),
            "clients": a.resume_clients, "closes": res["closes"], "close_codes": res["close_codes"],
            "lost": res["lost"], "duplicated": res["duplicated"], "reordered": res["reordered"],
            "timeouts": res["timeouts"], "sent": res["sent"], "received": res["received"],
            "connect_s": res["connect_s"], "rate": res["rate"], "client_cores": res["client_cores"]}


# ------------------------------------------------------ resume client process


class ResumeProtocol(asyncio.Protocol):
    """One connection of the resume client: records the arrival of every
    echo, and wakes its driver when the echo of the frame it waits for comes."""

    def __init__(self, port, path):
        loop = asyncio.get_running_loop()
        self.req, self.accept = _wsclient.handshake_request(port, path)
        self.handshake = loop.create_future()
        self.closed = loop.create_future()  # result: the close code (bytes) or None when the TCP connection ended
        self.parser = _wsclient.FrameParser()
        self.transport = None
        self.head = b""
        self.times = []  # monotonic_ns of every echo
        self.got = set()
        self.last_seq = 0
        self.duplicated = self.reordered = 0
        self.want, self.waiter = None, None
        self.closed_at = None
        self.we_close = False

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self.req)

    def data_received(self, data):
        if not self.handshake.done():
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            try:
                _wsclient.check_response(head, self.accept, data)
            except Exception as exc:
                self.handshake.set_exception(exc)
                return
            self.handshake.set_result(True)
            if not data:
                return
        for op, payload in self.parser.feed(data):
            if op == _wsclient.TEXT:
                t = time.monotonic_ns()
                seq = int(payload[1:payload.index(b"|")])
                self.times.append(t)
                if seq in self.got:
                    self.duplicated += 1
                else:
                    self.got.add(seq)
                if seq < self.last_seq:
                    self.reordered += 1
                self.last_seq = max(self.last_seq, seq)
                if seq == self.want and self.waiter is not None and not self.waiter.done():
                    self.waiter.set_result(t)
            elif op == _wsclient.PING:
                self.transport.write(_wsclient.client_frame(_wsclient.PONG, payload))
            elif op == _wsclient.CLOSE:
                self._closed(payload[:2])
                self.transport.close()

    def _closed(self, code):
        if not self.closed.done():
            self.closed_at = time.monotonic_ns()
            self.closed.set_result(code)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def connection_lost(self, exc):
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("connection lost during the handshake"))
        self._closed(None)


def resume_main(conn, cfg):
    try:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
        asyncio.run(_resume(conn, cfg))
    except Exception:
        conn.send(("error", f"resume client: {traceback.format_exc()}"))


def window_gaps(times, a, b, end):
    """Largest gap between consecutive echoes (``times``, sorted ns) that
    overlaps [a, b]; if no echo came after ``a``, the wait from the last one
    to ``end`` (a connection that stopped answering)."""
    best = None
    prev = None
    for t in times:
        if prev is not None and t > a and prev < b:
            best = max(best or 0, t - prev)
        if prev is not None and prev >= b:
            break
        prev = t
    if not times or times[-1] <= a:
        best = end - (times[-1] if times else a)
    return best


async def _resume(conn, cfg):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < cfg["n"] + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(cfg["n"] + 256, hard), hard))
    loop = asyncio.get_running_loop()
    port, path, n = cfg["port"], cfg["path"], cfg["n"]
    sem = asyncio.Semaphore(cfg["connect_concurrency"])
    protos = []

    async def connect_one():
        async with sem:
            _t, proto = await loop.create_connection(lambda: ResumeProtocol(port, path), "127.0.0.1", port)
            await asyncio.wait_for(proto.handshake, cfg["timeout"])
            protos.append(proto)

    t0 = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(connect_one() for _ in range(n))), cfg["timeout"] * 4)
    connect_s = time.monotonic() - t0
    conn.send(("ready", {"connect_s": connect_s}))

    queue = asyncio.Queue()

    def on_cmd():
        try:
            while conn.poll():
                queue.put_nowait(conn.recv())
        except (EOFError, OSError):
            queue.put_nowait(("exit", None))

    loop.add_reader(conn.fileno(), on_cmd)
    stopping = asyncio.Event()
    pad = "x" * cfg["size"]
    period = cfg["period"]
    sent = [0] * n
    timeouts = [0] * n

    async def drive(i, p):
        await asyncio.sleep(random.random() * period)  # spread the connections over the period
        nxt = time.monotonic()
        seq = 0
        while not stopping.is_set() and not p.closed.done():
            seq += 1
            p.want, p.waiter = seq, loop.create_future()
            text = (f"s{seq}|" + pad)[:cfg["size"]]
            p.transport.write(_wsclient.client_frame(_wsclient.TEXT, text.encode()))
            sent[i] = seq
            try:
                await asyncio.wait_for(asyncio.shield(p.waiter), cfg["echo_timeout"])
            except asyncio.TimeoutError:
                timeouts[i] += 1
            nxt += period
            delay = nxt - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                nxt = time.monotonic()  # fell behind: carry on from now, no burst

    drivers = []
    while True:
        cmd, payload = await queue.get()
        if cmd == "start":
            drivers = [asyncio.ensure_future(drive(i, p)) for i, p in enumerate(protos)]
            t_started = time.monotonic_ns()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            conn.send(("started", {"t0": t_started}))
        elif cmd == "stop":
            t_stop = time.monotonic_ns()
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            stopping.set()
            if drivers:
                await asyncio.wait(drivers, timeout=cfg["echo_timeout"] + 5)
            await asyncio.sleep(1.0)  # late echoes
            windows = payload["windows"]
            sa, sb = payload["steady"]
            result = {
                "gaps": [[window_gaps(p.times, a, b, t_stop) for a, b in windows] for p in protos],
                "steady_gaps": [window_gaps(p.times, sa, sb, t_stop) for p in protos],
                "closes": sum(1 for p in protos if p.closed.done()),
                "close_codes": sorted({(struct.unpack("!H", c)[0] if c and len(c) == 2 else None)
                                       for p in protos if p.closed.done() for c in [p.closed.result()]},
                                      key=lambda x: (x is None, x)),
                "lost": sum(sent[i] - len(p.got & set(range(1, sent[i] + 1))) for i, p in enumerate(protos)),
                "duplicated": sum(p.duplicated for p in protos),
                "reordered": sum(p.reordered for p in protos),
                "timeouts": sum(timeouts),
                "sent": sum(sent),
                "received": sum(len(p.times) for p in protos),
                # echoes a second over the whole load, and the client's own CPU (cores) meanwhile
                "rate": sum(len(p.times) for p in protos) / ((t_stop - t_started) / 1e9),
                "client_cores": ((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime))
                                / ((t_stop - t_started) / 1e9),
                "connect_s": connect_s,
            }
            conn.send(("result", result))
        elif cmd == "exit" or cmd is None:
            break
        if cmd == "stop":
            break
    loop.remove_reader(conn.fileno())
    close = _wsclient.client_frame(_wsclient.CLOSE, struct.pack("!H", 1000))
    for p in protos:
        if not p.transport.is_closing():
            p.transport.write(close)
    waits = [p.closed for p in protos if not p.closed.done()]
    if waits:
        await asyncio.wait(waits, timeout=5)
    for p in protos:
        p.transport.close()


# ------------------------------------------------------------------ reporting


def build_targets(results):
    out = []
    ec = results.get("echo", {})
    if "shm" in ec and "uv-shm" in ec:
        out.append(target("echo p50: shmchannels serve <= 1.5x uvicorn + shm layer (in-process)",
                          ratios(results, "echo", "shm", "uv-shm", "p50"), lambda v: v <= 1.5))
    bc = results.get("bcast", {})
    if "shm" in bc and "uv-redis" in bc:
        out.append(target("broadcast: shmchannels serve <= 1/5 of uvicorn + channels_redis (uvicorn / shm >= 5)",
                          ratios(results, "bcast", "uv-redis", "shm", "total"), lambda v: v >= 5))
    ht = results.get("http", {})
    if "shm" in ht and "uvicorn" in ht:
        out.append(target("HTTP req/s: shmchannels serve >= 1x uvicorn", ratios(results, "http", "shm", "uvicorn",
                                                                              "rps"), lambda v: v >= 1))
    if "shm" in results.get("resume", {}):
        out.append(target("resume: echo gap p99 during a HUP < 50 ms", vals(results, "resume", "shm", "gap_p99"),
                          lambda v: v < 0.05, "time"))
        for field, what in (("closes", "connections closed"), ("lost", "echoes lost"),
                            ("duplicated", "echoes duplicated")):
            out.append(target(f"resume: 0 {what}", vals(results, "resume", "shm", field), lambda v: v == 0, "int"))
    if "shm-plain" in results.get("resume", {}):
        out.append(target("resume, plain ASGI app: echo gap p99 during a HUP < 50 ms",
                          vals(results, "resume", "shm-plain", "gap_p99"), lambda v: v < 0.05, "time"))
    return out


RATIO_PAIRS = [
    ("echo", "shm", "uv-shm", "p50", "echo p50: shmchannels serve / uvicorn + shm layer"),
    ("echo", "shm", "uv-redis", "p50", "echo p50: shmchannels serve / uvicorn + channels_redis"),
    ("echo", "shm", "uv-shm", "p99", "echo p99: shmchannels serve / uvicorn + shm layer"),
    ("echo", "shm", "uv-redis", "p99", "echo p99: shmchannels serve / uvicorn + channels_redis"),
    ("bcast", "uv-redis", "shm", "total", "broadcast time: uvicorn + channels_redis / shmchannels serve"),
    ("bcast", "uv-shm", "shm", "total", "broadcast time: uvicorn + shm layer / shmchannels serve"),
    ("bcast", "uv-redis", "uv-shm", "total", "broadcast time: uvicorn + channels_redis / uvicorn + shm layer"),
    ("http", "shm", "uvicorn", "rps", "HTTP req/s: shmchannels serve / uvicorn"),
    ("http", "shm", "uvicorn", "p99", "HTTP p99: shmchannels serve / uvicorn"),
    ("http", "shm", "uvicorn", "cpu_us", "HTTP server CPU per request: shmchannels serve / uvicorn"),
]


def ratio_rows(results):
    return scenario_ratio_rows(results, RATIO_PAIRS)


def role_cpu(results, sc, key, field, unit):
    return roles_text(results, sc, key, field, unit, ROLE_NAMES)


def failed_note(results, sc, key):
    failed = sum(1 for r in results[sc][key] if not r)
    return f"**{failed} run(s) failed**" if failed else ""


def join(*notes):
    return "; ".join(n for n in notes if n)


def result_rows(results):
    """(scenario, server, metric, median cell, range cell, notes)"""
    rows = []

    def row(sc, key, metric, field, f, notes=""):
        med, lo, hi = stat(results, sc, key, field)
        rows.append((TITLES[sc], VARIANTS[sc][key], metric, num(med, f), span_cell(lo, hi, f), notes))
        return med

    for key in results.get("echo", {}):
        notes = ""
        if stat(results, "echo", key, "p50")[0] is not None:
            p999, mx, cpu = (stat(results, "echo", key, f)[0] for f in ("p999", "max", "cpu_us"))
            notes = (f"p99.9 {fmt_time(p999)}, max {fmt_time(mx)}; M={stat(results, 'echo', key, 'm')[0]:.0f} per "
                     f"run; server CPU {cpu:.0f} µs per round trip "
                     f"({role_cpu(results, 'echo', key, 'cpu_role_us', 'µs')})")
        row("echo", key, "p50", "p50", "time", join(notes, failed_note(results, "echo", key)))
        row("echo", key, "p99", "p99", "time")
    for key in results.get("bcast", {}):
        notes = ""
        if stat(results, "bcast", key, "total")[0] is not None:
            first, cold, conn, cpu = (stat(results, "bcast", key, f)[0] for f in ("first", "cold", "connect_s",
                                                                                 "cpu_ms"))
            worst = stat(results, "bcast", key, "total_max")[2]
            notes = (f"first client after {fmt_time(first)}; slowest repetition {fmt_time(worst)}; first broadcast "
                     f"of a run {fmt_time(cold)}; server CPU {cpu:.3g} ms per broadcast "
                     f"({role_cpu(results, 'bcast', key, 'cpu_role_ms', 'ms')}); {conn:.2g} s to connect all")
            refused = sum(r.get("refused", 0) for r in results["bcast"][key] if r)
            if refused:
                notes += f"; **{refused} handshake(s) refused with 503** (retried)"
        clients = results["_params"]["clients"]
        row("bcast", key, f"all {clients} received", "total", "time", join(notes, failed_note(results, "bcast", key)))
    for key in results.get("http", {}):
        notes = ""
        if stat(results, "http", key, "rps")[0] is not None:
            cpu, cores, wcores = (stat(results, "http", key, f)[0] for f in ("cpu_us", "cores", "wrk_cores"))
            notes = (f"server CPU {cpu:.1f} µs/req ({role_cpu(results, 'http', key, 'cpu_role_us', 'µs')}); "
                     f"{cores:.2f} cores busy; wrk {wcores:.2f} cores")
            bad = sum(r["bad"] for r in results["http"][key] if r)
            if bad:
                notes += f"; **{bad} socket errors / non-2xx in all**"
        row("http", key, "req/s", "rps", "num", join(notes, failed_note(results, "http", key)))
        row("http", key, "p50", "p50", "time")
        row("http", key, "p99", "p99", "time")
    for key in results.get("resume", {}):
        notes = ""
        if stat(results, "resume", key, "gap_p50")[0] is not None:
            r0 = next(r for r in results["resume"][key] if r)
            rep, rep_max = stat(results, "resume", key, "replaced_s")[0], stat(results, "resume", key,
                                                                               "replaced_max_s")[2]
            sp50, sp99 = stat(results, "resume", key, "steady_p50")[0], stat(results, "resume", key, "steady_p99")[0]
            notes = (f"{r0['clients']} clients x {r0['hups']} HUPs per run, one frame each every "
                     f"{results['_params']['resume_period'] * 1e3:g} ms; per client and HUP the largest gap between "
                     f"consecutive echoes; without a HUP p50 {fmt_time(sp50)}, p99 {fmt_time(sp99)}; "
                     f"HUP to old worker gone and new one started {fmt_time(rep)} (max {fmt_time(rep_max)}); "
                     f"{fmt_num(stat(results, 'resume', key, 'rate')[0])} echoes/s in all (the client process used "
                     f"{stat(results, 'resume', key, 'client_cores')[0]:.2f} cores)")
        row("resume", key, "echo gap p50", "gap_p50", "time", join(notes, failed_note(results, "resume", key)))
        row("resume", key, "echo gap p99", "gap_p99", "time")
        row("resume", key, "largest gap", "gap_max", "time")
        counts = {}
        for f in ("closes", "lost", "duplicated", "reordered", "timeouts", "sent"):
            counts[f] = sum(r[f] for r in results["resume"][key] if r)
        codes = sorted({c for r in results["resume"][key] if r for c in r["close_codes"]}, key=str)
        row("resume", key, "connections closed", "closes", "int",
            f"in all runs: {counts['closes']} closed (codes {codes})" if counts["closes"] else "")
        row("resume", key, "echoes lost", "lost", "int",
            f"in all runs: {counts['sent']:,} frames sent, {counts['lost']} lost, {counts['timeouts']} echo waits "
            f"over 5 s")
        row("resume", key, "echoes duplicated", "duplicated", "int",
            f"{counts['reordered']} out of order in all runs")
    return rows


def tables(results, targets, unit):
    return [table("results", "Results", ["scenario", "server", "metric", "median", "min – max", "notes"],
                  result_rows(results), "lllrll"),
            ratio_table(ratio_rows(results), unit), target_table(targets, unit)]


# ------------------------------------------------------------------ options


def parse_args(argv=None):
    p = new_parser(__doc__, quick="smoke run: 1 run, small counts",
                   runs="runs (default 3; 1 with --quick)",
                   write="with --quick or --only: still write bench/results/asgi.json",
                   only="echo,bcast,http,resume", only_help="scenarios: echo,bcast,http,resume (default all)")
    p.set_defaults(runs=-1)
    p.add_argument("--variants", default=None, help="comma-separated subset of shm,uv-shm,uv-redis,uvicorn")
    p.add_argument("--echo-m", type=int, default=None, help="timed echo round trips per run (default 5000)")
    p.add_argument("--echo-warm", type=int, default=None, help="warm-up round trips (default 500)")
    p.add_argument("--clients", type=int, default=None, help="clients in the room (default 1000; 200 with --quick)")
    p.add_argument("--client-procs", type=int, default=2, help="broadcast client processes (default 2)")
    p.add_argument("--reps", type=int, default=None, help="timed broadcasts per run (default 10)")
    p.add_argument("--warm-reps", type=int, default=3, help="warm-up broadcasts per run (default 3)")
    p.add_argument("--rep-pause", type=float, default=0.2, help="seconds between broadcasts (default 0.2)")
    p.add_argument("--duration", type=float, default=None, help="seconds of timed HTTP load (default 5)")
    p.add_argument("--warmup", type=float, default=None, help="seconds of HTTP warm-up load (default 2)")
    p.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    p.add_argument("--wrk-cpu", type=int, default=None, help="CPU wrk is pinned to (default: the last one)")
    # 20 clients x 50 frames/s: 1000 echoes/s, what this 2-core box serves with
    # room to spare; at 50 x 100/s the box saturates and even the gaps
    # without a HUP reach the 50 ms goal (measured: 3.65k of 5k echoes/s)
    p.add_argument("--resume-clients", type=int, default=None, help="resume clients (default 20)")
    p.add_argument("--resume-period", type=float, default=0.02, help="seconds between a client's frames (0.02)")
    p.add_argument("--hups", type=int, default=None, help="SIGHUPs per resume run (default 5; 2 with --quick)")
    p.add_argument("--resume-steady", type=float, default=3.0,
                   help="seconds of load before the first HUP (default 3; its last 2 s give the gaps without a HUP)")
    p.add_argument("--hup-settle", type=float, default=1.0,
                   help="seconds the window of a HUP lasts after the new worker started (default 1)")
    p.add_argument("--hup-pause", type=float, default=0.5, help="seconds between a HUP's window and the next HUP")
    p.add_argument("--hup-timeout", type=float, default=60.0, help="seconds a worker may take to be replaced")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="before each measurement wait up to this many seconds until no other process is "
                        "runnable (default 30; 0 with --quick)")
    a = parse(p, argv, choices=VARIANTS, kind="scenario")
    if a.runs == -1:
        a.runs = 1 if a.quick else 3
    a.echo_m = a.echo_m or (1000 if a.quick else 5000)
    a.echo_warm = a.echo_warm or (200 if a.quick else 500)
    a.clients = a.clients or (200 if a.quick else 1000)
    a.reps = a.reps or (3 if a.quick else 10)
    a.duration = a.duration or (2.0 if a.quick else 5.0)
    a.warmup = a.warmup or (1.0 if a.quick else 2.0)
    a.resume_clients = a.resume_clients or 20
    a.hups = a.hups or (2 if a.quick else 5)
    a.quiet_wait = (0.0 if a.quick else 30.0) if a.quiet_wait is None else a.quiet_wait
    if a.wrk_cpu is None:
        a.wrk_cpu = max(os.sched_getaffinity(0))
    a.variants = [s.strip() for s in a.variants.split(",")] if a.variants else None
    known = {k for v in VARIANTS.values() for k in v}
    if a.variants and set(a.variants) - known:
        p.error(f"unknown variant(s) {sorted(set(a.variants) - known)}; choose from {sorted(known)}")
    if a.clients < a.client_procs or a.client_procs < 1:
        p.error("need at least one client per client process")
    return a


def check_prerequisites(args, results):
    """The redis-server binary if the run needs one, else None."""
    redis = None
    if any("uv-redis" in v for v in results.values()):
        redis = find_redis_server()
        require_program("redis-server", redis)
    if "http" in results:
        require_program("wrk", shutil.which("wrk") or os.path.exists("/usr/bin/wrk"))
    require_modules(("uvicorn", "channels", "channels_redis", "django"))
    return redis


def describe_echo(r):
    return (f"p50 {fmt_time(r['p50'])}  p99 {fmt_time(r['p99'])}  p99.9 {fmt_time(r['p999'])}  "
            f"CPU {r['cpu_us']:.0f} µs/rt")


def describe_bcast(r):
    return (f"all {fmt_time(r['total'])}  first {fmt_time(r['first'])}  cold {fmt_time(r['cold'])}  "
            f"CPU {r['cpu_ms']:.3g} ms/bcast  connect {r['connect_s']:.2g} s")


def describe_http(r):
    return (f"{fmt_num(r['rps']):>7} req/s  p50 {fmt_time(r['p50']):>8}  p99 {fmt_time(r['p99']):>8}  "
            f"CPU {r['cpu_us']:.1f} µs/req" + (f"  ERRORS {r['errors']} non2xx {r['non2xx']}" if r["bad"] else ""))


def describe_resume(r):
    return (f"gap p50 {fmt_time(r['gap_p50'])}  p99 {fmt_time(r['gap_p99'])}  max {fmt_time(r['gap_max'])}  "
            f"(steady p99 {fmt_time(r['steady_p99'])})  closes {r['closes']} lost {r['lost']} dup {r['duplicated']}")


SCENARIO_RUNS = {"echo": (run_echo, describe_echo), "bcast": (run_bcast, describe_bcast),
                 "http": (run_http, describe_http), "resume": (run_resume, describe_resume)}

PARAMS = ("runs", "quick", "only", "variants", "echo_m", "echo_warm", "clients", "client_procs", "reps", "warm_reps",
          "rep_pause", "duration", "warmup", "connections", "wrk_cpu", "resume_clients", "resume_period", "hups",
          "resume_steady", "hup_settle", "hup_pause", "quiet_wait")


def main(argv=None):
    args = parse_args(argv)
    results = {sc: {k: [] for k in VARIANTS[sc] if args.variants is None or k in args.variants} for sc in args.only}
    results = {sc: v for sc, v in results.items() if v}
    if not results:
        log("nothing to measure: no variant of these scenarios was chosen")
        return 2
    redis_binary = check_prerequisites(args, results)
    out_dir = results_dir(args, full=not args.quick and set(args.only) == set(VARIANTS) and args.variants is None)
    nofile = raise_nofile(max(16384, args.clients * 4))
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    with interruptible(), contextlib.ExitStack() as cleanup:
        env = Env(args, cleanup)
        if redis_binary:
            env.redis = RedisServer(redis_binary)
            cleanup.callback(env.redis.stop)
            env.redis.start()
        info = env.machine_info(PACKAGES)
        if env.redis:
            info["versions"]["redis-server"] = env.redis.version
        if "http" in results:
            info["versions"]["wrk"] = wrk_version()
        log(f"{args.runs} run(s) of {', '.join(f'{sc}: {list(v)}' for sc, v in results.items())}; "
            f"open-file limit {nofile}"
            + (f"; redis-server {env.redis.version} on port {env.redis.port}" if env.redis else ""))
        for run, where in env.runs():
            for sc, variants in results.items():
                take, describe = SCENARIO_RUNS[sc]
                for key in variants:
                    variants[key].append(env.measure(where, f"{sc}/{key}", f"{sc:<6} {VARIANTS[sc][key]:<40}",
                                                     functools.partial(take, env, key, run), describe))
    elapsed = time.monotonic() - t_start
    env.note_source_change(info)
    params = {k: getattr(args, k) for k in PARAMS}
    targets = build_targets(results)
    tabs = tables({**results, "_params": params}, targets, env.unit)
    print_tables(tabs)
    print("\n".join((["\nPROBLEMS", *env.problems] if env.problems else []) + error_lines(env.errors)), flush=True)
    env.print_runtime(elapsed)
    if out_dir:
        write(out_dir, "asgi", meta=env.meta(info, elapsed), params=params, runs=results, tables=tabs,
              started=started)
    return 1 if env.errors else 0


if __name__ == "__main__":
    sys.exit(main())
