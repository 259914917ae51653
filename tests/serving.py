"""Run `shmchannels serve` as a real process in tests."""

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import httpx

import shmchannels
from shmchannels.bus import segments

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
APPS = os.path.join(TESTS, "apps")


def wait_for(predicate, timeout=20.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def rss_anon(pid):
    """A process's own resident memory in bytes (RssAnon: the bus's shared
    rings, which every process that maps them shows in VmRSS, are not in it)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) << 10
    raise AssertionError(f"no RssAnon for pid {pid}")


def live_processes():
    """(pid, ppid, pgrp) of every process that is not a zombie, from /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if fields[0] != b"Z":
            yield int(entry), int(fields[1]), int(fields[2])


def children_of(pid):
    """pids of the live processes whose parent is ``pid``, sorted."""
    return sorted(p for p, ppid, _ in live_processes() if ppid == pid)


class Served:
    """A running `shmchannels serve`, observed through its bus."""

    def __init__(self, prefix, args=(), env=None, cwd=None):
        self.prefix = prefix
        self.stem = segments.bus_stem(prefix)
        self.log_path = f"/tmp/shmchannels-serve-{prefix}.log"
        self.log = open(self.log_path, "wb")
        cmd = [sys.executable, "-m", "shmchannels", "serve", "--prefix", prefix, "--pythonpath", APPS,
               "--graceful-timeout", "10", *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})}, cwd=cwd or os.getcwd())
        self.layer = None
        self._final_output = ""

    def attach(self):
        """Our own layer on the bus (once the master created it)."""
        wait_for(lambda: os.path.exists(segments.path(segments.file_name(self.stem, "ctl"))) or self.proc.poll() is not None,
                 what="the bus")
        if self.proc.poll() is not None:
            raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.output()}")
        self.layer = shmchannels.ChannelLayer(prefix=self.prefix, capacity=100_000, block_timeout=0.5)
        return self.layer

    def processes(self, kind=None):
        bus = self.layer.core.bus
        procs = [bus.control.read_slot(i) for i in bus.live_slots() if i != bus.slot]
        return [p for p in procs if kind is None or p.kind == kind]

    def pids(self, kind):
        return sorted(p.pid for p in self.processes(kind))

    def wait_workers(self, n, kind="worker"):
        return wait_for(lambda: len(self.pids(kind)) == n and self.pids(kind), what=f"{n} {kind}(s)")

    @property
    def master_pid(self):
        return self.proc.pid

    def send_signal(self, sig):
        os.kill(self.proc.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self._final_output = self.output()
        if self.proc.returncode in (0, -15, 4) and os.path.exists(self.log_path):
            os.unlink(self.log_path)  # keep the log only when something went wrong
        return self.proc.returncode

    def output(self):
        if not self.log.closed:
            self.log.flush()
        if not os.path.exists(self.log_path):
            return self._final_output
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def request(self, channel, content, timeout=10.0):
        """Send to ``channel`` with a reply channel and wait for the reply."""
        reply = self.layer.new_channel("test.reply?")
        self.layer.send(channel, {**content, "reply_channel": reply})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ch, msg = self.layer.receive([reply], block=True)
            if ch is not None:
                return msg
        raise AssertionError(f"no reply on {channel} within {timeout}s:\n{self.output()[-3000:]}")


# --- serve with an ASGI application (tests/e2e/test_asgi_*.py) -------------------

def alive(pid):
    return any(p == pid for p, _, _ in live_processes())


def processes_of(prefix):
    """pids of live processes whose command line has ``--prefix <prefix>``
    (the master and everything it forked)."""
    needle = b"\0" + prefix.encode() + b"\0"
    found = []
    for pid, _, _ in live_processes():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"\0--prefix\0" in cmdline and needle in cmdline:
            found.append(pid)
    return found


def reap(prefix, children=(), timeout=10):
    """Wait for serve's processes to be gone; SIGKILL and return those that are not."""
    def left():
        return sorted(set(processes_of(prefix)) | {p for p in children if alive(p)})
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not left(), timeout=timeout, what="serve's processes to exit")
    leftover = left()
    for pid in leftover:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return leftover


def http_status(port, path):
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2.0).status_code
    except httpx.HTTPError:
        return None


@contextlib.contextmanager
def serving(prefix, app_args, workers=2, env=None, probe="/"):
    """`shmchannels serve` with 1 protocol server and ``workers`` workers,
    ready (``probe`` answers 200); stopped with SIGTERM at the end, its
    processes checked gone."""
    s = Served(prefix, [*app_args, "--bind", "127.0.0.1:0", "--protocol-servers", "1", "--workers", str(workers)],
               env=env)
    children = []
    try:
        s.attach()

        def port():
            m = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", s.output())
            return m or s.proc.poll() is not None

        m = wait_for(port, what="the port")
        if s.proc.poll() is not None:
            raise AssertionError(f"serve exited with {s.proc.returncode}:\n{s.output()[-4000:]}")
        s.port = int(m.group(1))
        s.wait_workers(workers)
        s.wait_workers(1, kind="protocol")
        wait_for(lambda: http_status(s.port, probe) == 200 or s.proc.poll() is not None, what=f"GET {probe} -> 200")
        if s.proc.poll() is not None:
            raise AssertionError(f"serve exited with {s.proc.returncode}:\n{s.output()[-4000:]}")
        yield s
    finally:
        if s.layer is not None and s.proc.poll() is None:
            with contextlib.suppress(Exception):
                children = s.pids("worker") + s.pids("protocol")
        rc = s.stop()
        output = s.output()
        if s.layer is not None:
            s.layer.core.bus.detach()
        leftover = reap(prefix, children)
    assert not leftover, f"serve left processes behind: {leftover}\n{output[-3000:]}"
    assert rc == 0, f"serve exited with {rc} after SIGTERM:\n{output[-4000:]}"
