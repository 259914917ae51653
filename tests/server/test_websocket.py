"""The protocol server's WebSocket side, over real sockets, with fake workers.

Clients: the ``websockets`` library (sync client) for well-behaved traffic,
raw sockets for held handshakes, fragmentation and the bad-frame table.
"""

import collections
import random
import socket
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from shmchannels.server import ws_protocol
from shmchannels.server.testing import (
    BAD_FRAMES, BAD_FRAMES_MAX_SIZE, ServerEnv, client_frame, close_code_of, close_payload,
    parse_server_frames, read_frames_until_close, send_retrying, ws_handshake,
)

pytestmark = pytest.mark.timeout(60)

WS_CHANNELS = ("websocket.connect", "websocket.receive", "websocket.disconnect")


class WsApp:
    """A consumer set: records what it gets, answers connect per ``on_connect``,
    echoes, and acks every connect/receive after its sends (as real workers do)."""

    def __init__(self, on_connect="accept", subprotocol=None, connect_gate=None, receive_delay=None):
        self.on_connect = on_connect
        self.subprotocol = subprotocol
        self.connect_gate = connect_gate
        self.receive_delay = receive_delay
        self.messages = collections.defaultdict(list)  # channel -> [message]
        self.lock = threading.Lock()
        self.active = collections.Counter()  # reply_channel -> messages being handled now
        self.overlaps = 0
        self.processed = collections.defaultdict(list)  # reply_channel -> [order] in processing order

    def __call__(self, layer, channel, message):
        rc = message["reply_channel"]
        with self.lock:
            self.messages[channel].append(message)
            if channel != "websocket.disconnect":
                self.active[rc] += 1
                if self.active[rc] > 1:
                    self.overlaps += 1
                self.processed[rc].append(message["order"])
        try:
            if channel == "websocket.connect":
                if self.connect_gate is not None:
                    self.connect_gate.wait(5)
                reply = {
                    "accept": {"accept": True},
                    "reject": {"close": True},
                    "deny": {"accept": False},
                    "text": {"text": "welcome"},
                    "close-with-data": {"text": "bye", "close": 4001},
                }.get(self.on_connect)
                if reply is not None:
                    if self.subprotocol and reply.get("accept"):
                        reply = dict(reply, subprotocol=self.subprotocol)
                    send_retrying(layer, rc, reply)
            elif channel == "websocket.receive":
                if self.receive_delay:
                    time.sleep(self.receive_delay())
                text = message["text"]
                if text is not None and text.startswith("close:"):
                    send_retrying(layer, rc, {"close": int(text[6:])})
                elif text is not None:
                    send_retrying(layer, rc, {"text": text})
                else:
                    send_retrying(layer, rc, {"bytes": message["bytes"]})
        finally:
            with self.lock:
                if channel != "websocket.disconnect":
                    self.active[rc] -= 1
            if channel != "websocket.disconnect":
                send_retrying(layer, rc, {"__ack__": message["order"]})

    def wait_for(self, channel, n=1, timeout=5):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages[channel]) >= n:
                    return list(self.messages[channel])
            time.sleep(0.005)
        raise AssertionError(f"{channel}: {len(self.messages[channel])} messages, wanted {n}")


class WsEnv(ServerEnv):
    graceful_timeout = 0.5  # teardown of tests that leave acks pending

    def worker(self, app, channels=WS_CHANNELS):
        return super().worker(app, channels)


@pytest.fixture
def env(prefix):
    e = WsEnv(prefix)
    yield e
    e.close()


def ws_url(st, path="/ws"):
    return f"ws://127.0.0.1:{st.port}{path}"


# ---------------------------------------------------------------- handshake


