"""bench/_http_floor.py, the two-process floor that bench/http.py measures
beside the servers: it must answer like them (or its figure means nothing)
and leave no process behind when stopped the way the benchmark stops it."""

import http.client
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "bench", "_http_floor.py")
sys.path.append(os.path.join(ROOT, "bench"))  # appended: bench/http.py must not hide the standard library's http

from _common import free_port  # noqa: E402



def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


@pytest.fixture
def floor():
    port = free_port()
    proc = subprocess.Popen([sys.executable, SCRIPT, "--bind", f"127.0.0.1:{port}"])
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the floor server did not start listening")
            time.sleep(0.05)
    yield port, proc
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_answers_hello_world_on_a_kept_alive_connection_and_closes_when_asked(floor):
    port, _proc = floor
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for path in ("/", "/anything?x=1"):
        conn.request("GET", path)
        r = conn.getresponse()
        assert (r.status, r.getheader("content-type"), r.read()) == (200, "text/plain", b"Hello, world!")
    conn.request("GET", "/", headers={"Connection": "close"})
    r = conn.getresponse()
    assert r.read() == b"Hello, world!"
    assert r.will_close
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := sock.recv(4096):  # until the server closes
        data += chunk
    sock.close()
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"\r\n\r\nHello, world!")
    conn.close()


def gone(pid):
    """Exited: no such process, or a zombie waiting for its new parent to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_sigterm_stops_the_protocol_server_and_its_worker(floor):
    _port, proc = floor
    workers = children_of(proc.pid)
    assert len(workers) == 1, workers
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == -signal.SIGTERM
    deadline = time.monotonic() + 10
    while not gone(workers[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(workers[0]), "the worker outlived its protocol server"
