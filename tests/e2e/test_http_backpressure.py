"""HTTP clients that never read a streamed response (issue 10, "No write
backpressure"), against a real `shmchannels serve`: a Channels-1 consumer
and a WSGI application each stream 256 MiB.  Before, the protocol server
took every reply off its shared reply ring and buffered it for the client
(RSS 45 -> 1001 MiB with two such clients); now a worker gets credit only
while its client's write buffer is under ``http_write_limit``
(``workers.message.ReplyFlow``), so its sends wait and the protocol
server's own memory stays flat.  A client that reads gets every byte, and
a client that leaves releases its worker."""

import glob
import os
import socket
import struct
import time

import pytest

from serving import rss_anon, serving, wait_for

pytestmark = pytest.mark.slow

MIB = 1 << 20
STREAM = 256  # MiB each response would be
#: how much the protocol server's own memory (RssAnon, not VmRSS: the bus's
#: shared pages count in VmRSS) may grow with two clients that do not read:
#: about 2 x http_write_limit each, plus the allocator's slack
FLAT = 24 * MIB
REQUEST = b"GET /stream?mb=%d HTTP/1.1\r\nHost: x\r\n\r\n"


def sent(where, kind):
    """Bytes each of the application's streams handed over so far."""
    total = []
    for path in glob.glob(os.path.join(where, f"{kind}-*")):
        if path.endswith(".tmp"):
            continue
        try:
            with open(path) as f:
                total.append(int(f.read() or 0))
        except (OSError, ValueError):
            pass
    return sorted(total)


def non_reader(port):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.sendall(REQUEST % STREAM)
    return sock


def read_all(port, mib):
    """GET /stream?mb=mib, read to the end: (head, body bytes)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(REQUEST % mib)
        sock.settimeout(30)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, rest = data.partition(b"\r\n\r\n")
        n = len(rest)
        chunked = b"transfer-encoding: chunked" in head.lower()
        tail = rest[-16:]
        while True:
            got = sock.recv(1 << 20)
            if not got:
                break
            n += len(got)
            tail = (tail + got)[-16:]
            if chunked and tail.endswith(b"\r\n0\r\n\r\n"):
                break
            if not chunked and n >= mib * MIB:
                break
        return head, n


def stalled(where, kind, count):
    """Wait until ``count`` streams exist and none moved for a second."""
    wait_for(lambda: len(sent(where, kind)) >= count, timeout=20, what=f"{count} {kind} streams")
    last = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = sent(where, kind)
        if now == last:
            return now
        last = now
        time.sleep(1.0)
    raise AssertionError(f"the streams never stopped: {last}")


@pytest.mark.parametrize("kind, args", [
    ("channels", ["--routing", "stream1:routes"]),
    ("wsgi", ["--wsgi", "stream1:wsgi_app"]),
])
def test_clients_that_do_not_read_hold_their_worker_back_and_the_server_flat(tmp_path, prefix, kind, args):
    env = {"STREAM_DIR": str(tmp_path)}
    with serving(prefix, [*args, "--threads", "4"], workers=1, env=env) as s:
        ps = s.pids("protocol")[0]
        before = rss_anon(ps)
        socks = [non_reader(s.port), non_reader(s.port)]
        try:
            held = stalled(str(tmp_path), kind, 2)
            grown = rss_anon(ps) - before
            # the worker stopped far short of the 256 MiB: credit, not the ring, holds it
            assert max(held) < 32 * MIB, held
            assert grown < FLAT, f"protocol server RssAnon grew {grown / MIB:.1f} MiB"
            # a client that reads meanwhile gets all of its response
            t0 = time.monotonic()
            head, n = read_all(s.port, 64)
            print(f"{kind}: worker held at {[h >> 10 for h in held]} KiB, PS RssAnon +{grown / MIB:.1f} MiB, "
                  f"64 MiB read in {time.monotonic() - t0:.2f}s")
            assert head.startswith(b"HTTP/1.1 200"), head
            if kind == "channels":
                assert n == 64 * MIB
            assert rss_anon(ps) - before < FLAT
        finally:
            for sock in socks:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
        # the clients are gone: their workers hear it and stop waiting
        head, n = read_all(s.port, 1)
        assert head.startswith(b"HTTP/1.1 200")
    # ... so serve stops at once: no worker killed for hanging past graceful_timeout
    assert "SIGKILL" not in s.output(), s.output()[-3000:]