def test_echo_text_and_bytes_with_orders_and_connect_keys(env):
    st = env.server()
    app = WsApp()
    env.worker(app)
    with connect(ws_url(st, "/chat/room?x=1"), additional_headers={"X-Thing": "yes"}) as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
        ws.send(b"\x00\x01\x02")
        assert ws.recv(timeout=5) == b"\x00\x01\x02"
        ws.send("é" * 1000)
        assert ws.recv(timeout=5) == "é" * 1000
    disconnect = app.wait_for("websocket.disconnect")[0]
    connect_msg = app.messages["websocket.connect"][0]
    assert set(connect_msg) == {
        "reply_channel", "scheme", "path", "query_string", "root_path", "headers", "client", "server",
        "order", "subprotocols",
        "__taken__",  # (shmchannels) asks the worker who it is; the real runner removes it
        "inbox",  # (shmchannels) the connection's channel, for an ASGI 3 consumer's channel_name
    }
    assert connect_msg["__taken__"].startswith("shmchannels.taken?")
    assert connect_msg["inbox"].startswith("websocket.send.shm") and connect_msg["inbox"] != connect_msg["reply_channel"]
    assert connect_msg["reply_channel"].startswith("websocket.send.shm")
    assert connect_msg["scheme"] == "ws" and connect_msg["path"] == "/chat/room"
    assert connect_msg["query_string"] == b"x=1" and connect_msg["root_path"] == ""
    assert [b"x-thing", b"yes"] in connect_msg["headers"]
    assert connect_msg["client"][0] == "127.0.0.1" and connect_msg["server"] == ["127.0.0.1", st.port]
    assert connect_msg["order"] == 0 and connect_msg["subprotocols"] == []
    receives = app.messages["websocket.receive"]
    assert [m["order"] for m in receives] == [1, 2, 3]
    assert receives[0]["text"] == "hello" and receives[0]["bytes"] is None
    assert receives[1]["bytes"] == b"\x00\x01\x02" and receives[1]["text"] is None
    assert all(m["path"] == "/chat/room" and m["reply_channel"] == connect_msg["reply_channel"] for m in receives)
    assert all(m["__taken__"] == connect_msg["__taken__"] for m in receives)
    assert disconnect == {"reply_channel": connect_msg["reply_channel"], "path": "/chat/room", "code": 1000, "order": 4}


def test_handshake_is_held_until_the_application_accepts(env):
    st = env.server()
    gate = threading.Event()
    app = WsApp(connect_gate=gate)
    env.worker(app)
    sock = socket.create_connection(("127.0.0.1", st.port), timeout=5)
    sock.sendall(b"GET /held HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    app.wait_for("websocket.connect")
    sock.settimeout(0.3)
    with pytest.raises(socket.timeout):
        sock.recv(1)  # nothing until the consumer answers
    gate.set()
    sock.settimeout(5)
    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in head  # RFC 6455's example key
    sock.close()


@pytest.mark.parametrize("behaviour", ["reject", "deny"])
def test_rejection_gives_403(env, behaviour):
    st = env.server()
    app = WsApp(on_connect=behaviour)
    env.worker(app)
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(st), open_timeout=5)
    assert info.value.response.status_code == 403
    # the consumer still gets its disconnect, after the connect (order 1)
    disconnect = app.wait_for("websocket.disconnect")[0]
    assert disconnect["order"] == 1 and disconnect["code"] == 1006


def test_no_answer_within_websocket_connect_timeout_gives_403(env):
    st = env.server(websocket_connect_timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(st), open_timeout=5)
    assert info.value.response.status_code == 403
    assert 0.25 < time.monotonic() - t0 < 3


def test_text_while_connecting_accepts_and_sends(env):
    st = env.server()
    env.worker(WsApp(on_connect="text"))
    with connect(ws_url(st)) as ws:
        assert ws.recv(timeout=5) == "welcome"


def test_close_with_data_while_connecting_accepts_sends_and_closes(env):
    st = env.server()
    env.worker(WsApp(on_connect="close-with-data"))
    with connect(ws_url(st)) as ws:
        assert ws.recv(timeout=5) == "bye"
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd.code == 4001


def test_subprotocol_is_chosen_by_the_application(env):
    st = env.server()
    app = WsApp(subprotocol="chat.v2")
    env.worker(app)
    with connect(ws_url(st), subprotocols=["chat.v1", "chat.v2"]) as ws:
        assert ws.subprotocol == "chat.v2"
    assert app.messages["websocket.connect"][0]["subprotocols"] == ["chat.v1", "chat.v2"]


def test_subprotocol_not_offered_is_not_sent(env):
    st = env.server()
    env.worker(WsApp(subprotocol="other"))
    with connect(ws_url(st), subprotocols=["chat.v1"]) as ws:
        assert ws.subprotocol is None


