"""Clients that hold a protocol server's resources (issue 10, "No header
timeout"): slow request heads and bodies get 408 from the server's sweep,
connections beyond ``limit_concurrency`` get 503, a client that stops
reading its response is dropped after ``http_write_timeout``, and a client
that half-closes after a complete request still gets its response."""

import socket
import threading
import time

import pytest

from shmchannels.server.testing import HttpEnv, echo_http, raw_connection, read_response, send_retrying

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def env(prefix):
    e = HttpEnv(prefix)
    yield e
    e.close()


def read_rest(sock, timeout=5.0):
    """Everything until the server closes (b"" ends it; a reset too)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            got = sock.recv(65536)
            if not got:
                break
            data += got
    except ConnectionResetError:
        pass
    return data


# ------------------------------------------------------------ header_timeout


def test_slowloris_heads_get_408_after_header_timeout_though_every_byte_is_on_time(env):
    """200 connections each send a header byte every 0.2 s (the 5 s idle
    timer never fires); header_timeout 0.6 s answers each with 408 and
    closes.  Before, they stayed open as long as they kept sending."""
    st = env.server(header_timeout=0.6)
    env.worker()
    socks = [socket.create_connection(("127.0.0.1", st.port)) for _ in range(200)]
    for s in socks:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        s.setblocking(False)
    t0 = time.monotonic()
    answers = {}
    while len(answers) < len(socks) and time.monotonic() - t0 < 10:
        for i, s in enumerate(socks):
            if i in answers:
                continue
            try:
                s.send(b"a")
            except (BrokenPipeError, ConnectionResetError, BlockingIOError):
                pass
            try:
                got = s.recv(4096)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                got = b"reset"
            answers[i] = (got, time.monotonic() - t0)
        time.sleep(0.2)
    assert len(answers) == 200
    assert all(got.startswith(b"HTTP/1.1 408 ") for got, _ in answers.values()), \
        {got[:40] for got, _ in answers.values()}
    waited = sorted(t for _, t in answers.values())
    assert 0.5 < waited[0] and waited[-1] < 3.0, (waited[0], waited[-1])
    for s in socks:
        s.close()
    deadline = time.monotonic() + 5
    while st.stats()["http_connections"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert st.stats()["http_connections"] == 0


def test_a_head_in_time_is_served_and_the_timer_restarts_per_request(env):
    st = env.server(header_timeout=0.6)
    env.worker()
    sock, f = raw_connection(st.port)
    for _ in range(3):  # each head takes 0.4 s: under the limit each time, over it together
        for part in (b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n"):
            sock.sendall(part)
            time.sleep(0.2)
        assert read_response(f).status == 200
    sock.close()


# -------------------------------------------------------------- body_timeout


def test_a_body_that_stops_gets_408_after_body_timeout(env):
    st = env.server(body_timeout=0.6)
    env.worker()
    sock, f = raw_connection(st.port)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
    t0 = time.monotonic()
    r = read_response(f)
    assert r.status == 408
    assert 0.5 < time.monotonic() - t0 < 3.0
    assert f.read() == b""  # then closed
    sock.close()


def test_a_body_slower_than_body_min_bytes_gets_408_a_faster_one_200(env):
    st = env.server(body_timeout=0.5, body_min_bytes=8)
    env.worker()
    # 10 bytes per 0.2 s: 25 per period, enough
    sock, f = raw_connection(st.port)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    for _ in range(10):
        sock.sendall(b"0123456789")
        time.sleep(0.2)
    assert read_response(f).status == 200
    sock.close()
    # 1 byte per 0.2 s: 2-3 per period, too slow
    sock, f = raw_connection(st.port)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    t0 = time.monotonic()
    status = None

    def trickle():
        for _ in range(40):
            try:
                sock.sendall(b"x")
            except OSError:
                return
            time.sleep(0.2)

    threading.Thread(target=trickle, daemon=True).start()
    status = read_response(f).status
    assert status == 408
    assert time.monotonic() - t0 < 4.0
    sock.close()


def test_a_streamed_body_the_worker_is_slow_to_take_is_not_timed_out(env):
    """Reading paused because the body channel is full is our wait, not the
    client's: no 408 however long the worker takes."""
    st = env.server(body_timeout=0.3, body_inline=1024)
    started = threading.Event()

    def slow(layer, channel, message):
        started.set()
        time.sleep(1.5)  # meanwhile 8 chunks fill the body channel and reading pauses
        echo_http(layer, channel, message)

    env.worker(slow)
    sock, f = raw_connection(st.port)
    body = b"y" * (64 << 10)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    r = read_response(f)
    assert r.status == 200, r
    sock.close()


# -------------------------------------------------------- limit_concurrency


def test_connections_beyond_limit_concurrency_get_503_and_close(env):
    st = env.server(limit_concurrency=2)
    env.worker()
    held = [raw_connection(st.port) for _ in range(2)]
    for sock, f in held:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(f).status == 200
    sock, f = raw_connection(st.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    r = read_response(f)
    assert r.status == 503 and r.header("connection") == "close"
    assert f.read() == b""
    sock.close()
    # the socket's file keeps it open (and the server's keep-alive timeout is
    # 5 s too): both must go for the client to close it
    held[0][1].close()
    held[0][0].close()
    deadline = time.monotonic() + 5
    while st.stats()["http_connections"] > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert st.stats()["http_connections"] == 1
    sock, f = raw_connection(st.port)  # room again
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(f).status == 200
    sock.close()
    held[1][0].close()


# --------------------------------------------------------- http_write_timeout


def test_a_client_that_stops_reading_is_dropped_after_http_write_timeout(env):
    """A worker that ignores the window (this fake one) fills the write
    buffer; once it has not drained for http_write_timeout the connection
    is dropped and the worker hears http.disconnect."""
    st = env.server(http_write_timeout=0.5, http_write_limit=64 << 10)
    gone = threading.Event()

    def stream(layer, channel, message):
        if channel == "http.disconnect":
            gone.set()
            return
        reply = message["reply_channel"]
        send_retrying(layer, reply, {"status": 200, "more_content": True})
        for _ in range(64):
            send_retrying(layer, reply, {"content": b"z" * (256 << 10), "more_content": True})

    env.worker(stream, channels=("http.request", "http.disconnect"))
    sock = socket.create_connection(("127.0.0.1", st.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert gone.wait(10), "the connection was never dropped"
    assert len(read_rest(sock)) < 16 << 20  # cut short
    sock.close()


# ---------------------------------------------------------------- half-close


def test_half_close_after_a_complete_request_still_gets_the_response(env):
    st = env.server()
    env.worker()
    sock, f = raw_connection(st.port)
    sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
    sock.shutdown(socket.SHUT_WR)
    assert read_response(f).status == 200
    r = read_response(f, "POST")
    assert r.status == 200 and b'"/b"' in r.body
    assert f.read() == b""  # and then the server closes
    sock.close()


def test_half_close_in_the_middle_of_a_request_closes_without_an_answer(env):
    st = env.server()
    env.worker()
    for partial in (b"GET /a HTTP/1.1\r\nHost: x\r\n",
                    b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"):
        sock = socket.create_connection(("127.0.0.1", st.port))
        sock.sendall(partial)
        sock.shutdown(socket.SHUT_WR)
        assert read_rest(sock) == b""
        sock.close()
