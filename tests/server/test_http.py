"""The protocol server's HTTP/1.1 side, over real sockets, with fake workers.

Each test runs a real ProtocolServer on its own event-loop thread
(127.0.0.1, ephemeral port) and fake workers as threads using the layer.
Clients: httpx, curl, and raw sockets for pipelined, chunked and malformed
input.
"""

import json
import shutil
import socket
import struct
import subprocess
import threading
import time

import httpx
import pytest

from shmchannels.server import ProtocolConfig
from shmchannels.server.testing import HttpEnv, ServerThread, echo_http, raw_connection, read_response, send_retrying

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def env(prefix):
    e = HttpEnv(prefix)
    yield e
    e.close()


def url(st, path="/"):
    return f"http://127.0.0.1:{st.port}{path}"


# ------------------------------------------------------------ basic exchange


def test_get_and_post_carry_every_asgi1_request_key(env):
    st = env.server()
    env.worker()
    with httpx.Client() as client:
        r = client.get(url(st, "/caf%C3%A9/x%20y?a=1&b=%C3%A9"), headers={"X-Custom": "One", "x-custom": "two"})
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.headers["server"] == "shmchannels"
        assert "date" in r.headers
        got = r.json()
        r2 = client.post(url(st, "/form"), content=b"a=1&b=2", headers={"content-type": "application/x-www-form-urlencoded"})
        posted = r2.json()
    assert set(got) == {
        "reply_channel", "http_version", "method", "scheme", "path", "query_string", "root_path",
        "headers", "body_channel", "client", "server", "body_length", "body_head",
        "raw_path",  # (ASGI 3) only when it differs from the path's UTF-8
        "__taken__",  # (shmchannels) asks the worker who it is; the real runner removes it
        "__window__",  # (shmchannels) response bytes a worker may send ahead of the client (ReplyFlow)
    }
    assert got["__taken__"].startswith("shmchannels.taken?")
    assert got["reply_channel"].startswith("http.response.shm") and "!" in got["reply_channel"]
    assert got["http_version"] == "1.1"
    assert got["method"] == "GET"
    assert got["scheme"] == "http"
    assert got["path"] == "/café/x y"
    assert got["raw_path"] == "/caf%C3%A9/x%20y"
    assert got["query_string"] == "a=1&b=%C3%A9"  # raw bytes, not decoded
    assert got["root_path"] == ""
    assert got["body_channel"] is None and got["body_length"] == 0
    assert got["client"][0] == "127.0.0.1" and isinstance(got["client"][1], int)
    assert got["server"] == ["127.0.0.1", st.port]
    names = [n for n, _ in got["headers"]]
    assert names == [n.lower() for n in names]
    assert ["x-custom", "One"] in got["headers"] and ["x-custom", "two"] in got["headers"]
    assert names.index("x-custom") < len(names)  # order kept: both present, first before second
    assert [v for n, v in got["headers"] if n == "x-custom"] == ["One", "two"]

    assert posted["method"] == "POST"
    assert posted["body_length"] == 7 and posted["body_head"] == "a=1&b=2"
    assert posted["body_channel"] is None
    assert "raw_path" not in posted  # /form: no escapes, the path's UTF-8 is the raw path
    assert ["content-length", "7"] in posted["headers"]
    assert posted["reply_channel"] != got["reply_channel"]