@pytest.mark.parametrize("extra, status", [
    (b"Sec-WebSocket-Version: 8\r\n", 426),
    (b"Sec-WebSocket-Key: short\r\n", 400),
])
def test_invalid_handshakes(env, extra, status):
    st = env.server()
    env.worker(WsApp())
    sock = socket.create_connection(("127.0.0.1", st.port), timeout=5)
    lines = {b"Sec-WebSocket-Version": b"13", b"Sec-WebSocket-Key": b"dGhlIHNhbXBsZSBub25jZQ=="}
    name, _, value = extra.rstrip(b"\r\n").partition(b": ")
    lines[name] = value
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 + b"".join(k + b": " + v + b"\r\n" for k, v in lines.items()) + b"\r\n")
    head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 %d " % status)
    if status == 426:
        assert b"Sec-WebSocket-Version: 13\r\n" in head
    sock.close()


def test_503_when_websocket_connect_is_full(env):
    st = env.server(capacity={"websocket.connect": 1})  # no worker: the first connect fills it
    s1 = socket.create_connection(("127.0.0.1", st.port), timeout=5)
    s1.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    time.sleep(0.1)
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(st), open_timeout=5)
    assert info.value.response.status_code == 503
    s1.close()


# ------------------------------------------------------------------ ordering


def test_per_connection_ordering_with_acks_across_two_workers(env):
    st = env.server()
    rng = random.Random(7)
    app = WsApp(receive_delay=lambda: rng.choice((0, 0.002, 0.01)))
    env.worker(app)
    env.worker(app)  # two threads take websocket.receive; each acks after its reply
    n = 40
    with connect(ws_url(st)) as a, connect(ws_url(st)) as b:
        for i in range(n):
            a.send(f"a{i}")
            b.send(f"b{i}")
        got_a = [a.recv(timeout=10) for _ in range(n)]
        got_b = [b.recv(timeout=10) for _ in range(n)]
    assert got_a == [f"a{i}" for i in range(n)]
    assert got_b == [f"b{i}" for i in range(n)]
    app.wait_for("websocket.disconnect", 2)
    for rc, orders in app.processed.items():
        assert orders == list(range(n + 1)), orders  # connect 0, then 1..n, each after the previous ack
    assert app.overlaps == 0  # never two messages of one connection in flight


def test_frames_wait_in_the_server_until_the_ack(env):
    st = env.server()
    layer = env.layer()
    sock, resp = ws_handshake_after_accept(env, st, layer)
    rc = resp
    # the consumer of order 1 has not acked: orders 2 and 3 must not be on the channel yet
    sock.sendall(client_frame(0x1, "one") + client_frame(0x1, "two") + client_frame(0x1, "three"))
    ch, m = layer.receive(["websocket.receive"], block=True)
    assert m["order"] == 1 and m["text"] == "one"
    time.sleep(0.1)
    assert layer.receive(["websocket.receive"]) == (None, None)
    layer.send(rc, {"__ack__": 1})
    ch, m = layer.receive(["websocket.receive"], block=True)
    assert m["order"] == 2
    layer.send(rc, {"__ack__": 1})  # a stale ack changes nothing
    layer.send(rc, {"__ack__": 3})  # nor does an ack from the future (out of order)
    time.sleep(0.05)
    assert layer.receive(["websocket.receive"]) == (None, None)
    layer.send(rc, {"__ack__": 2})
    ch, m = layer.receive(["websocket.receive"], block=True)
    assert m["order"] == 3 and m["text"] == "three"
    sock.close()


def ws_handshake_after_accept(env, st, layer, **kw):
    """Open a raw websocket, accept it by hand and ack the connect; return (sock, reply_channel)."""
    result = {}

    def opener():
        result["conn"] = ws_handshake(st.port, **kw)

    t = threading.Thread(target=opener)
    t.start()
    ch, m = layer.receive(["websocket.connect"], block=True)
    assert ch == "websocket.connect"
    layer.send(m["reply_channel"], {"accept": True})
    layer.send(m["reply_channel"], {"__ack__": 0})
    t.join(5)
    sock, resp = result["conn"]
    assert resp.status == 101
    return sock, m["reply_channel"]


def test_ack_timeout_moves_on(env):
    st = env.server(ack_timeout=0.3)
    layer = env.layer()
    sock, rc = ws_handshake_after_accept(env, st, layer)
    sock.sendall(client_frame(0x1, "one") + client_frame(0x1, "two"))
    _, m = layer.receive(["websocket.receive"], block=True)
    assert m["order"] == 1
    t0 = time.monotonic()
    _, m = layer.receive(["websocket.receive"], block=True)  # no ack: comes after ack_timeout
    assert m["order"] == 2 and time.monotonic() - t0 > 0.2
    assert st.stats()["ack_timeouts"] == 1
    sock.close()


