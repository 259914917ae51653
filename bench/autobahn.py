#!/usr/bin/env python3
"""The whole Autobahn|Testsuite (``kosoku``, which drives Autobahn's own case
files) against shmchannels and uvicorn, side by side in one run.

    .venv/bin/python bench/autobahn.py                  # every case; writes bench/results/autobahn.json
    .venv/bin/python bench/autobahn.py -i '9.*' --results-dir /tmp/r

    shm       shmchannels serve --ws-max-size 16777216, 1 protocol server + 2
              workers: the Channels-1 echo consumer tests/apps/echo1.py, so every
              message goes through a worker and back (permessage-deflate on: the default)
    uvicorn   uvicorn (websockets), an ASGI 3 echo (bench/apps/bench_asgi.py), in-process

tests/e2e/test_autobahn.py runs the sections most likely to break in CI;
this is the full run (about 6 min per server on the 2-core box: 12.* and 13.*,
1000 compressed messages per case, are most of it).  Conformance is not noisy,
so one run; the wall time per server is printed too.
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE] + [_HERE]

from _common import BenchError, free_port, log, machine_info  # noqa: E402
from _results import add_results_dir, print_tables, table, write  # noqa: E402
from _servers import ROOT, Server, http_get, server_env, venv_exe  # noqa: E402

BEHAVIORS = ("OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED")
TESTS_APPS = os.path.join(ROOT, "tests", "apps")
LABELS = {"shm": "shmchannels serve (through a worker)", "uvicorn": "uvicorn (websockets), ASGI echo"}


def server_argv(key, port, prefix):
    if key == "shm":
        return [venv_exe("shmchannels"), "serve", "--bind", f"127.0.0.1:{port}", "--protocol-servers", "1",
                "--workers", "2", "--routing", "echo1:routes", "--pythonpath", TESTS_APPS, "--prefix", prefix,
                "--ws-max-size", str(16 << 20), "--capacity", "1000", "--log-level", "warning"]
    return [venv_exe("uvicorn"), "bench_asgi:app", "--host", "127.0.0.1", "--port", str(port), "--ws", "websockets",
            "--log-level", "warning", "--no-access-log", "--lifespan", "off"]


def answers(port):
    status = http_get(port)[0]
    if status != 200:
        raise BenchError(f"GET / answered {status}")


def run_suite(key, include, logdir):
    port = free_port()
    prefix = f"bab{os.getpid()}" if key == "shm" else None
    srv = Server(LABELS[key], server_argv(key, port, prefix), port, answers, env=server_env(None), prefix=prefix,
                 log_path=os.path.join(logdir, f"{key}.log"))
    out = os.path.join(logdir, key)
    argv = [shutil.which("kosoku") or venv_exe("kosoku"), f"127.0.0.1:{port}", "-p", "2", "-o", out]
    for case in include:
        argv += ["-i", case]
    srv.start()
    started = time.monotonic()
    try:
        subprocess.run(argv, cwd=logdir, capture_output=True, timeout=3600)
    finally:
        took = time.monotonic() - started
        srv.stop()
    with open(os.path.join(out, "index.json")) as f:
        index = json.load(f)
    (cases,) = index.values()
    return {"seconds": took, "cases": {c: {k: r.get(k) for k in ("behavior", "behaviorClose", "remoteCloseCode")}
                                       for c, r in cases.items()}}


def tables(results):
    rows, others = [], []
    for key, res in results.items():
        counts = {b: sum(r["behavior"] == b for r in res["cases"].values()) for b in BEHAVIORS}
        rows.append([LABELS[key], *({"v": counts[b], "f": "int"} for b in BEHAVIORS),
                     {"v": len(res["cases"]), "f": "int"}, {"v": res["seconds"], "f": "time"}])
        for behavior in ("NON-STRICT", "FAILED", "UNIMPLEMENTED"):
            ids = sorted((c for c, r in res["cases"].items() if r["behavior"] == behavior),
                         key=lambda c: [int(x) for x in c.split(".")])
            if ids:
                others.append([LABELS[key], behavior, ", ".join(ids)])
    return [table("results", "Autobahn cases by result", ["server", *BEHAVIORS, "cases", "wall time"], rows,
                  "l" + "r" * (len(BEHAVIORS) + 2)),
            table("cases", "Cases not OK (NON-STRICT ones are explained in docs/decisions.md, 'Autobahn')",
                  ["server", "result", "cases"], others or [["-", "-", "none"]])]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-i", "--include", action="append", default=None, help="case id or glob (default: all)")
    ap.add_argument("--variants", default="shm,uvicorn", help="comma-separated: shm,uvicorn (default both)")
    add_results_dir(ap)
    args = ap.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    results = {}
    with tempfile.TemporaryDirectory(prefix="autobahn-") as logdir:
        for key in args.variants.split(","):
            log(f"{LABELS[key]}: running {'the whole suite' if not args.include else ' '.join(args.include)}")
            results[key] = run_suite(key, args.include or [], logdir)
    tabs = tables(results)
    print_tables(tabs)
    info = machine_info()
    meta = {"machine": {"cpus": info["nproc"], "cpu": info["cpu"], "python": info["python"]},
            "versions": {k: v for k, v in info["versions"].items() if k == "shmchannels"}, "source": info["source"],
            "elapsed_min": round((time.monotonic() - t0) / 60, 1)}
    full = not args.include and args.variants == "shm,uvicorn"
    if full or "--results-dir" in (argv if argv is not None else sys.argv):
        write(args.results_dir, "autobahn", meta=meta, params={"include": args.include or "all"}, runs=results,
              tables=tabs, started=started)
    bad = sum(r["behavior"] in ("FAILED", "UNIMPLEMENTED") for r in results.get("shm", {"cases": {}})["cases"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
