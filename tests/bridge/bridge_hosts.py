"""Helpers of the bridge tests (a module of its own, not conftest.py: a
``from conftest import`` elsewhere in the suite must never find this
directory's conftest): a real ``redis-server`` on a free loopback port
(``apt-get install redis-server``; .ci/run installs it), and "hosts" run as
processes, optionally each in its own mount + UTS namespace."""

import os
import shutil
import socket
import subprocess
import tempfile
import time

REDIS_SERVER = shutil.which("redis-server")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pings(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """redis-server on 127.0.0.1:<port>, no persistence; ``stop`` and
    ``start`` again on the same port (a Redis outage and its end)."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="shmch-test-redis-")
        self.proc = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir, "--loglevel", "warning"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not _pings(self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self):
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait(10)

    def command(self, *args):
        """One command through redis-py's sync client (for assertions)."""
        import redis

        client = redis.Redis(port=self.port, socket_timeout=5)
        try:
            return client.execute_command(*args)
        finally:
            client.close()


AGENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "agent.py")
#: a private /dev/shm and hostname: a "host" of its own on this machine
NAMESPACE_SHELL = 'mount -t tmpfs -o size=256m,mode=1777 tmpfs /dev/shm && hostname "$0" && exec "$@"'


class Host:
    """A process running tests/bridge/agent.py: one "host" (or one more
    process of a host), optionally in its own mount + UTS namespace."""

    def __init__(self, config, namespace_hostname=None, join=None):
        import json
        import sys

        argv = [sys.executable, AGENT, json.dumps(config)]
        if namespace_hostname is not None:
            argv = ["unshare", "--mount", "--uts", "sh", "-c", NAMESPACE_SHELL, namespace_hostname, *argv]
        elif join is not None:  # one more process of that host: its /dev/shm and hostname
            argv = ["nsenter", "-t", str(join.proc.pid), "--mount", "--uts", "--", *argv]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"),
                                                                        os.getcwd()) if p))
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.started = self._read(30)

    def _read(self, timeout):
        import json
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise TimeoutError(f"host process {self.proc.pid} did not answer within {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"host process {self.proc.pid} exited ({self.proc.wait()})")
        return json.loads(line)

    def call(self, command, *args, timeout=20):
        import json

        self.proc.stdin.write(json.dumps([command, *args]) + "\n")
        self.proc.stdin.flush()
        got = self._read(timeout)
        if "error" in got:
            raise AgentError(got["error"])
        return got["ok"]

    def kill(self):
        self.proc.kill()
        self.proc.wait(10)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.call("exit", timeout=10)
                self.proc.wait(10)
            except (OSError, TimeoutError, RuntimeError, ValueError):
                self.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


class AgentError(Exception):
    pass




def namespaces_work():
    """Can this machine give a process its own mount and UTS namespace (root, unshare)?"""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return False
    done = subprocess.run(["unshare", "--mount", "--uts", "sh", "-c", NAMESPACE_SHELL, "probe", "true"],
                          capture_output=True, timeout=30)
    return done.returncode == 0


def calls(redis_server, command):
    """How many times Redis ran ``command`` (INFO commandstats counts a script's own calls too)."""
    return redis_server.command("INFO", "commandstats").get(f"cmdstat_{command}", {}).get("calls", 0)