def test_reading_pauses_above_ws_max_queue(env):
    st = env.server(ws_max_queue=4)
    layer = env.layer()
    sock, rc = ws_handshake_after_accept(env, st, layer)
    conn = next(iter(st.server.websockets))
    sock.sendall(b"".join(client_frame(0x1, f"m{i}") for i in range(10)))
    time.sleep(0.2)
    assert st.call(lambda: conn.paused) == ws_protocol.PAUSE_QUEUE
    assert st.call(lambda: len(conn.bridge.queue)) >= 5
    for order in range(1, 11):
        _, m = layer.receive(["websocket.receive"], block=True)
        assert m["order"] == order and m["text"] == f"m{order - 1}"
        layer.send(rc, {"__ack__": order})
    time.sleep(0.05)
    assert st.call(lambda: conn.paused) == 0
    sock.close()


# ------------------------------------------------------------------- frames


def test_fragmentation_with_control_frames_between_fragments(env):
    st = env.server()
    app = WsApp()
    env.worker(app)
    sock, resp = ws_handshake(st.port)
    assert resp.status == 101
    sock.sendall(
        client_frame(0x1, "Hel", fin=False)
        + client_frame(0x9, b"ping-in-between")
        + client_frame(0x0, "lo, ", fin=False)
        + client_frame(0xA, b"unsolicited pong")
        + client_frame(0x0, "wörld", fin=True)
        + client_frame(0x2, b"\x01", fin=False) + client_frame(0x0, b"\x02", fin=True)
    )
    frames, data = [], resp.body
    deadline = time.monotonic() + 5
    while len(frames) < 3 and time.monotonic() < deadline:
        sock.settimeout(deadline - time.monotonic())
        data += sock.recv(65536)
        got, data = parse_server_frames(data)
        frames += got
    assert frames[0] == (True, 0xA, b"ping-in-between")  # pong at once, mid-message
    assert frames[1] == (True, 0x1, "Hello, wörld".encode())
    assert frames[2] == (True, 0x2, b"\x01\x02")
    sock.sendall(client_frame(0x8, close_payload(1000)))
    frames = read_frames_until_close(sock, data)
    assert frames[-1][1] == 0x8 and close_code_of(frames[-1][2]) == 1000
    sock.close()
    assert [m["text"] for m in app.wait_for("websocket.receive", 2)][:1] == ["Hello, wörld"]


def test_client_close_is_echoed_and_reported(env):
    st = env.server()
    app = WsApp()
    env.worker(app)
    sock, resp = ws_handshake(st.port)
    sock.sendall(client_frame(0x8, close_payload(4321, "see you".encode())))
    frames = read_frames_until_close(sock, resp.body)
    assert close_code_of(frames[-1][2]) == 4321
    sock.settimeout(5)
    assert sock.recv(10) == b""  # the server closes TCP after its echo
    sock.close()
    assert app.wait_for("websocket.disconnect")[0]["code"] == 4321


def test_application_close_code(env):
    st = env.server()
    app = WsApp()
    env.worker(app)
    with connect(ws_url(st)) as ws:
        ws.send("close:4100")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd.code == 4100
    assert app.wait_for("websocket.disconnect")[0]["code"] == 4100


@pytest.mark.parametrize("name, frames, code", BAD_FRAMES, ids=[row[0] for row in BAD_FRAMES])
def test_bad_frames_fail_the_connection_with_the_right_code(env, name, frames, code):
    st = env.server(ws_max_size=BAD_FRAMES_MAX_SIZE)
    app = WsApp()
    env.worker(app)
    sock, resp = ws_handshake(st.port)
    assert resp.status == 101
    sock.sendall(frames)
    got = read_frames_until_close(sock, resp.body)
    closes = [p for _, op, p in got if op == 0x8]
    assert closes, f"no close frame for {name}: {got}"
    assert close_code_of(closes[0]) == code
    sock.settimeout(5)
    try:
        assert sock.recv(10) == b""  # and TCP is closed
    except ConnectionResetError:
        pass
    sock.close()
    assert app.wait_for("websocket.disconnect")[0]["code"] == code


