"""Helpers for testing protocol servers: raw WebSocket frames, the bad-frame
table, a server running on its own event-loop thread, and fake workers.

Used by tests/server/ and bench/ws_codec.py; nothing here runs in
production.
"""

import asyncio
import logging
import os
import socket
import struct
import threading
import time

# ---------------------------------------------------------------- raw frames


def client_frame(opcode, payload=b"", *, fin=True, rsv=0, masked=True, mask=None):
    """One client->server frame, masked unless told otherwise."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    n = len(payload)
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, mbit | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not masked:
        return head + payload
    mask = mask or os.urandom(4)
    unmasked = bytes(b ^ mask[i & 3] for i, b in enumerate(payload)) if n < 4096 else _xor(payload, mask)
    return head + mask + unmasked


def _xor(payload, mask):
    n = len(payload)
    m = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(m, "little")).to_bytes(n, "little")


def close_payload(code, reason=b""):
    return struct.pack("!H", code) + reason


def parse_server_frames(data):
    """[(fin, opcode, payload)] of complete unmasked frames, and the rest."""
    frames = []
    pos = 0
    while len(data) - pos >= 2:
        b0, b1 = data[pos], data[pos + 1]
        n = b1 & 0x7F
        hdr = 2
        if n == 126:
            if len(data) - pos < 4:
                break
            n = struct.unpack_from("!H", data, pos + 2)[0]
            hdr = 4
        elif n == 127:
            if len(data) - pos < 10:
                break
            n = struct.unpack_from("!Q", data, pos + 2)[0]
            hdr = 10
        if b1 & 0x80:
            raise AssertionError("server frames must not be masked")
        if len(data) - pos < hdr + n:
            break
        frames.append((bool(b0 & 0x80), b0 & 0x0F, bytes(data[pos + hdr: pos + hdr + n])))
        pos += hdr + n
    return frames, data[pos:]


def close_code_of(payload):
    return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005


#: (name, frames to send after a valid handshake, expected close code).
#: ``max_size`` rows assume ws_max_size = 1024.
BAD_FRAMES_MAX_SIZE = 1024
BAD_FRAMES = [
    ("unmasked frame", client_frame(0x1, b"hello", masked=False), 1002),
    ("ping over 125 bytes", client_frame(0x9, b"x" * 126), 1002),
    ("close over 125 bytes", client_frame(0x8, close_payload(1000, b"x" * 124)), 1002),
    ("fragmented ping", client_frame(0x9, b"p", fin=False), 1002),
    ("RSV1 set", client_frame(0x1, b"hi", rsv=4), 1002),
    ("RSV2 set", client_frame(0x2, b"hi", rsv=2), 1002),
    ("RSV3 set", client_frame(0x1, b"hi", rsv=1), 1002),
    ("reserved data opcode 3", client_frame(0x3, b"hi"), 1002),
    ("reserved control opcode 11", client_frame(0xB, b""), 1002),
    ("invalid UTF-8 text", client_frame(0x1, b"ok\xff\xfe"), 1007),
    ("truncated UTF-8 text", client_frame(0x1, b"caf\xc3"), 1007),
    ("UTF-16 surrogate in text", client_frame(0x1, b"\xed\xa0\x80"), 1007),
    ("invalid UTF-8 in a later fragment",
     client_frame(0x1, b"good ", fin=False) + client_frame(0x0, b"\xc0\xaf", fin=True), 1007),
    ("close code 1005", client_frame(0x8, close_payload(1005)), 1002),
    ("close code 1006", client_frame(0x8, close_payload(1006)), 1002),
    ("close code 999", client_frame(0x8, close_payload(999)), 1002),
    ("close code 1004", client_frame(0x8, close_payload(1004)), 1002),
    ("close code 2000", client_frame(0x8, close_payload(2000)), 1002),
    ("close code 5000", client_frame(0x8, close_payload(5000)), 1002),
    ("close with a 1-byte payload", client_frame(0x8, b"\x03"), 1002),
    ("close reason not UTF-8", client_frame(0x8, close_payload(1000, b"\xff")), 1007),
    ("continuation without start", client_frame(0x0, b"orphan"), 1002),
    ("text while a fragmented message is in progress",
     client_frame(0x1, b"part", fin=False) + client_frame(0x1, b"new"), 1002),
    ("binary while a fragmented message is in progress",
     client_frame(0x2, b"part", fin=False) + client_frame(0x2, b"new"), 1002),
    ("message over ws_max_size", client_frame(0x2, b"x" * (BAD_FRAMES_MAX_SIZE + 1)), 1009),
    ("fragmented message over ws_max_size",
     client_frame(0x1, b"x" * 600, fin=False) + client_frame(0x0, b"y" * 600), 1009),
    ("64-bit length with the top bit set", bytes((0x82, 0xFF)) + b"\x80" + b"\0" * 7 + b"mask", 1002),
]


# ------------------------------------------------------------ server thread


class ServerThread:
    """A ProtocolServer on its own event loop in a daemon thread.

    ``with ServerThread(layer, config) as st:`` binds 127.0.0.1 on an
    ephemeral port (``st.port``), and on exit shuts the server down
    (``begin_shutdown``), waits for it, and stops the loop.
    """

    def __init__(self, layer, config, *, host="127.0.0.1", sock=None):
        self.layer = layer
        self.config = config
        self.host = host
        self.sock = sock
        self.loop = None
        self.server = None
        self.thread = None
        self.port = None
        self._ready = threading.Event()
        self._error = None

    def __enter__(self):
        from .server import ProtocolServer

        if self.sock is None:
            sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, 0))
            sock.listen(128)
            self.sock = sock
        self.port = self.sock.getsockname()[1]
        self.server = ProtocolServer(self.layer, self.config, [self.sock])

        def run():
            self.loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self.server.serve())
            except BaseException as exc:  # pragma: no cover - surfaced to the test
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            try:
                self.loop.run_until_complete(self.server.wait_closed())
            finally:
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.close()

        self.thread = threading.Thread(target=run, name="protocol-server", daemon=True)
        self.thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn, *args):
        """Run ``fn(*args)`` on the server's loop and return its result."""
        done = threading.Event()
        box = {}

        def runner():
            try:
                box["value"] = fn(*args)
            except BaseException as exc:
                box["error"] = exc
            done.set()

        self.loop.call_soon_threadsafe(runner)
        if not done.wait(10):
            raise TimeoutError("server loop did not answer")
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def stats(self):
        return self.call(self.server.stats)

    def begin_shutdown(self, ws_close_code=1001):
        self.call(self.server.begin_shutdown, ws_close_code)

    def stop(self, timeout=15):
        if self.thread is None or not self.thread.is_alive():
            return
        try:
            self.call(self.server.begin_shutdown)
        except RuntimeError:  # loop already closed
            pass
        self.thread.join(timeout)
        if self.thread.is_alive():  # pragma: no cover
            raise RuntimeError("protocol server thread did not stop")

    def __exit__(self, *exc):
        self.stop()


