"""Helpers of bench/http.py and bench/websocket.py: a snapshot of the
shmchannels source, server processes (start, readiness, CPU, stop), wrk, and
the state of a run of server measurements.

Every server runs in its own session (``start_new_session``), so a Ctrl-C in
the terminal reaches only the benchmark, which then stops the servers in its
``finally`` blocks; anything still alive in the session after the stop
timeout is SIGKILLed, and a killed shmchannels master's bus files are
removed from /dev/shm.
"""

import contextlib
import glob
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from _common import BenchError, log, machine_info, package_versions, shm_files
from _run import Run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APPS = os.path.join(ROOT, "bench", "apps")
VENV_BIN = os.path.dirname(sys.executable)
TICK = os.sysconf("SC_CLK_TCK")


def raise_nofile(want=16384):
    """Raise the soft open-file limit (children inherit it); returns it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = hard if hard != resource.RLIM_INFINITY and hard < want else want
    if soft < new:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ------------------------------------------------------------ source snapshot


def snapshot_source():
    """Copy shmchannels (with its server/ and workers/ subpackages, as the
    editable install maps them, and the built extension) aside.

    Servers run with this copy first on PYTHONPATH, so every measurement of a
    run uses one version of shmchannels even if the working tree is edited
    meanwhile.  Returns (directory, description, warning)."""
    snap = tempfile.mkdtemp(prefix="bench-shm-src-")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    pkg = os.path.join(snap, "shmchannels")
    shutil.copytree(os.path.join(ROOT, "shmchannels"), pkg, ignore=ignore)
    for sub in ("server", "workers"):
        shutil.copytree(os.path.join(ROOT, sub), os.path.join(pkg, sub), ignore=ignore)
    desc = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = lambda *a: subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True,  # noqa: E731
                                        timeout=10).stdout
        head = git("rev-parse", "--short", "HEAD").strip()
        changed = git("status", "--porcelain", "--", "shmchannels", "server", "workers").splitlines()
        desc = f"git {head}"
        if changed:
            desc += f" + {len(changed)} uncommitted/untracked file(s) in shmchannels/, server/, workers/"
    desc += f"; source sha1 {source_hash()}"
    warning = None
    bus_dir = os.path.join(ROOT, "shmchannels", "bus")
    c_srcs = glob.glob(os.path.join(bus_dir, "*.c")) + glob.glob(os.path.join(bus_dir, "*.h"))
    built = glob.glob(os.path.join(bus_dir, "_shm.*.so"))
    newest = max((os.path.getmtime(p) for p in c_srcs), default=0)
    if built and os.path.getmtime(built[0]) < newest:
        warning = "shmchannels/bus/*.c or *.h is newer than the built extension: rebuild (pip install -e .) first"
    return snap, desc, warning


def source_hash():
    """sha1 (10 hex) of the working tree's shmchannels/, server/ and workers/ sources."""
    h = hashlib.sha1()
    for sub in ("shmchannels", "server", "workers"):
        top = os.path.join(ROOT, sub)
        for dirpath, dirnames, files in sorted(os.walk(top)):
            dirnames.sort()
            for f in sorted(files):
                if f.endswith((".py", ".c", ".html")):
                    path = os.path.join(dirpath, f)
                    with open(path, "rb") as fh:
                        h.update(os.path.relpath(path, ROOT).encode() + b"\0" + fh.read())
    return h.hexdigest()[:10]


# ---------------------------------------------------------------- processes