def test_message_of_exactly_ws_max_size_passes(env):
    st = env.server(ws_max_size=1024)
    env.worker(WsApp())
    with connect(ws_url(st), max_size=None) as ws:
        ws.send(b"x" * 1024)
        assert ws.recv(timeout=5) == b"x" * 1024
        ws.send("y" * 1025)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd.code == 1009


# --------------------------------------------------------------- keep-alive


def test_pings_keep_a_responsive_client_connected(env):
    st = env.server(ws_ping_interval=0.1, ws_ping_timeout=0.2)
    env.worker(WsApp())
    with connect(ws_url(st), ping_interval=None) as ws:  # the client library answers pings itself
        time.sleep(0.8)
        ws.send("still here")
        assert ws.recv(timeout=5) == "still here"
    assert st.stats()["ping_timeouts"] == 0


def test_missing_pong_closes_with_1011(env):
    st = env.server(ws_ping_interval=0.2, ws_ping_timeout=0.3)
    app = WsApp()
    env.worker(app)
    sock, resp = ws_handshake(st.port)
    t0 = time.monotonic()
    frames = read_frames_until_close(sock, resp.body)  # a raw client that never pongs
    assert frames[0][1] == 0x9 and len(frames[0][2]) == 4  # a ping came first
    assert close_code_of(frames[-1][2]) == 1011
    assert 0.4 < time.monotonic() - t0 < 3
    sock.close()
    assert app.wait_for("websocket.disconnect")[0]["code"] == 1011


def open_unread(port, path="/ws"):
    """A handshaken raw WebSocket with a 4 KiB receive buffer that will read nothing more."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def test_missing_pong_ends_a_connection_whose_client_never_reads(env):
    """The 1011 close cannot be written to a client that reads nothing: the
    connection is dropped ws_close_timeout later, not kept until the client
    reads (it never would: before the fix, websocket.disconnect never came)."""
    st = env.server(ws_ping_interval=0.2, ws_ping_timeout=0.3, ws_close_timeout=0.5, ws_write_limit=64 << 20)
    app = WsApp()
    env.worker(app)
    sock = open_unread(st.port)
    rc = app.wait_for("websocket.connect")[0]["reply_channel"]
    layer = env.layer()
    for _ in range(48):  # 3 MiB: more than the kernel's buffers take for a peer that does not read
        send_retrying(layer, rc, {"bytes": b"x" * (64 << 10)})
    assert app.wait_for("websocket.disconnect", timeout=10)[0]["code"] == 1011
    assert st.stats()["ping_timeouts"] == 1
    sock.close()


def test_refused_handshakes_are_not_counted_as_websocket_closes(env):
    """A 403 (the application said no) or a 503 is an HTTP answer: no
    WebSocket was open, so no close code (1006 before) is counted."""
    from shmchannels.counters import C

    st = env.server()
    env.worker(WsApp(on_connect="deny"))
    for _ in range(3):
        with pytest.raises(InvalidStatus) as info:
            connect(ws_url(st), open_timeout=5).close()
        assert info.value.response.status_code == 403
    closes = [f"ws_closes_{code}" for code in ws_protocol.WS_CLOSE_CODES] + ["ws_closes_other"]
    counted = st.call(lambda: {name: st.server.stats_words[C[name]] for name in closes})
    assert not any(counted.values()), counted


def test_a_refused_handshake_has_one_access_log_line(env):
    """The 403 is logged once: its connection's end is not a 499 as well."""
    st = env.server()
    lines = []
    st.call(setattr, st.server.access_log, "sink", lines.append)
    env.worker(WsApp(on_connect="deny"))
    with pytest.raises(InvalidStatus):
        connect(ws_url(st), open_timeout=5).close()
    time.sleep(0.3)  # the connection's end, then the batch
    st.call(st.server.access_log.flush)
    statuses = [line.split('"')[2].split()[0] for line in lines]
    assert statuses == ["403"], lines


def test_pings_off_with_zero_interval(env):
    st = env.server(ws_ping_interval=0)
    env.worker(WsApp())
    sock, resp = ws_handshake(st.port)
    sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        sock.recv(10)
    sock.close()


# ------------------------------------------------------- full and shutdown


