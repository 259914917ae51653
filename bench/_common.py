"""Helpers of the benchmarks: a private redis-server, child processes,
statistics, machine description."""

import contextlib
import glob
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata


class BenchError(RuntimeError):
    pass


# ------------------------------------------------------------------ redis-server


def find_redis_server():
    return shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ping(port, timeout=0.5):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A throw-away redis-server on 127.0.0.1: no persistence, own session
    (so a Ctrl-C in the terminal does not reach it before we stop it)."""

    def __init__(self, binary):
        self.binary = binary
        self.proc = None
        self.port = None
        self.dir = None
        self.version = None

    def start(self):
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        self.version = next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        for _attempt in range(5):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--protected-mode", "yes",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", self.dir,
                    # The benchmark publishes faster than a pubsub subscriber
                    # reads; the default 32 MB limit would disconnect it.
                    "--client-output-buffer-limit", "pubsub 0 0 0",
                    "--loglevel", "warning",
                    "--logfile", os.path.join(self.dir, "redis.log"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _ping(self.port):
                    return self
                time.sleep(0.05)
            self._kill()  # port taken in between, or it failed: try another port
        raise BenchError(f"redis-server did not start; see {self.dir}/redis.log")

    def pid(self):
        return self.proc.pid if self.proc else None

    def stop(self):
        self._kill()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def _kill(self):
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@contextlib.contextmanager
def terminate_on_signals():
    """Turn SIGTERM/SIGHUP into SystemExit so ``finally`` blocks run."""

    def handler(signum, _frame):
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- child processes


class PipeChild:
    """A child process we command over a pipe: we send (command, payload), it
    answers (tag, payload), or ("error", text) when it failed."""

    def __init__(self, ctx, name, target, args=(), daemon=None):
        self.name = name
        self.conn, theirs = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(theirs, *args), name=name, daemon=daemon)
        self.proc.start()
        theirs.close()

    def send(self, command, payload=None):
        self.conn.send((command, payload))

    def expect(self, tag, timeout):
        if not self.conn.poll(timeout):
            raise BenchError(f"{self.name}: no {tag!r} within {timeout:.0f} s")
        try:
            got, payload = self.conn.recv()
        except EOFError:
            self.proc.join(1)
            raise BenchError(f"{self.name} exited (code {self.proc.exitcode}) before sending {tag!r}") from None
        if got == "error":
            raise BenchError(payload)
        if got != tag:
            raise BenchError(f"{self.name}: expected {tag!r}, got {got!r}")
        return payload

    def stop(self, timeout=15):
        self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        if not self.conn.closed:
            self.conn.close()
        return self.proc.exitcode


class Child(PipeChild):
    """One child process running ``_workers.child_main(conn, role, cfg, *queues)``."""

    def __init__(self, ctx, role, cfg, queues=()):
        import _workers

        super().__init__(ctx, f"{role}/{cfg['kind']}", _workers.child_main, (role, cfg, *queues))


def stop_all(children, timeout=15):
    codes = []
    deadline = time.monotonic() + timeout
    for c in children:
        codes.append(c.stop(max(0.1, deadline - time.monotonic())))
    return codes


def others_running(samples=10, interval=0.05):
    """Mean number of runnable tasks besides this one (/proc/stat procs_running)."""
    total = 0
    for _ in range(samples):
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("procs_running"):
                        total += int(line.split()[1]) - 1
                        break
        except OSError:
            return 0.0
        time.sleep(interval)
    return total / samples


def wait_for_quiet(max_wait, threshold=0.5):
    """Wait up to ``max_wait`` s until other processes leave the CPUs alone.
    Returns (waited seconds, others running when we went ahead)."""
    t0 = time.monotonic()
    while True:
        busy = others_running()
        if busy <= threshold or time.monotonic() - t0 >= max_wait:
            return time.monotonic() - t0, busy
        time.sleep(1.0)


def shm_files(prefix):
    return sorted(glob.glob(f"/dev/shm/shmch-{os.getuid()}-{glob.escape(prefix)}@*"))


# ---------------------------------------------------------------------- numbers


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def span(xs):
    xs = [x for x in xs if x is not None]
    return (min(xs), max(xs)) if xs else (None, None)


def percentile(sorted_xs, q):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_xs:
        return None
    k = max(0, min(len(sorted_xs) - 1, int(round(q / 100 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[k]


def fmt_num(x, unit=""):
    """Human number with 3 significant digits."""
    if x is None:
        return "n/a"
    ax = abs(x)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if ax >= div:
            return f"{x / div:.3g}{suffix}{unit}"
    if ax >= 100:
        return f"{x:.0f}{unit}"
    if ax >= 10:
        return f"{x:.1f}{unit}"
    if ax >= 1:
        return f"{x:.2f}{unit}"
    return f"{x:.3g}{unit}"


def fmt_time(seconds):
    if seconds is None:
        return "n/a"
    if seconds >= 1:
        return f"{seconds:.3g} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} µs"


# ---------------------------------------------------------------------- machine


def package_versions(packages):
    """{package: installed version, or "not installed"}, in the order given."""
    versions = {}
    for pkg in packages:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions


def machine_info(redis_version=None):
    model = "unknown"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    except OSError:
        nproc = str(len(os.sched_getaffinity(0)))
    mem = "?"
    with contextlib.suppress(OSError):
        with open("/proc/meminfo") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / 1048576:.1f} GiB"
    versions = package_versions(("shmchannels", "channels", "channels_redis", "redis", "msgpack", "Django",
                                 "matplotlib"))
    if redis_version:
        versions["redis-server"] = redis_version
    load = os.getloadavg()
    source = "unknown"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        git = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True, text=True, timeout=10).stdout  # noqa: E731
        head = git("rev-parse", "--short", "HEAD").strip()
        diff = git("diff", "HEAD", "--", "shmchannels")
        if head:
            source = f"git {head}"
            if diff:
                import hashlib

                files = git("diff", "HEAD", "--name-only", "--", "shmchannels").split()
                source += (f" + uncommitted changes to {', '.join(files)} ({diff.count(chr(10))} diff lines, "
                           f"sha1 {hashlib.sha1(diff.encode()).hexdigest()[:10]})")
    return {
        "nproc": nproc,
        "cpu": model,
        "kernel": platform.release(),
        "mem": mem,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "versions": versions,
        "loadavg": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        "source": source,
    }


def log(*args):
    print(*args, file=sys.stderr, flush=True)