def proc_stat(pid):
    """(session id, cpu ticks user+sys) of a process, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    # rest[0] is field 3 (state): session is field 6, utime 14, stime 15
    return int(rest[3]), int(rest[11]) + int(rest[12])


def session_pids(sid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(int(d))
            if st and st[0] == sid:
                out.append(int(d))
    return out


def sched_seconds(pid):
    """(on-CPU, runnable-but-waiting-for-a-CPU) seconds of a process, all its
    threads: the sums of /proc/PID/task/*/schedstat (ns resolution).  Falls
    back to (utime+stime from /proc/PID/stat, None)."""
    run = wait = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                fields = f.read().split()
            run += int(fields[0])
            wait += int(fields[1])
        return run / 1e9, wait / 1e9
    except (OSError, ValueError, IndexError):
        st = proc_stat(pid)
        return (st[1] / TICK, None) if st else None


def cpu_times(pids):
    """{pid: (CPU seconds, run-queue wait seconds)} for the given pids (vanished ones left out)."""
    out = {}
    for p in pids:
        v = sched_seconds(p)
        if v is not None:
            out[p] = v
    return out


def cpu_by_role(c0, c1, roles):
    """CPU and run-queue wait seconds between two cpu_times() samples, each
    summed per role (``roles``: pid -> role, "other" for the rest)."""
    cpu, wait = {}, {}
    for pid, (t, w) in c1.items():
        if pid in c0:
            role = roles.get(pid, "other")
            cpu[role] = cpu.get(role, 0.0) + (t - c0[pid][0])
            if w is not None and c0[pid][1] is not None:
                wait[role] = wait.get(role, 0.0) + (w - c0[pid][1])
    return cpu, wait


def check_runs_snapshot(server, snap):
    """The shmchannels processes of ``server`` must run the snapshot, not the working tree."""
    for pid in server.pids():
        try:
            with open(f"/proc/{pid}/maps") as f:
                maps = f.read()
        except OSError:
            continue
        if "_shm." in maps and snap not in maps:
            raise BenchError(f"{server.name} (pid {pid}) does not run the source snapshot in {snap}")


class Server:
    """One server program (its own session), started and stopped by us.

    ``ready`` is a callable(port) -> None that raises until the server
    answers as it should."""

    def __init__(self, name, argv, port, ready, env=None, prefix=None, cwd=ROOT, log_path=None):
        self.name = name
        self.argv = argv
        self.port = port
        self.ready = ready
        self.env = env
        self.prefix = prefix  # shmchannels bus prefix, if any
        self.cwd = cwd
        self.proc = None
        self.log_path = log_path
        self._log = None
        self.roles = {}  # pid -> role, for shmchannels (from `shmchannels status`)

    def start(self, timeout=60.0):
        self._log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            last = None
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise BenchError(f"{self.name} exited with {self.proc.returncode} while starting{self._tail()}")
                try:
                    self.ready(self.port)
                    return self
                except (OSError, BenchError) as exc:
                    last = exc
                time.sleep(0.1)
            raise BenchError(f"{self.name} not ready within {timeout:.0f} s ({last}){self._tail()}")
        except BaseException:  # not ready, an error, Ctrl-C: never leave it running
            tail = self._tail()
            self.stop()
            if tail:
                log(f"    {self.name} output:{tail}")
            raise

    def _tail(self):
        if not self.log_path:
            return ""
        with contextlib.suppress(OSError):
            with open(self.log_path, "rb") as f:
                text = f.read()[-1500:].decode("utf-8", "replace").strip()
            if text:
                return "; its output ends:\n" + text
        return ""

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def pids(self):
        return session_pids(self.proc.pid) if self.proc else []

    def shm_roles(self):
        """pid -> 'master' / 'protocol' / 'worker' from `shmchannels status --json`."""
        import json

        out = subprocess.run([sys.executable, "-m", "shmchannels", "status", "--prefix", self.prefix, "--json"],
                             cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise BenchError(f"shmchannels status failed: {out.stderr.strip()[-500:]}")
        data = json.loads(out.stdout)
        self.roles = {p["pid"]: p["kind"] for p in data["processes"]}
        return self.roles

    def stop(self, timeout=20.0):
        """TERM the leader, wait, then KILL whatever is left of its session.
        Returns a list of problems (empty when it stopped cleanly)."""
        problems = []
        if self.proc is None:
            return problems
        sid = self.proc.pid
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(sid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                problems.append(f"{self.name} did not exit within {timeout:.0f} s of SIGTERM; killed")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(sid, signal.SIGKILL)
                self.proc.wait(10)
        elif self.proc.returncode not in (0, -signal.SIGTERM):
            problems.append(f"{self.name} had exited with {self.proc.returncode}{self._tail()}")
        # stragglers of the session (children that outlived their parent)
        deadline = time.monotonic() + 5
        while (left := session_pids(sid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if left:
            problems.append(f"{self.name}: processes {left} outlived the server; killed")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(sid, signal.SIGKILL)
        if self.prefix:
            files = shm_files(self.prefix)
            if files:
                problems.append(f"{self.name} left {len(files)} file(s) in /dev/shm: "
                                f"{', '.join(os.path.basename(f) for f in files)} (removed)")
                for f in files:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(f)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()
        self.proc = None
        return problems


def server_env(snap, extra=None):
    """Environment of a server: the shmchannels snapshot and bench/apps first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (snap, APPS) if p)
    env.pop("PYTHONSTARTUP", None)
    env["PYTHONUNBUFFERED"] = "1"
    for k in [k for k in env if k.startswith("SHMCHANNELS_")]:
        del env[k]  # the benchmark's command line is the whole configuration
    env.update(extra or {})
    return env


def venv_exe(name):
    path = os.path.join(VENV_BIN, name)
    if not os.path.exists(path):
        raise BenchError(f"{path} not found: install the bench extra (.venv/bin/pip install -e '.[bench]')")
    return path


# ---------------------------------------------------------------------- run


class ServerRun(Run):
    """A run of server measurements: the source snapshot the servers run, a
    folder for their output, and what went wrong stopping them.  ``cleanup``
    (an ExitStack) removes the snapshot, the folder and any bus files left
    under the run's prefixes."""

    def __init__(self, args, cleanup, *, logs, quiet_budget, prefix_tag, unit):
        super().__init__(args, quiet_budget=quiet_budget, prefix_tag=prefix_tag, unit=unit)
        self.problems = []  # servers that did not stop cleanly, files left in /dev/shm, ...
        self.shm_before = set(os.listdir("/dev/shm"))
        self.snap, self.source, self.warning = snapshot_source()
        cleanup.callback(shutil.rmtree, self.snap, ignore_errors=True)
        self.logdir = tempfile.mkdtemp(prefix=f"bench-{logs}-logs-")
        cleanup.callback(shutil.rmtree, self.logdir, ignore_errors=True)
        cleanup.callback(self._remove_shm_leftovers)

    def machine_info(self, packages):
        """machine_info() with the snapshot's source and the versions of ``packages``."""
        info = machine_info()
        info["source"] = self.source + (f" (**{self.warning}**)" if self.warning else "")
        info["versions"] = package_versions(packages)
        if self.warning:
            log(f"WARNING: {self.warning}")
        return info

    def stop_server(self, server, label):
        for p in server.stop():
            self.problems.append(f"{label}: {p}")
            log("    " + p)

    def _remove_shm_leftovers(self):
        for p in self.prefixes:
            for f in shm_files(p):
                self.problems.append(f"left in /dev/shm at the end (removed): {os.path.basename(f)}")
                os.unlink(f)

    def note_source_change(self, info):
        """Say in ``info`` if the working tree changed while the snapshot was measured."""
        end_hash = source_hash()
        if end_hash not in info["source"]:
            info["source"] += (f"; copied aside at the start and used for every measurement (the working tree "
                               f"changed during the run: sha1 {end_hash} at the end)")

    def meta(self, info, elapsed):
        """The run's metadata for the results file."""
        return {"machine": {"cpus": info["nproc"], "cpu": info["cpu"], "mem": info["mem"], "kernel": info["kernel"],
                            "python": info["python"]},
                "versions": info["versions"], "source": info["source"], "elapsed_min": round(elapsed / 60, 1),
                "loadavg_start": info["loadavg"], "loadavg_max_1min": self.max_load,
                "quiet_wait": {"measurements": self.measurements, "max_each_s": self.args.quiet_wait,
                               "budget_s": self.quiet_budget, "spent_s": round(self.waited),
                               "contended": self.contended},
                "problems": self.problems, "errors": self.errors}

    def print_runtime(self, elapsed):
        new_shm = sorted(set(os.listdir("/dev/shm")) - self.shm_before)
        mine = [f for f in new_shm if any(f"-{p}@" in f for p in self.prefixes)]
        print(f"\ntotal runtime {elapsed:.0f} s; /dev/shm entries of this run left: {mine or 'none'}", flush=True)


# ------------------------------------------------------------------- HTTP


def http_get(port, path="/", timeout=2.0):
    """(status, headers dict, body) of a GET on 127.0.0.1:port, Connection: close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        raise BenchError(f"no HTTP response from port {port}: {buf[:100]!r}")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def expect_hello(port):
    status, headers, body = http_get(port)
    if status != 200 or body != b"Hello, world!":
        raise BenchError(f"GET / answered {status} {body[:80]!r}")
    return headers


# -------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _dur(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out):
    """Requests/sec, latency percentiles (seconds), errors from wrk --latency output."""
    res = {"errors": {}, "non2xx": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise BenchError(f"no Requests/sec in wrk output:\n{out[-1500:]}")
    res["rps"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", out)
    if m:
        res["requests"] = int(m.group(1))
        res["duration"] = _dur(m.group(2))
    m = re.search(r"Latency\s+([\d.]+\w+)\s+([\d.]+\w+)\s+([\d.]+\w+)", out)
    if m:
        res["avg"], res["stdev"], res["max"] = (_dur(g) for g in m.groups())
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+\w+)", out, re.M)
        if m:
            res[f"p{pct}"] = _dur(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["errors"] = {k: int(v) for k, v in zip(("connect", "read", "write", "timeout"), m.groups()) if int(v)}
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non2xx"] = int(m.group(1))
    return res


def run_wrk(port, seconds, connections, threads=1, cpu=None, path="/", timeout_extra=30):
    """Run wrk (pinned to ``cpu`` with taskset when given); returns
    (parsed result, wrk's own CPU seconds)."""
    wrk = shutil.which("wrk") or "/usr/bin/wrk"
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s",
            f"http://127.0.0.1:{port}{path}"]
    if cpu is not None:
        argv = [shutil.which("taskset") or "/usr/bin/taskset", "-c", str(cpu)] + argv
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        out, _ = proc.communicate(timeout=seconds + timeout_extra)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise BenchError(f"wrk did not finish within {seconds + timeout_extra:.0f} s") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}:\n{text[-1500:]}")
    return parse_wrk(text), text


def wrk_version():
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([shutil.which("wrk") or "/usr/bin/wrk", "-v"], capture_output=True, text=True,
                             timeout=10)
        m = re.search(r"wrk\s+(\S+)", out.stdout + out.stderr)
        if m:
            return m.group(1)
    return "?"