def test_close_1013_when_websocket_receive_is_full(env):
    st = env.server(capacity={"websocket.receive": 1})
    app = WsApp()
    env.worker(app, channels=("websocket.connect",))  # accepts, never reads websocket.receive
    with connect(ws_url(st)) as a:
        a.send("fills the channel")
        time.sleep(0.1)
        with connect(ws_url(st)) as b:
            b.send("finds it full")
            with pytest.raises(ConnectionClosed) as info:
                b.recv(timeout=5)
        assert info.value.rcvd.code == 1013
        # several frames in one read: one refusal, the rest discarded
        sock, resp = ws_handshake(st.port)
        sock.sendall(b"".join(client_frame(0x1, f"m{i}") for i in range(5)))
        frames = read_frames_until_close(sock, resp.body)
        assert close_code_of(frames[-1][2]) == 1013
        sock.close()
        assert st.stats()["rejected_full"] == 2


@pytest.mark.parametrize("code", [1001, 1012])
def test_begin_shutdown_closes_websockets_with_the_code(env, code):
    st = env.server()
    app = WsApp()
    env.worker(app)
    with connect(ws_url(st)) as ws:
        ws.send("x")
        assert ws.recv(timeout=5) == "x"
        st.begin_shutdown(code)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd.code == code
    assert app.wait_for("websocket.disconnect")[0]["code"] == code
    st.thread.join(5)
    assert not st.thread.is_alive()


def test_proxy_headers_set_wss(env):
    st = env.server(proxy_headers=True, forwarded_allow_ips="*")
    app = WsApp()
    env.worker(app)
    with connect(ws_url(st), additional_headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.1"}):
        pass
    m = app.messages["websocket.connect"][0]
    assert m["scheme"] == "wss" and m["client"] == ["192.0.2.1", 0]


# ------------------------------------------------------------- wrong sends


class BadSendApp(WsApp):
    """Accepts (or answers the connect with ``connect_reply``), then answers a
    received text naming a case of BAD_SENDS with that malformed send (and
    its ack, as a real worker does)."""

    def __init__(self, connect_reply=None):
        super().__init__()
        self.connect_reply = connect_reply

    def __call__(self, layer, channel, message):
        rc = message["reply_channel"]
        if channel == "websocket.connect" and self.connect_reply is not None:
            with self.lock:
                self.messages[channel].append(message)
            send_retrying(layer, rc, self.connect_reply)
            send_retrying(layer, rc, {"__ack__": 0})
        elif channel == "websocket.receive" and message["text"] in BAD_SENDS:
            with self.lock:
                self.messages[channel].append(message)
            send_retrying(layer, rc, BAD_SENDS[message["text"]])
            send_retrying(layer, rc, {"__ack__": message["order"]})
        else:
            super().__call__(layer, channel, message)


#: malformed sends once the socket is open: each closes it with 1011
BAD_SENDS = {
    "text as bytes": {"text": b"not a str"},
    "text as int": {"text": 5},
    "bytes as str": {"bytes": "not bytes"},
    "bytes as list": {"bytes": [1, 2]},
    "bad text with close": {"text": b"x", "close": True},
}


@pytest.mark.parametrize("case", sorted(BAD_SENDS))
def test_malformed_send_closes_with_1011(env, case):
    st = env.server()
    app = BadSendApp()
    env.worker(app)
    with connect(ws_url(st)) as ws:
        ws.send("fine")
        assert ws.recv(timeout=5) == "fine"
        ws.send(case)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    # the ack in the malformed message's wake still counted: the disconnect follows
    disconnect = app.wait_for("websocket.disconnect")[0]
    assert disconnect["code"] == 1011 and disconnect["order"] == 3
    assert st.stats()["bad_replies"] == 1


@pytest.mark.parametrize("reply, status", [
    ({"text": b"not a str"}, 500),  # malformed data while the handshake is pending
    ({"bytes": "not bytes"}, 500),
    ({"close": 1011}, 500),  # what a worker sends when the connect consumer raised
    ({"close": True}, 403),  # an ordinary rejection stays 403
], ids=["text as bytes", "bytes as str", "close 1011", "close True"])
def test_malformed_or_failed_connect_answer_gives_http_status(env, reply, status):
    st = env.server()
    app = BadSendApp(connect_reply=reply)
    env.worker(app)
    with pytest.raises(InvalidStatus) as info:
        connect(ws_url(st), open_timeout=5)
    assert info.value.response.status_code == status
    disconnect = app.wait_for("websocket.disconnect")[0]
    assert disconnect["order"] == 1 and disconnect["code"] == 1006
