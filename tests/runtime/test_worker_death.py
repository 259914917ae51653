"""Workers that die or misbehave, with real processes: `shmchannels serve`
(1 protocol server, 2 workers running tests/apps/faultapp.py) and real
HTTP and WebSocket clients.

* A worker SIGKILLed with an HTTP request in flight: the client gets 503
  within a second (not the 504 of http_timeout, 60 s); one killed with a
  WebSocket message in flight: the connection's next message is handled by
  the other worker within a second (not after ack_timeout); one killed while
  it holds a websocket.connect: the handshake is answered 503.
* A consumer killed by the worker timeout: its client gets 503 as soon as the
  worker is gone.
* Replies a Channels 1 user sends by mistake: a str content is sent as UTF-8
  (200); a bad status is a 500; a consumer that raises gives 500 (HTTP) or
  close 1011 (WebSocket; HTTP 500 during the handshake); a WebSocket send
  with bytes as text closes with 1011.
"""

import http.client
import os
import re
import signal
import socket
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from serving import Served, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

#: the worker timeout of the served app (seconds): the master ABRTs a worker
#: whose consumer runs longer
WORKER_TIMEOUT = 3


@pytest.fixture(scope="module")
def served():
    prefix = f"t{os.getpid()}xdeath"
    s = Served(prefix, ["--bind", "127.0.0.1:0", "--protocol-servers", "1", "--workers", "2",
                        "--routing", "faultapp:routes", "--timeout", str(WORKER_TIMEOUT)])
    try:
        s.attach()
        port = wait_for(lambda: re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", s.output()), what="the port")
        s.port = int(port.group(1))
        s.wait_workers(2)
        s.wait_workers(1, kind="protocol")
        yield s
    finally:
        s.stop()
        if s.layer is not None:
            s.layer.core.bus.detach()
    leftover = [f for f in os.listdir("/dev/shm") if f.startswith(f"shmch-{os.getuid()}-{prefix}@")]
    assert not leftover, f"serve left shared memory behind: {leftover}"


@pytest.fixture
def s(served):
    """The served app with both workers up, and no stale `fault.started` note."""
    served.wait_workers(2)
    while served.layer.receive(["fault.started"])[0] is not None:
        pass
    return served


def started(s, what, timeout=10):
    """The pid of the worker whose consumer announced it is about to hang."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ch, msg = s.layer.receive(["fault.started"], block=True)
        if ch is not None and msg["what"] == what:
            return msg["pid"]
    raise AssertionError(f"no consumer started {what!r}:\n{s.output()[-3000:]}")


def get(s, path, timeout=30):
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def ws_url(s, path="/ws/x"):
    return f"ws://127.0.0.1:{s.port}{path}"


# ------------------------------------------------------------ dead workers


def test_sigkilled_worker_with_an_http_request_in_flight_gets_503_within_a_second(s):
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    conn.request("GET", "/hang")
    pid = started(s, "http")
    assert pid in s.pids("worker")
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    resp = conn.getresponse()
    body = resp.read()
    elapsed = time.monotonic() - t0
    conn.close()
    assert resp.status == 503 and b"worker" in body
    assert elapsed < 1.5, f"answered {elapsed:.2f} s after the worker died"
    assert "died" in wait_for(lambda: "503" in s.output() and s.output(), what="the log line")
    # the server and the other worker carry on
    assert get(s, "/")[0] == 200


def test_sigkilled_worker_with_a_websocket_message_in_flight_releases_the_next_message(s):
    with connect(ws_url(s), open_timeout=10) as ws:
        ws.send("hello")
        assert ws.recv(timeout=10).startswith("hello from ")
        ws.send("hang")
        pid = started(s, "receive")
        ws.send("after")  # waits in the protocol server for the hung message's ack
        time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        reply = ws.recv(timeout=10)
        elapsed = time.monotonic() - t0
        text, _, by = reply.partition(" from ")
        assert text == "after" and int(by) != pid, reply
        assert elapsed < 1.5, f"the next message went out {elapsed:.2f} s after the worker died"
        ws.send("still")  # ordering goes on as usual
        assert ws.recv(timeout=10).startswith("still from ")


def test_sigkilled_worker_holding_a_websocket_connect_gets_503(s):
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=10)
    try:
        sock.sendall(b"GET /ws/hang-connect HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        pid = started(s, "connect")
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        elapsed = time.monotonic() - t0
    finally:
        sock.close()
    assert head.startswith(b"HTTP/1.1 503 "), head
    assert elapsed < 1.5, f"answered {elapsed:.2f} s after the worker died"


def test_consumer_killed_by_the_worker_timeout_gets_503_once_its_worker_is_gone(s):
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
    conn.request("GET", "/hang")
    pid = started(s, "http")
    resp = conn.getresponse()
    resp.read()
    elapsed = time.monotonic() - t0
    conn.close()
    assert resp.status == 503
    # the master aborts the worker once its consumer ran past the timeout
    # (checked about every second); the answer follows the death at once,
    # not http_timeout (60 s) later
    assert WORKER_TIMEOUT <= elapsed < WORKER_TIMEOUT + 4, elapsed
    assert "WORKER TIMEOUT (pid:%d)" % pid in s.output()
    wait_for(lambda: pid not in s.pids("worker"), what="the aborted worker gone")


# --------------------------------------------------------- wrong replies


def test_str_content_is_sent_as_utf8(s):
    assert get(s, "/str") == (200, "Hello World! é".encode("utf-8"))


def test_a_bad_status_gives_500(s):
    assert get(s, "/bad-status")[0] == 500


def test_http_consumer_that_raises_gives_500(s):
    assert get(s, "/raise")[0] == 500


def test_websocket_consumer_that_raises_closes_with_1011(s):
    with connect(ws_url(s), open_timeout=10) as ws:
        ws.send("raise")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011


def test_websocket_connect_that_raises_gives_http_500(s):
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(s, "/ws/raise-connect"), open_timeout=10)
    assert info.value.response.status_code == 500


def test_websocket_send_with_bytes_as_text_closes_with_1011(s):
    with connect(ws_url(s), open_timeout=10) as ws:
        ws.send("bad-text")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011
