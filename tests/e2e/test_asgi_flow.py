"""A client that never reads holds back an ASGI app under `shmchannels serve`:
the protocol server's write buffer crossing its high-water mark makes the
hosted instance's sends wait (docs/protocol.md, "ASGI 3 applications"), so
neither the protocol server's memory nor the app's output grows without
bound.  A client that reads gets everything."""

import glob
import os
import socket
import time

import pytest

from serving import serving, wait_for

pytestmark = pytest.mark.slow

CHUNK = 256 << 10
#: what may be in flight for one connection that does not read: the kernel's
#: socket buffers (loopback autotuning, a few MiB each way), the transport's
#: high-water mark, the messages sent before the hold reached the app
BOUND = 64 << 20


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


def sent(directory, kind):
    total = 0
    for path in glob.glob(os.path.join(directory, f"{kind}-*")):
        if not path.endswith(".tmp"):
            with open(path) as f:
                total += int(f.read() or 0)
    return total


def stalled(directory, kind, settle=1.0):
    """The count once it stops moving (the app waits on the client)."""
    last = sent(directory, kind)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = sent(directory, kind)
        if now == last and now > 0:
            return now
        last = now
    raise AssertionError(f"the app kept sending {kind}: {last} chunks")


def test_an_http_client_that_does_not_read_pauses_the_app_and_bounds_memory(tmp_path, prefix):
    env = {"FLOOD_DIR": str(tmp_path)}
    with serving(prefix, ["floodapp:app"], workers=1, env=env) as s:
        protocol = s.pids("protocol")[0]
        before = rss(protocol)
        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.sendall(b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        held = stalled(str(tmp_path), "http")
        grown = rss(protocol) - before
        assert held * CHUNK < BOUND, f"the app sent {held} chunks to a client that reads nothing"
        assert grown < BOUND, f"the protocol server grew by {grown >> 20} MiB"
        # reading lets it go on
        got = 0
        deadline = time.monotonic() + 20
        while got < 4 * held * CHUNK and time.monotonic() < deadline:
            got += len(sock.recv(1 << 20))
        sock.close()
        assert sent(str(tmp_path), "http") > held, "reading did not resume the app's sends"


def test_a_websocket_client_that_does_not_read_pauses_the_app(tmp_path, prefix):
    env = {"FLOOD_DIR": str(tmp_path)}
    with serving(prefix, ["floodapp:app"], workers=1, env=env) as s:
        protocol = s.pids("protocol")[0]
        before = rss(protocol)
        sock = socket.create_connection(("127.0.0.1", s.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.sendall(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101"), head
        held = stalled(str(tmp_path), "ws")
        grown = rss(protocol) - before
        assert held * CHUNK < BOUND, f"the app sent {held} messages to a client that reads nothing"
        assert grown < BOUND, f"the protocol server grew by {grown >> 20} MiB"
        sock.close()
        wait_for(lambda: True, timeout=0.1)
