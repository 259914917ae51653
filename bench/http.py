#!/usr/bin/env python3
"""HTTP benchmark: shmchannels serve vs uvicorn, daphne and gunicorn, same app logic.

    .venv/bin/python bench/http.py            # full run (5 rounds), rewrites its docs/benchmarks.md section + PNG
    .venv/bin/python bench/http.py --quick    # smoke run; writes docs only with --write
    .venv/bin/python bench/http.py --runs 3 --only shm,uvicorn

Every server answers GET / with 200 text/plain "Hello, world!":

  shm        shmchannels serve, 1 protocol server + 1 worker, a Channels-1 consumer (bench/apps/bench_shm.py)
  uvicorn    uvicorn, 1 process, httptools, an ASGI 3 app (bench/apps/bench_asgi.py)
  daphne     daphne, the same ASGI 3 app
  gunicorn   gunicorn, 1 sync worker, a WSGI app (bench/apps/bench_wsgi.py)
  shm-wsgi   shmchannels serve --wsgi, the same WSGI app through the workers' WSGI adapter

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
import time  # noqa: E402

from _common import BenchError, fmt_num, fmt_time, free_port, log, median  # noqa: E402
from _report import (  # noqa: E402
    closing_sections,
    error_lines,
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
from _run import docs_wanted, interruptible, new_parser, parse, require_program, write_docs  # noqa: E402
from _servers import (  # noqa: E402
    ROOT,
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

DOC = os.path.join(ROOT, "docs", "benchmarks.md")
PNG = os.path.join(ROOT, "docs", "bench_http.png")
START, END = "<!-- bench:http:start -->", "<!-- bench:http:end -->"
QUIET_BUDGET = 300.0  # seconds a run may spend in all waiting for other processes to leave the CPUs
PACKAGES = ("shmchannels", "uvicorn", "httptools", "uvloop", "daphne", "Twisted", "gunicorn")

# key -> (label, colour)
SERVERS = {
    "shm": ("shmchannels (consumer)", "#1f77b4"),
    "uvicorn": ("uvicorn (httptools, ASGI 3)", "#2ca02c"),
    "daphne": ("daphne (ASGI 3)", "#d62728"),
    "gunicorn": ("gunicorn sync (WSGI)", "#9467bd"),
    "shm-wsgi": ("shmchannels --wsgi (WSGI)", "#17becf"),
}
ROLE_COLORS = {"protocol": "#1f77b4", "worker": "#ff7f0e", "master": "#7f7f7f", "server": "#2ca02c"}


def server_argv(key, port, prefix):
    bind = f"127.0.0.1:{port}"
    if key in ("shm", "shm-wsgi"):
        app = ["--routing", "bench_shm:routes"] if key == "shm" else ["--wsgi", "bench_wsgi:app"]
        return [venv_exe("shmchannels"), "serve", "--bind", bind, "--protocol-servers", "1", "--workers", "1",
                *app, "--prefix", prefix, "--log-level", "warning"]
    if key == "uvicorn":
        return [venv_exe("uvicorn"), "bench_asgi:app", "--host", "127.0.0.1", "--port", str(port),
                "--http", "httptools", "--log-level", "warning", "--no-access-log", "--lifespan", "off"]
    if key == "daphne":
        return [venv_exe("daphne"), "-b", "127.0.0.1", "-p", str(port), "-v", "0", "bench_asgi:app"]
    if key == "gunicorn":
        return [venv_exe("gunicorn"), "-w", "1", "-k", "sync", "-b", bind, "--log-level", "warning",
                "bench_wsgi:app"]
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


def measure(env, key, rnd):
    a = env.args
    port = free_port()
    prefix = env.new_prefix() if key.startswith("shm") else None
    srv = Server(SERVERS[key][0], server_argv(key, port, prefix), port, expect_hello, env=server_env(env.snap),
                 prefix=prefix, log_path=os.path.join(env.logdir, f"{key}-{rnd}.log"))
    try:
        srv.start()
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
        if not roles:
            roles = {p: ("master" if (key == "gunicorn" and p == leader) else "server") for p in pids}
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
    return t


RATIO_PAIRS = [
    ("shm", "uvicorn", "rps", "req/s: shmchannels / uvicorn"),
    ("shm", "daphne", "rps", "req/s: shmchannels / daphne"),
    ("shm", "gunicorn", "rps", "req/s: shmchannels / gunicorn sync"),
    ("shm-wsgi", "gunicorn", "rps", "req/s: shmchannels --wsgi / gunicorn sync"),
    ("shm-wsgi", "shm", "rps", "req/s: shmchannels --wsgi / shmchannels consumer"),
    ("shm", "uvicorn", "p50", "p50 latency: shmchannels / uvicorn"),
    ("shm", "uvicorn", "p99", "p99 latency: shmchannels / uvicorn"),
    ("shm", "daphne", "p99", "p99 latency: shmchannels / daphne"),
    ("shm", "uvicorn", "cpu_us", "server CPU per request: shmchannels / uvicorn"),
]


def ratio_rows(results):
    return [ratio_row(text, ratios(results, a, b, field))
            for a, b, field, text in RATIO_PAIRS if a in results and b in results]


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
        if bad:
            notes.append(f"**{bad} socket errors / non-2xx in all**")
        if failed:
            notes.append(f"**{failed} round(s) failed**")
        rows.append((label, rps, p50, p99, "; ".join(n for n in notes if n)))
    return rows


def print_report(results, targets, env):
    out = ["\nRESULTS (median over rounds, [min – max])"]
    out.append(f"    {'server':<30} {'req/s':>9} {'range':>17}  {'p50':>8} {'range':>19}  {'p99':>8} {'range':>19}")
    for label, rps, p50, p99, notes in result_rows(results):
        out.append(f"    {label:<30} {fmt_num(rps[0]):>9} {rng(rps[1], rps[2], fmt_num):>17}  "
                   f"{fmt_time(p50[0]):>8} {rng(p50[1], p50[2], fmt_time):>19}  "
                   f"{fmt_time(p99[0]):>8} {rng(p99[1], p99[2], fmt_time):>19}")
        out.append(f"        {notes}")
    out += ratio_lines(ratio_rows(results), env.unit, 52, 8)
    out += target_lines(targets, env.unit, 40, 8)
    out += problem_lines(env.problems) + error_lines(env.errors)
    print("\n".join(out), flush=True)


def reading(results, targets, env):
    lines = []
    g = lambda k, f: stat(results, k, f)[0] if k in results else None  # noqa: E731
    shm, uv, da, gu, sw = (g(k, "rps") for k in ("shm", "uvicorn", "daphne", "gunicorn", "shm-wsgi"))
    if shm and uv and da:
        lines.append(
            f"- **Throughput:** shmchannels serves {fmt_num(shm)} req/s through its worker, uvicorn "
            f"{fmt_num(uv)} req/s in one process, daphne {fmt_num(da)} req/s"
            + (f", gunicorn's sync worker {fmt_num(gu)} req/s" if gu else "")
            + (f", and shmchannels running the WSGI app {fmt_num(sw)} req/s" if sw else "") + ".")
    roles = {}
    for r in results.get("shm", []):
        if r:
            for role, v in r["cpu_role_us"].items():
                roles.setdefault(role, []).append(v)
    if roles and uv:
        ps, wk = median(roles.get("protocol", [])), median(roles.get("worker", []))
        lines.append(
            f"- **Where the CPU goes:** per request the shmchannels protocol server spends {ps:.1f} µs and the "
            f"worker {wk:.1f} µs (master: {median(roles.get('master', [0])):.1f} µs); uvicorn spends "
            f"{g('uvicorn', 'cpu_us'):.1f} µs in its one process, daphne {g('daphne', 'cpu_us'):.1f} µs.  "
            f"shmchannels does more work per request in total, but in two processes that run in parallel: it "
            f"kept {g('shm', 'cores'):.2f} cores busy against uvicorn's {g('uvicorn', 'cores'):.2f}, on a 2-vCPU "
            f"box where wrk itself used {g('shm', 'wrk_cores'):.2f} of a core (pinned to CPU {env.args.wrk_cpu}).  "
            f"Its throughput is therefore bounded by the slower of the two processes and by how much CPU is left "
            f"beside wrk, not by their sum.")
    p99s, p99u = g("shm", "p99"), g("uvicorn", "p99")
    if p99s and p99u and p99s > 1.5 * p99u:
        lines.append(
            f"- **Why shmchannels' tail is longer:** during the timed runs its processes were runnable but "
            f"waiting for a CPU ({wait_text(results, 'shm')} of the wall time, from /proc schedstat) while "
            f"uvicorn's process waited {wait_text(results, 'uvicorn').split()[-1]}: the protocol server "
            f"(~{g('shm', 'cores'):.1f} cores together with the worker) and wrk need more than the 2 vCPUs offer "
            f"once anything else runs, so a request now and then waits for a scheduler time slice.  This is CPU "
            f"cost, not a stall in the bus: the protocol server alone spends more CPU per request than all of "
            f"uvicorn.")
    if p99s and p99u:
        lines.append(
            f"- **Latency at {env.args.connections} connections:** shmchannels p50 {fmt_time(g('shm', 'p50'))}, "
            f"p99 {fmt_time(p99s)}; uvicorn p50 {fmt_time(g('uvicorn', 'p50'))}, p99 {fmt_time(p99u)}; daphne p50 "
            f"{fmt_time(g('daphne', 'p50'))}, p99 {fmt_time(g('daphne', 'p99'))}.  With a closed loop of "
            f"{env.args.connections} connections latency is mostly queueing (≈ connections / throughput), so the "
            f"p50s follow the throughputs; the p99 shows the stalls (an extra hop through the worker, scheduling of "
            f"2-3 busy processes on 2 vCPUs).")
    if gu and sw:
        lines.append(
            f"- **WSGI:** the same WSGI callable runs {sw / gu:.2g}x as fast behind shmchannels as in gunicorn's "
            f"sync worker, which closes the connection after every response (wrk reconnects for each request) and "
            f"serves one request at a time; shmchannels keeps the connections alive in the protocol server and "
            f"its WSGI adapter costs {100 * (1 - sw / shm):.0f}% of the throughput of a plain consumer."
            if shm else "")
    lines += target_readings(targets, env.unit)
    bad = {k: sum(r["bad"] for r in rs if r) for k, rs in results.items()}
    if any(bad.values()):
        lines.append("- **wrk saw socket errors or non-2xx responses:** " +
                     ", ".join(f"{SERVERS[k][0]} {v}" for k, v in bad.items() if v) + ".")
    if env.problems:
        lines.append("- **Problems while stopping servers:** " + "; ".join(env.problems[:5]) + ".")
    else:
        lines.append("- Every server stopped on SIGTERM within the timeout, and no shmchannels bus files were left "
                     "in /dev/shm (checked after every stop).")
    return "\n".join(l for l in lines if l)


def markdown(results, targets, info, env, started, elapsed, png_name):
    a = env.args
    md = ["## HTTP", "", generated_line("http.py", a, env.unit, started, elapsed), "",
          server_machine_line(info, env), ""]
    md.append("### Method")
    md.append("")
    md.extend([
        "- Same logic everywhere: `GET /` answers 200, `content-type: text/plain`, body `Hello, world!` "
        "(13 bytes).  shmchannels: a Channels-1 consumer `def hello(message): "
        "message.reply_channel.send({...})` (`bench/apps/bench_shm.py`), i.e. protocol server → `http.request` "
        "→ worker → reply channel → protocol server.  uvicorn and daphne: an ASGI 3 app "
        "(`bench/apps/bench_asgi.py`).  gunicorn and `shmchannels --wsgi`: a WSGI app "
        "(`bench/apps/bench_wsgi.py`).",
        f"- Servers: `shmchannels serve --protocol-servers 1 --workers 1 --log-level warning` (no access log, "
        f"uvloop `auto`: {env.loops.get('shm', '?')} in the protocol server); `uvicorn --http httptools --no-access-log` (1 process, loop "
        f"`auto`: {env.loops.get('uvicorn', '?')}); `daphne -v 0` (Twisted, no access log); `gunicorn -w 1 -k sync` (the sync "
        "worker answers `Connection: close`, so wrk reconnects for every request).  Each server is a separate "
        "process group started by the script on a free 127.0.0.1 port, checked with a `GET /` before and after "
        "the load, and stopped with SIGTERM (SIGKILL after 20 s; never needed unless listed below), also on "
        "errors and Ctrl-C.  shmchannels runs from a copy of its source taken at the start of the run "
        "(checked in `/proc/PID/maps`), so edits to the working tree during the run do not mix versions.",
        f"- Load: `taskset -c {a.wrk_cpu} wrk -t1 -c{a.connections} -d{a.duration:g}s --latency` against "
        f"`http://127.0.0.1:PORT/`, after a {a.warmup:g} s warm-up run of the same command on the same server "
        f"process.  wrk is pinned to CPU {a.wrk_cpu}; the servers are not pinned (the kernel places their "
        f"processes on both CPUs, so they share CPU {a.wrk_cpu} with wrk).  Latency percentiles are wrk's "
        "(`--latency`, a closed loop: each connection sends its next request when the previous answer "
        "arrived).",
        f"- {a.runs} round(s), servers interleaved in every round ({', '.join(results)}), each round a fresh "
        "server process.  Medians over rounds with min – max; ratios are computed within each round, then "
        "summarised.  Server CPU per request: on-CPU time of all threads of all processes of the server "
        "(`/proc/PID/task/*/schedstat`, ns resolution; split by role for shmchannels using `shmchannels status`) "
        "over the timed run / requests; it includes any busy-waiting (shmchannels' layer spins up to "
        "`spin_us` before parking).  Cores busy = that CPU / wall time.  wrk's CPU comes from `getrusage(RUSAGE_CHILDREN)`.",
    ])
    md.append("")
    md.append("### Results")
    md.append("")
    md.append("| server | req/s median | req/s min – max | p50 | p50 min – max | p99 | p99 min – max | notes |")
    md.append("|---|---:|---|---:|---|---:|---|---|")
    for label, rps, p50, p99, notes in result_rows(results):
        md.append(f"| {label} | {fmt_num(rps[0])} | {rng(rps[1], rps[2], fmt_num)} | {fmt_time(p50[0])} | "
                  f"{rng(p50[1], p50[2], fmt_time)} | {fmt_time(p99[0])} | {rng(p99[1], p99[2], fmt_time)} | {notes} |")
    md.append("")
    md += closing_sections(ratio_rows(results), targets, env.unit, "HTTP benchmark: medians with min – max whiskers",
                           png_name, reading(results, targets, env), env.errors)
    return "\n".join(md) + "\n"


def chart(results, env, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in results if stat(results, k, "rps")[0] is not None]
    labels = [SERVERS[k][0] for k in keys]
    colors = [SERVERS[k][1] for k in keys]
    fig, axes = plt.subplots(2, 2, figsize=(15, 10.5))
    fig.suptitle(f"HTTP 'Hello, world!' on 127.0.0.1, wrk -c{env.args.connections} pinned to CPU "
                 f"{env.args.wrk_cpu}, {env.args.runs} interleaved round(s) (bars: median; whiskers: min – max)",
                 fontsize=12)

    ax = axes[0, 0]
    st = [stat(results, k, "rps") for k in keys]
    meds = [s[0] for s in st]
    ax.barh(range(len(keys)), meds, color=colors, edgecolor="k", linewidth=0.3,
            xerr=[[m - s[1] for m, s in zip(meds, st)], [s[2] - m for m, s in zip(meds, st)]], capsize=3)
    for i, (m, s) in enumerate(zip(meds, st)):
        ax.text(s[2], i, "  " + fmt_num(m), va="center", fontsize=9)
    marks = []
    if "daphne" in keys:
        marks.append((2 * stat(results, "daphne", "rps")[0], "target: 2x daphne"))
    if "uvicorn" in keys:
        marks.append((0.6 * stat(results, "uvicorn", "rps")[0], "target: 0.6x uvicorn"))
    for (x, text), style in zip(marks, ("--", ":")):
        ax.axvline(x, color="k", ls=style, lw=1.1, label=text)
    if marks:
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3, frameon=False)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels(labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, max(s[2] for s in st) * 1.22)
    ax.set_xlabel("requests/s (higher is better)")
    ax.set_title("Throughput")
    ax.grid(axis="x", alpha=0.3)

    ax = axes[0, 1]
    h = 0.4
    allv = []
    for j, (field, alpha, name) in enumerate((("p50", 1.0, "p50"), ("p99", 0.5, "p99"))):
        st = [stat(results, k, field) for k in keys]
        m = [s[0] for s in st]
        allv += [s[1] for s in st] + [s[2] for s in st]
        ys = [i - 0.2 + h * j for i in range(len(keys))]
        ax.barh(ys, m, height=h * 0.9, color=colors, alpha=alpha, hatch=None if j == 0 else "//", edgecolor="k",
                linewidth=0.3, xerr=[[a - s[1] for a, s in zip(m, st)], [s[2] - a for a, s in zip(m, st)]],
                capsize=2, label=name)
        for y, v, s in zip(ys, m, st):
            ax.text(s[2], y, "  " + fmt_time(v), va="center", fontsize=8)
    if "uvicorn" in keys:
        x = 2 * stat(results, "uvicorn", "p99")[0]
        ax.axvline(x, color="k", ls="--", lw=0.9, label="target: shmchannels p99 <= 2x uvicorn p99")
    ax.set_xscale("log")
    pos = [v for v in allv if v]
    ax.set_xlim(min(pos) / 2, max(pos) * 6)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels(labels, fontsize=9)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt_time(v)))
    ax.set_xlabel(f"latency at {env.args.connections} connections (log; lower is better)")
    ax.set_title("Latency p50 (solid) and p99 (hatched)")
    grey_legend(ax, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3, frameon=False)
    ax.grid(axis="x", which="both", alpha=0.3)

    ax = axes[1, 0]
    roles_all = ["protocol", "worker", "server", "master", "other"]
    names = {"protocol": "protocol server", "worker": "worker", "server": "serving process (uvicorn, daphne, gunicorn's worker)",
             "master": "master / arbiter", "other": "other"}
    left = [0.0] * len(keys)
    for role in roles_all:
        widths = []
        for k in keys:
            xs = [r["cpu_role_us"].get(role, 0.0) for r in results[k] if r]
            widths.append(median(xs) if xs else 0.0)
        if any(w >= 0.05 for w in widths):
            ax.barh(range(len(keys)), widths, left=left, color=ROLE_COLORS.get(role, "#cccccc"), edgecolor="k",
                    linewidth=0.3, label=names[role])
            left = [a + b for a, b in zip(left, widths)]
    wrk = [stat(results, k, "wrk_cpu_us")[0] or 0 for k in keys]
    for i, (tot, w) in enumerate(zip(left, wrk)):
        ax.text(tot, i, f"  {tot:.1f} µs  (wrk {w:.1f} µs)", va="center", fontsize=8.5)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels(labels, fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.45)
    ax.set_xlabel("server CPU per request, µs (all threads of all server processes; lower is better)")
    ax.set_title("Where the server's CPU goes (wrk's own CPU per request in brackets)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=3, frameon=False)
    ax.grid(axis="x", alpha=0.3)

    ax = axes[1, 1]
    for k in keys:
        ys = vals(results, k, "rps")
        ax.plot(range(1, len(ys) + 1), [y if y else float("nan") for y in ys], marker="o",
                color=SERVERS[k][1], label=SERVERS[k][0])
    ax.set_xlabel("round")
    ax.set_ylabel("requests/s")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: fmt_num(v)))
    ax.set_xticks(range(1, env.args.runs + 1))
    ax.set_title("Throughput per round (drift and noise)")
    ax.legend(fontsize=8)
    ax.grid(which="both", alpha=0.3)

    save_chart(fig, path, top=0.95)


# ----------------------------------------------------------------------- main


def parse_args(argv=None):
    p = new_parser(__doc__, quick="smoke run: 1 round, 1 s warm-up, 2 s load",
                   runs="rounds (default 5; 1 with --quick)",
                   write="with --quick or --only: still rewrite the docs section and PNG",
                   only=",".join(SERVERS), only_help=f"comma-separated subset of {','.join(SERVERS)}")
    p.add_argument("--duration", type=float, default=None, help="seconds of timed load per server (default 5)")
    p.add_argument("--warmup", type=float, default=None, help="seconds of warm-up load per server (default 2)")
    p.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    p.add_argument("--wrk-cpu", type=int, default=None, help="CPU wrk is pinned to (default: the last one)")
    p.add_argument("--quiet-wait", type=float, default=None,
                   help="before each measurement wait up to this many seconds until no other process is "
                        "runnable (default 30; 0 with --quick)")
    a = parse(p, argv, md=DOC, png=PNG, choices=SERVERS, kind="server")
    a.duration = a.duration or (2.0 if a.quick else 5.0)
    a.warmup = a.warmup or (1.0 if a.quick else 2.0)
    a.quiet_wait = (0.0 if a.quick else 30.0) if a.quiet_wait is None else a.quiet_wait
    if a.wrk_cpu is None:
        a.wrk_cpu = max(os.sched_getaffinity(0))
    return a


def check_prerequisites(args):
    require_program("wrk", shutil.which("wrk") or os.path.exists("/usr/bin/wrk"))
    need = {"uvicorn": "uvicorn", "daphne": "daphne", "gunicorn": "gunicorn"}
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
    write = docs_wanted(args, full=not args.quick and set(args.only) == set(SERVERS))
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
    print_report(results, targets, env)
    env.print_runtime(elapsed)
    if write:
        write_docs(args, (START, END), functools.partial(chart, results, env),
                   lambda png_name: markdown(results, targets, info, env, started, elapsed, png_name))
    return 1 if env.errors else 0


if __name__ == "__main__":
    sys.exit(main())