# -------------------------------------------------------------- fake workers


class FakeWorker:
    """A worker thread: ``handler(layer, channel, message)`` for every message
    received on ``channels``, until ``stop()``.
    """

    def __init__(self, layer, channels, handler, *, name="fake-worker"):
        self.layer = layer
        self.channels = list(channels)
        self.handler = handler
        self.stopped = threading.Event()
        self.errors = []
        self.handled = 0
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def _run(self):
        layer = self.layer
        while not self.stopped.is_set():
            channel, message = layer.receive(self.channels, block=True)
            if channel is None:
                continue
            try:
                self.handler(layer, channel, message)
            except Exception as exc:  # pragma: no cover - reported by the test
                logging.getLogger("shmchannels.testing").exception("fake worker handler failed")
                self.errors.append(exc)
            self.handled += 1

    def stop(self):
        self.stopped.set()
        self.layer.wake_receivers(self.channels)
        self.thread.join(5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class ServerEnv:
    """Protocol servers and fake workers on one bus ``prefix``, for a test.

    ``server(capacity, **config)`` starts a ServerThread whose layer has the
    server's channel capacities (``capacity`` overrides first: first match
    wins), ``worker(handler, channels)`` a FakeWorker; ``close()`` stops them
    all, fails on any worker's handler errors, and flushes the bus.
    """

    #: shutdown grace of the servers, short: some tests leave work pending
    graceful_timeout = 1.0

    def __init__(self, prefix):
        self.prefix = prefix
        self.servers = []
        self.workers = []

    def layer(self, **capacity):
        from shmchannels import ChannelLayer

        from .config import channel_capacity

        return ChannelLayer(prefix=self.prefix, channel_capacity={**capacity, **channel_capacity()})

    def server(self, capacity=None, **config):
        from .config import ProtocolConfig

        config.setdefault("graceful_timeout", self.graceful_timeout)
        st = ServerThread(self.layer(**(capacity or {})), ProtocolConfig(prefix=self.prefix, **config)).__enter__()
        self.servers.append(st)
        return st

    def worker(self, handler, channels):
        w = FakeWorker(self.layer(), channels, handler).start()
        self.workers.append(w)
        return w

    def close(self):
        from shmchannels import ChannelLayer

        for st in self.servers:
            st.stop()
        for w in self.workers:
            w.stop()
        for w in self.workers:
            assert not w.errors, w.errors
        ChannelLayer(prefix=self.prefix).flush()


class HttpEnv(ServerEnv):
    """A ServerEnv whose workers answer ``http.request`` (with ``echo_http`` unless told)."""

    def worker(self, handler=None, channels=("http.request",)):
        return super().worker(handler or echo_http, channels)


def send_retrying(layer, channel, message, timeout=5.0):
    """Send the way a real worker sends replies (``ChannelLayer.send_waiting``)."""
    return layer.send_waiting(channel, message, timeout)


def echo_http(layer, channel, message):
    """An http.request handler: 200 with a body describing the request."""
    import json

    body = message.get("body", b"")
    if message.get("body_channel"):
        while True:
            _, chunk = layer.receive([message["body_channel"]], block=True)
            if chunk is None:
                continue
            if chunk.get("closed"):
                return
            body += chunk.get("content", b"")
            if not chunk.get("more_content"):
                break
    info = {k: v for k, v in message.items() if k not in ("body", "headers", "query_string", "raw_path")}
    info["query_string"] = message["query_string"].decode("latin-1")
    if "raw_path" in message:
        info["raw_path"] = message["raw_path"].decode("latin-1")
    info["headers"] = [[n.decode("latin-1"), v.decode("latin-1")] for n, v in message["headers"]]
    info["body_length"] = len(body)
    info["body_head"] = body[:64].decode("latin-1")
    send_retrying(layer, message["reply_channel"], {
        "status": 200,
        "headers": [[b"content-type", b"application/json"]],
        "content": json.dumps(info).encode(),
    })


# ------------------------------------------------------------- raw HTTP reads


class RawResponse:
    def __init__(self, status, reason, headers, body, version):
        self.status = status
        self.reason = reason
        self.headers = headers  # [(lower-case name, value)] as str
        self.body = body
        self.version = version

    def header(self, name, default=None):
        for n, v in self.headers:
            if n == name:
                return v
        return default

    def header_list(self, name):
        return [v for n, v in self.headers if n == name]

    def __repr__(self):
        return f"<RawResponse {self.status} {self.headers} {self.body[:80]!r}>"


def read_response(f, method="GET"):
    """Read one response from a socket file (``sock.makefile("rb")``)."""
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed before a response")
    version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
    code, _, reason = rest.partition(" ")
    headers = []
    while True:
        h = f.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        name, _, value = h.decode("latin-1").partition(":")
        headers.append((name.strip().lower(), value.strip()))
    status = int(code)
    resp = RawResponse(status, reason, headers, b"", version)
    if method == "HEAD" or status < 200 or status in (204, 304):
        return resp
    te = resp.header("transfer-encoding")
    if te and "chunked" in te.lower():
        body = b""
        while True:
            size = int(f.readline().split(b";")[0].strip(), 16)
            if size == 0:
                while f.readline() not in (b"\r\n", b""):
                    pass
                break
            body += f.read(size)
            f.readline()
        resp.body = body
    elif resp.header("content-length") is not None:
        resp.body = f.read(int(resp.header("content-length")))
    else:
        resp.body = f.read()
    return resp


def raw_connection(port, host="127.0.0.1", timeout=5.0):
    sock = socket.create_connection((host, port), timeout=timeout)
    return sock, sock.makefile("rb")


def ws_handshake(port, path="/ws", *, host="127.0.0.1", extra=b"", timeout=5.0, key=b"dGhlIHNhbXBsZSBub25jZQ=="):
    """Open a raw WebSocket: (socket, 101 RawResponse).  Fails unless 101."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.sendall(
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed during the handshake: {head!r}")
        head += chunk
    head, _, rest = head.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = [(n.strip().lower(), v.strip()) for n, _, v in (l.partition(":") for l in lines[1:])]
    resp = RawResponse(status, lines[0], headers, rest, "HTTP/1.1")
    return sock, resp


def read_frames_until_close(sock, initial=b"", timeout=5.0):
    """Every server frame until a close frame (or EOF): [(fin, opcode, payload)]."""
    deadline = time.monotonic() + timeout
    data = initial
    frames = []
    while True:
        got, data = parse_server_frames(data)
        frames += got
        if any(op == 0x8 for _, op, _ in frames):
            return frames
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no close frame; got {frames}")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            return frames
        data += chunk