def test_header_names_with_underscores_are_dropped(env):
    st = env.server()
    env.worker()
    sock, f = raw_connection(st.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Auth_User: evil\r\nX-Auth-User: good\r\n\r\n")
    got = json.loads(read_response(f).body)
    f.close()
    sock.close()
    assert ["x-auth-user", "good"] in got["headers"]
    assert not any("_" in n for n, _ in got["headers"])


def test_curl_round_trip(env):
    if not shutil.which("curl"):
        pytest.skip("curl is not installed")
    st = env.server()
    env.worker()
    out = subprocess.run(
        ["curl", "-s", "-i", "--http1.1", "-d", "hello", url(st, "/curl?x=1")],
        capture_output=True, timeout=10, check=True,
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    got = json.loads(body)
    assert got["method"] == "POST" and got["path"] == "/curl" and got["query_string"] == "x=1"
    assert got["body_head"] == "hello"


# --------------------------------------------------------- connection reuse


def test_keep_alive_reuses_the_connection(env):
    st = env.server()
    env.worker()
    with httpx.Client() as client:
        ports = {client.get(url(st, f"/{i}")).json()["client"][1] for i in range(5)}
    assert len(ports) == 1
    assert st.stats()["requests_total"] == 5
    assert st.stats()["connections_total"] == 1


def test_keep_alive_timeout_closes_idle_connections(env):
    st = env.server(keepalive=0.3)
    env.worker()
    sock, f = raw_connection(st.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(f).status == 200
    t0 = time.monotonic()
    assert f.read(1) == b""  # the server closes the idle connection
    waited = time.monotonic() - t0
    assert 0.2 < waited < 2.0
    f.close()
    sock.close()


def test_connection_close_and_http10(env):
    st = env.server()
    env.worker()
    sock, f = raw_connection(st.port)
    sock.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    r = read_response(f)
    assert r.status == 200 and r.header("connection") == "close"
    assert f.read(1) == b""
    f.close()
    sock.close()
    # HTTP/1.0 without keep-alive: closed after the response
    sock, f = raw_connection(st.port)
    sock.sendall(b"GET /b HTTP/1.0\r\n\r\n")
    r = read_response(f)
    assert r.status == 200 and json.loads(r.body)["http_version"] == "1.0"
    assert f.read(1) == b""
    f.close()
    sock.close()
    # HTTP/1.0 asking for keep-alive gets it
    sock, f = raw_connection(st.port)
    sock.sendall(b"GET /c HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    r = read_response(f)
    assert r.header("connection") == "keep-alive"
    sock.sendall(b"GET /d HTTP/1.0\r\n\r\n")
    assert json.loads(read_response(f).body)["path"] == "/d"
    f.close()
    sock.close()


def test_pipelined_requests_are_answered_in_order(env):
    st = env.server()
    seen = []

    def slow_first(layer, channel, message):
        seen.append(message["path"])
        if message["path"] == "/1":
            time.sleep(0.2)  # the first one is slow: the others must still come after it
        send_retrying(layer, message["reply_channel"], {"status": 200, "content": message["path"].encode()})

    env.worker(slow_first)
    env.worker(slow_first)  # two workers: order must come from the server, not luck
    sock, f = raw_connection(st.port)
    sock.sendall(
        b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /3 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    bodies = [read_response(f).body for _ in range(3)]
    f.close()
    sock.close()
    assert bodies == [b"/1", b"/2", b"/3"]
    assert seen == ["/1", "/2", "/3"]  # one at a time: /2 dispatched only after /1 answered


# ------------------------------------------------------------------- bodies


def test_chunked_request_body(env):
    st = env.server()
    env.worker()
    sock, f = raw_connection(st.port)
    sock.sendall(b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for part in (b"hello ", b"chunked ", b"world"):
        sock.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        time.sleep(0.02)
    sock.sendall(b"0\r\n\r\n")
    got = json.loads(read_response(f).body)
    f.close()
    sock.close()
    assert got["body_length"] == 19 and got["body_head"] == "hello chunked world"
    # a small body is waited for and carried inline, however it was framed
    assert got["body_channel"] is None


def test_chunked_body_from_httpx_generator(env):
    st = env.server()
    env.worker()

    def gen():
        for i in range(50):
            yield bytes([65 + i % 26]) * 4000

    r = httpx.post(url(st, "/gen"), content=gen())
    got = r.json()
    assert got["body_length"] == 200_000
    assert got["body_head"] == "A" * 64


def test_streamed_response_with_more_content(env):
    st = env.server()

    def streamer(layer, channel, message):
        rc = message["reply_channel"]
        send_retrying(layer, rc, {"status": 200, "headers": [[b"content-type", b"text/plain"]],
                                  "content": b"first,", "more_content": True})
        for part in (b"second,", b"", b"third"):
            time.sleep(0.02)
            send_retrying(layer, rc, {"content": part, "more_content": True})
        send_retrying(layer, rc, {"content": b",last", "more_content": False})

    env.worker(streamer)
    with httpx.Client() as client:
        with client.stream("GET", url(st, "/stream")) as r:
            assert r.headers["transfer-encoding"] == "chunked"
            assert "content-length" not in r.headers
            pieces = list(r.iter_raw())
        assert b"".join(pieces) == b"first,second,third,last"
        assert len(pieces) >= 2  # it really streamed
        # the connection is still good afterwards
        with client.stream("GET", url(st, "/again")) as r:
            assert r.read() == b"first,second,third,last"
    # HTTP/1.0 gets a close-delimited body
    sock, f = raw_connection(st.port)
    sock.sendall(b"GET /s HTTP/1.0\r\n\r\n")
    r = read_response(f)
    assert r.header("transfer-encoding") is None and r.header("connection") == "close"
    assert r.body == b"first,second,third,last"
    f.close()
    sock.close()


def test_first_message_that_is_last_gets_content_length_and_app_length_is_kept(env):
    st = env.server()

    def handler(layer, channel, message):
        if message["path"] == "/own":
            send_retrying(layer, message["reply_channel"], {
                "status": 201, "headers": [[b"Content-Length", b"5"], [b"X-A", b"1"], [b"X-A", b"2"]],
                "content": b"12", "more_content": True})
            send_retrying(layer, message["reply_channel"], {"content": b"345"})
        else:
            send_retrying(layer, message["reply_channel"], {"status": 204})

    env.worker(handler)
    with httpx.Client() as client:
        r = client.get(url(st, "/own"))
        assert r.status_code == 201 and r.content == b"12345"
        assert r.headers["content-length"] == "5" and "transfer-encoding" not in r.headers
        assert r.headers.get_list("x-a") == ["1", "2"]
        r = client.get(url(st, "/empty"))
        assert r.status_code == 204 and r.content == b"" and "content-length" not in r.headers


def test_head_sends_no_body_and_the_connection_survives(env):
    st = env.server()

    def handler(layer, channel, message):
        send_retrying(layer, message["reply_channel"], {"status": 200, "content": b"hello"})

    env.worker(handler)
    sock, f = raw_connection(st.port)
    sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = read_response(f, method="HEAD")
    assert head.status == 200 and head.header("content-length") == "5" and head.body == b""
    get = read_response(f)
    assert get.body == b"hello"  # no stray body bytes from the HEAD response
    f.close()
    sock.close()


def test_large_upload_streams_through_the_body_channel_with_flow_control(env):
    st = env.server(capacity={r"http.request.body?*": 4})
    total = 8 * 1024 * 1024
    got = {}

    def slow_reader(layer, channel, message):
        assert message["body_channel"] and len(message["body"]) == 65536
        size, chunks = len(message["body"]), 0
        while True:
            _, chunk = layer.receive([message["body_channel"]], block=True)
            assert chunk is not None
            assert len(chunk["content"]) <= 65536
            size += len(chunk["content"])
            chunks += 1
            if chunks % 16 == 0:
                time.sleep(0.01)
            if not chunk["more_content"]:
                break
        got.update(size=size, chunks=chunks)
        send_retrying(layer, message["reply_channel"], {"status": 200, "content": b"%d" % size})

    env.worker(slow_reader)
    r = httpx.post(url(st, "/big"), content=b"z" * total, timeout=30)
    assert r.status_code == 200 and r.content == str(total).encode()
    # 64 KiB inline, 127 full chunks, then an empty last one (more_content False)
    assert got["size"] == total and got["chunks"] == total // 65536
    assert st.stats()["body_waits"] > 0  # the body channel filled up and the socket was paused


def test_expect_100_continue_is_sent_only_once_dispatched(env):
    st = env.server(capacity={"http.request": 1})
    gate = threading.Event()

    def handler(layer, channel, message):
        gate.wait(5)
        echo_http(layer, channel, message)

    env.worker(handler, channels=("http.request",))
    sock, f = raw_connection(st.port)
    sock.sendall(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert f.readline() == b"HTTP/1.1 100 Continue\r\n"  # dispatched: the app will read the body
    assert f.readline() == b"\r\n"
    sock.sendall(b"hello")
    gate.set()
    r = read_response(f)
    got = json.loads(r.body)
    assert r.status == 200 and got["body_length"] == 5 and got["body_head"] == "hello"
    assert got["body_channel"] and got["body_length"] == 5
    f.close()
    sock.close()


def test_expect_100_continue_not_sent_when_the_request_is_refused(env):
    st = env.server(capacity={"http.request": 1})  # and no worker: the first request fills it
    a, fa = raw_connection(st.port)
    a.sendall(b"GET /fill HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(0.1)
    sock, f = raw_connection(st.port)
    sock.sendall(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    r = read_response(f)
    assert r.status == 503  # straight away, no 100 Continue before it
    f.close()
    sock.close()
    fa.close()
    a.close()


# --------------------------------------------------------------- limits etc.


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n", 413),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc", 400),
    (b"GET /%ff%fe HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\n\r\n", 417),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
], ids=["414-target", "431-count", "431-size", "413-length", "400-garbage", "400-two-lengths", "400-path-utf8",
        "417-expect", "400-bad-chunk"])
def test_limits_and_malformed_requests(env, request_bytes, status):
    st = env.server(limit_request_body=1000)
    env.worker()
    sock, f = raw_connection(st.port)
    sock.sendall(request_bytes)
    r = read_response(f)
    assert r.status == status, r
    assert r.header("connection") == "close"
    assert f.read(1) == b""
    f.close()
    sock.close()


def test_chunked_body_growing_past_the_limit_gets_413(env):
    st = env.server(limit_request_body=100_000)
    env.worker()
    sock, f = raw_connection(st.port)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    r = None
    try:
        for _ in range(10):
            sock.sendall(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
    except OSError:
        pass
    r = read_response(f)
    assert r.status == 413
    f.close()
    sock.close()


def test_header_field_and_count_limits_are_configurable(env):
    st = env.server(limit_request_fields=3, limit_request_field_size=50, limit_request_line=20)
    env.worker()
    for req, status in [
        (b"GET / HTTP/1.1\r\nHost: h\r\nB: 2\r\nC: 3\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\nHost: h\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 431),
        (b"GET / HTTP/1.1\r\nHost: h\r\nA: " + b"x" * 60 + b"\r\n\r\n", 431),
        (b"GET /" + b"x" * 19 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 200),
        (b"GET /" + b"x" * 20 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
    ]:
        sock, f = raw_connection(st.port)
        sock.sendall(req)
        assert read_response(f).status == status, req
        f.close()
        sock.close()


# ----------------------------------------------------------------- proxies


def test_proxy_headers_from_a_trusted_peer(env):
    st = env.server(proxy_headers=True, forwarded_allow_ips=["127.0.0.1", "10.0.0.0/8"])
    env.worker()
    with httpx.Client() as client:
        got = client.get(url(st), headers={
            "X-Forwarded-For": "203.0.113.9, 10.1.2.3", "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "example.com", "X-Forwarded-Port": "8443",
        }).json()
        assert got["client"] == ["203.0.113.9", 0]  # 10.1.2.3 is a trusted hop
        assert got["scheme"] == "https"
        assert got["server"] == ["example.com", 8443]
        # right-most untrusted hop wins: a client cannot spoof its address by prepending one
        got = client.get(url(st), headers={"X-Forwarded-For": "1.1.1.1, 198.51.100.7, 10.0.0.5"}).json()
        assert got["client"] == ["198.51.100.7", 0]
        assert got["scheme"] == "http"


def test_proxy_headers_from_an_untrusted_peer_are_ignored(env):
    st = env.server(proxy_headers=True, forwarded_allow_ips="10.9.9.9")
    env.worker()
    got = httpx.get(url(st), headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}).json()
    assert got["client"][0] == "127.0.0.1" and got["client"][1] != 0
    assert got["scheme"] == "http"
    assert ["x-forwarded-for", "203.0.113.9"] in got["headers"]  # passed through, not applied


def test_proxy_headers_off_by_default(env):
    st = env.server()
    env.worker()
    got = httpx.get(url(st), headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}).json()
    assert got["client"][0] == "127.0.0.1" and got["scheme"] == "http"


def test_root_path(env):
    st = env.server(root_path="/api/")
    env.worker()
    got = httpx.get(url(st, "/api/users")).json()
    assert got["root_path"] == "/api"
    assert got["path"] == "/api/users"  # ASGI 1: path is the full path; root_path is SCRIPT_NAME


# ----------------------------------------------------------- errors and time


def test_503_at_once_when_http_request_is_full(env):
    st = env.server(capacity={"http.request": 1}, http_timeout=5)
    first, ffirst = raw_connection(st.port)
    first.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")  # sits in the channel: no worker
    time.sleep(0.1)
    t0 = time.monotonic()
    r = httpx.get(url(st, "/second"))
    assert time.monotonic() - t0 < 1.0
    assert r.status_code == 503
    assert r.text == "Service Unavailable: request queue full"
    assert st.stats()["rejected_full"] == 1
    ffirst.close()
    first.close()


def test_504_when_no_response_within_http_timeout(env):
    st = env.server(http_timeout=0.4)
    t0 = time.monotonic()
    r = httpx.get(url(st, "/slow"))
    assert r.status_code == 504
    assert 0.35 < time.monotonic() - t0 < 3
    assert st.stats()["timeouts"] == 1
    assert st.stats()["reply_channels"] == 0


def test_late_reply_after_504_is_dropped(env):
    st = env.server(http_timeout=0.3)
    done = threading.Event()

    def late(layer, channel, message):
        time.sleep(0.6)
        send_retrying(layer, message["reply_channel"], {"status": 200, "content": b"late"})
        done.set()

    env.worker(late)
    assert httpx.get(url(st)).status_code == 504
    assert done.wait(5)
    time.sleep(0.1)
    assert st.stats()["unknown_replies"] == 1


def test_http_disconnect_only_when_the_client_leaves_early(env):
    st = env.server()
    got = []
    answered = threading.Event()

    def handler(layer, channel, message):
        if channel == "http.disconnect":
            got.append(message)
            return
        if message["path"] == "/hang":
            answered.set()
            return  # never answers
        send_retrying(layer, message["reply_channel"], {"status": 200, "content": b"ok"})

    env.worker(handler, channels=("http.request", "http.disconnect"))
    # a completed request produces no http.disconnect
    with httpx.Client() as client:
        assert client.get(url(st, "/fine")).status_code == 200
    time.sleep(0.2)
    assert got == []
    # a client that leaves before its response does (a reset: a FIN after a
    # complete request is a half-close, which still waits for the response;
    # see test_half_close_after_a_complete_request_still_gets_the_response)
    sock, f = raw_connection(st.port)
    sock.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answered.wait(5)
    f.close()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(got) == 1
    assert got[0]["path"] == "/hang" and got[0]["reply_channel"].startswith("http.response.")
    assert set(got[0]) == {"reply_channel", "path"}


def test_client_leaving_mid_body_closes_the_body_channel(env):
    st = env.server()
    chunks = []
    ready = threading.Event()

    def handler(layer, channel, message):
        ready.set()
        while True:
            _, chunk = layer.receive([message["body_channel"]], block=True)
            if chunk is None:
                continue
            chunks.append(chunk)
            if chunk.get("closed") or not chunk.get("more_content"):
                break

    env.worker(handler)
    sock, f = raw_connection(st.port)
    sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000)
    assert ready.wait(5)
    time.sleep(0.1)
    f.close()
    sock.close()
    deadline = time.monotonic() + 5
    while not (chunks and chunks[-1].get("closed")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert chunks[-1] == {"closed": True}


def test_response_header_injection_is_refused(env):
    st = env.server()

    def handler(layer, channel, message):
        send_retrying(layer, message["reply_channel"], {"status": 200, "headers": [[b"x-a", b"1\r\nSet-Cookie: evil=1"]]})

    env.worker(handler)
    r = httpx.get(url(st))
    assert r.status_code == 500 and "set-cookie" not in r.headers


@pytest.mark.parametrize("header", [
    [b"x-a", b"1\0"], [b"x:a", b"1"], [b"x a", b"1"], [b"", b"1"], [b"x-a ", b"1"],
], ids=["nul_in_value", "colon_in_name", "space_in_name", "empty_name", "trailing_space_in_name"])
def test_bad_response_header_is_refused_with_a_logged_500(env, header, caplog):
    st = env.server()

    def handler(layer, channel, message):
        send_retrying(layer, message["reply_channel"], {"status": 200, "headers": [header], "content": b"ok"})

    env.worker(handler)
    with caplog.at_level("ERROR", logger="shmchannels.server"):
        sock, f = raw_connection(st.port)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = f.read()
        sock.close()
    assert raw.startswith(b"HTTP/1.1 500 "), raw
    assert b"x-a" not in raw and b"x:a" not in raw and b"x a" not in raw
    assert any("bad reply" in r.getMessage() and "invalid header" in r.getMessage()
               or "NUL" in r.getMessage() for r in caplog.records)


def test_begin_shutdown_finishes_in_flight_requests(env):
    st = env.server(graceful_timeout=5)
    release = threading.Event()

    def handler(layer, channel, message):
        release.wait(5)
        send_retrying(layer, message["reply_channel"], {"status": 200, "content": b"finished"})

    env.worker(handler)
    result = {}

    def client():
        result["r"] = httpx.get(url(st, "/inflight"), timeout=10)

    t = threading.Thread(target=client)
    t.start()
    deadline = time.monotonic() + 5
    while st.stats()["requests_in_flight"] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    idle, fidle = raw_connection(st.port)  # an idle keep-alive connection is closed at once
    time.sleep(0.05)
    st.begin_shutdown()
    assert fidle.read(1) == b""
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", st.port), timeout=1).recv(1)  # not accepting any more
    release.set()
    t.join(10)
    assert result["r"].status_code == 200 and result["r"].text == "finished"
    assert result["r"].headers["connection"] == "close"
    st.thread.join(5)
    assert not st.thread.is_alive()


def test_heartbeat_and_access_log(env, prefix):
    lines = []
    beats = []
    layer = env.layer()
    st = ServerThread(layer, ProtocolConfig(prefix=prefix, access_log=lines.append))
    st.__enter__()
    env.servers.append(st)
    st.server.heartbeat = lambda: beats.append(time.monotonic())
    env.worker()
    httpx.get(url(st, "/logged?q=1"), headers={"User-Agent": "ua/1", "Referer": "http://r/"})
    time.sleep(1.2)
    assert beats
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("127.0.0.1 - - [")
    assert '"GET /logged?q=1 HTTP/1.1" 200 ' in line
    assert line.endswith('"http://r/" "ua/1"')


# ------------------------------------------------------------- wrong replies

#: (case, the first reply message, expected status, expected body or None)
#: Every malformed first reply is a logged 500; a str content is what a
#: Channels 1 user sends (the talk's raw-layer example) and goes out as UTF-8.
REPLIES = [
    ("str content (the talk's example)", {"content": "Hello World! é", "status": 200}, 200, "Hello World! é".encode()),
    ("None content", {"status": 204, "content": None}, 204, b""),
    ("bytearray content", {"status": 200, "content": bytearray(b"ba")}, 200, b"ba"),
    ("str header names and values", {"status": 200, "headers": [["x-a", "é"]], "content": b"ok"}, 200, b"ok"),
    ("int content", {"status": 200, "content": 5}, 500, None),
    ("list content", {"status": 200, "content": [b"a"]}, 500, None),
    ("status as str", {"status": "200", "content": b"x"}, 500, None),
    ("status as bool", {"status": True, "content": b"x"}, 500, None),
    ("status out of range", {"status": 1000}, 500, None),
    ("no status (a chunk first)", {"content": b"chunk", "more_content": True}, 500, None),
    ("headers as a dict", {"status": 200, "headers": {"ab": "cd"}}, 500, None),
    ("headers as None", {"status": 200, "headers": None}, 500, None),
    ("headers as a str", {"status": 200, "headers": "x-a: 1"}, 500, None),
    ("a header that is not a pair", {"status": 200, "headers": [[b"x-a", b"1", b"2"]]}, 500, None),
    ("a header that is a bytes pair", {"status": 200, "headers": [b"ab"]}, 500, None),
    ("an int header value", {"status": 200, "headers": [[b"x-a", 1]]}, 500, None),
    ("a header value not latin-1", {"status": 200, "headers": [[b"x-a", "€"]]}, 500, None),
    ("a None header name", {"status": 200, "headers": [[None, b"1"]]}, 500, None),
    ("content-length not a number", {"status": 200, "headers": [[b"content-length", b"ten"]], "content": b"x"}, 500, None),
    ("two content-lengths that differ",
     {"status": 200, "headers": [[b"content-length", b"1"], [b"content-length", b"2"]], "content": b"x"}, 500, None),
]


@pytest.mark.parametrize("reply, status, body", [r[1:] for r in REPLIES], ids=[r[0] for r in REPLIES])
def test_wrong_first_replies_are_500_or_fixed(env, reply, status, body):
    st = env.server()
    env.worker(lambda layer, channel, message: send_retrying(layer, message["reply_channel"], reply))
    t0 = time.monotonic()
    r = httpx.get(url(st), timeout=10)
    assert time.monotonic() - t0 < 5  # answered, not timed out
    assert r.status_code == status
    if body is not None:
        assert r.content == body
    else:
        assert r.text == "Internal Server Error" and r.headers["connection"] == "close"
    assert st.stats()["bad_replies"] == (1 if status == 500 else 0)
    assert st.stats()["reply_channels"] == 0


def test_str_content_in_a_streamed_response_is_utf8(env):
    st = env.server()

    def handler(layer, channel, message):
        rc = message["reply_channel"]
        send_retrying(layer, rc, {"status": 200, "content": "é", "more_content": True})
        send_retrying(layer, rc, {"content": "ü"})

    env.worker(handler)
    r = httpx.get(url(st))
    assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked" and r.text == "éü"


#: replies that go wrong after the response started: the connection closes,
#: so the client sees a response cut short, never a complete-looking one
BROKEN_STREAMS = [
    ("a status after the start", [{"status": 200, "content": b"part", "more_content": True}, {"status": 500, "content": b"X"}]),
    ("a bad chunk", [{"status": 200, "content": b"part", "more_content": True}, {"content": 7}]),
    ("a body shorter than its content-length", [{"status": 200, "headers": [[b"content-length", b"10"]], "content": b"12345"}]),
    ("a body longer than its content-length",
     [{"status": 200, "headers": [[b"content-length", b"4"]], "content": b"part", "more_content": True}, {"content": b"more"}]),
]


@pytest.mark.parametrize("replies", [r[1] for r in BROKEN_STREAMS], ids=[r[0] for r in BROKEN_STREAMS])
def test_wrong_replies_after_the_start_close_the_connection(env, replies):
    st = env.server()

    def handler(layer, channel, message):
        for m in replies:
            send_retrying(layer, message["reply_channel"], m)

    env.worker(handler)
    sock, f = raw_connection(st.port)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline()
        assert line, head
        head += line
    assert head.startswith(b"HTTP/1.1 200 ")
    rest = f.read()  # until the server closes: it must close
    sock.close()
    if b"chunked" in head:
        assert rest.startswith(b"4\r\npart\r\n") and not rest.endswith(b"0\r\n\r\n")
    else:
        assert rest in (b"12345", b"part")  # never more than Content-Length says
    deadline = time.monotonic() + 5
    while st.stats()["bad_replies"] != 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert st.stats()["bad_replies"] == 1


def test_a_body_that_matches_its_content_length_keeps_the_connection(env):
    st = env.server()

    def handler(layer, channel, message):
        rc = message["reply_channel"]
        send_retrying(layer, rc, {"status": 200, "headers": [[b"content-length", b"8"]], "content": b"part", "more_content": True})
        send_retrying(layer, rc, {"content": b"more", "more_content": True})
        send_retrying(layer, rc, {"content": b""})

    env.worker(handler)
    with httpx.Client() as client:
        assert client.get(url(st)).content == b"partmore"
        assert client.get(url(st)).content == b"partmore"
    assert st.stats()["connections_total"] == 1 and st.stats()["bad_replies"] == 0
