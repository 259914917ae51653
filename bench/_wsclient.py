"""WebSocket client processes of bench/websocket.py (RFC 6455 by hand, no library).

A library client (``websockets``) costs tens of µs per message in the
client; these clients keep that out of the numbers as far as Python allows:

* ``echo_main``: one blocking socket, pre-built masked frames, sequential
  round trips timed with ``perf_counter_ns`` (nothing else runs in the
  process);
* ``bcast_main``: N connections in one asyncio loop (uvloop when installed),
  one ``asyncio.Protocol`` each that parses frames in ``data_received`` and
  stamps ``time.monotonic_ns()`` (CLOCK_MONOTONIC, comparable across
  processes) when a broadcast reaches it.

Both are driven by the parent over a multiprocessing Pipe: ``(command,
payload)`` in, ``(tag, payload)`` out, ``("error", text)`` on failure.
"""

import asyncio
import base64
import hashlib
import os
import socket
import struct
import time
import traceback

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10


def mask_bytes(payload, mask):
    if not payload:
        return payload
    n = len(payload)
    m = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ m).to_bytes(n, "big")


def client_frame(opcode, payload, mask=None):
    """A masked client frame (FIN set)."""
    mask = mask or os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + mask_bytes(payload, mask)


def handshake_request(port, path):
    key = base64.b64encode(os.urandom(16))
    req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    return req, accept


class HandshakeRefused(RuntimeError):
    def __init__(self, status_line, body=b""):
        super().__init__(f"handshake refused: {status_line!r} {body[:120]!r}")
        self.status = int(status_line.split()[1]) if len(status_line.split()) > 1 and status_line.split()[1].isdigit() else 0


def check_response(head, accept, body=b""):
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 101"):
        raise HandshakeRefused(lines[0], body)
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "sec-websocket-accept" and v.strip().encode() != accept:
            raise RuntimeError("bad Sec-WebSocket-Accept")


class FrameParser:
    """Unmasked server frames -> [(opcode, payload)] (continuations joined)."""

    __slots__ = ("buf", "frag_op", "frag")

    def __init__(self):
        self.buf = b""
        self.frag_op = None
        self.frag = []

    def feed(self, data):
        buf = self.buf + data if self.buf else data
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            hl = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = struct.unpack_from("!H", buf, pos + 2)[0]
                hl = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = struct.unpack_from("!Q", buf, pos + 2)[0]
                hl = 10
            if b1 & 0x80:
                raise RuntimeError("masked frame from the server")
            if end - pos < hl + n:
                break
            payload = buf[pos + hl:pos + hl + n]
            pos += hl + n
            op = b0 & 0x0F
            fin = b0 & 0x80
            if op == 0:
                self.frag.append(payload)
                if fin:
                    out.append((self.frag_op, b"".join(self.frag)))
                    self.frag_op, self.frag = None, []
            elif not fin and op in (TEXT, BINARY):
                self.frag_op, self.frag = op, [payload]
            else:
                out.append((op, payload))
        self.buf = buf[pos:]
        return out


def _result(conn, tag, payload=None):
    conn.send((tag, payload))


# ------------------------------------------------------------------- echo


def echo_main(conn, cfg):
    try:
        _echo(conn, cfg)
    except Exception:
        _result(conn, "error", f"echo client: {traceback.format_exc()}")


def _echo(conn, cfg):
    port, path = cfg["port"], cfg["path"]
    size, warm, m, timeout = cfg["size"], cfg["warm"], cfg["m"], cfg["timeout"]
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req, accept = handshake_request(port, path)
    sock.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed during the handshake")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    check_response(head, accept)
    parser = FrameParser()
    pending = parser.feed(rest) if rest else []
    recv = sock.recv
    send = sock.sendall
    perf = time.perf_counter_ns
    lat = []
    fill = "x" * size
    for i in range(warm + m):
        text = (f"{i:08d}" + fill)[:size]
        frame = client_frame(TEXT, text.encode())
        want = text.encode()
        t0 = perf()
        send(frame)
        while True:
            if not pending:
                data = recv(65536)
                if not data:
                    raise RuntimeError(f"connection closed after {i} round trips")
                pending = parser.feed(data)
                continue
            op, payload = pending.pop(0)
            if op == TEXT:
                break
            if op == PING:
                send(client_frame(PONG, payload))
            elif op == CLOSE:
                raise RuntimeError(f"server closed the connection after {i} round trips: {payload[:2].hex()}")
        t1 = perf()
        if payload != want:
            raise RuntimeError(f"round trip {i}: sent {want[:20]!r}..., got {payload[:20]!r}...")
        if i >= warm:
            lat.append(t1 - t0)
    try:
        sock.sendall(client_frame(CLOSE, struct.pack("!H", 1000)))
        sock.settimeout(2)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and sock.recv(65536):
            pass
    except OSError:
        pass
    sock.close()
    _result(conn, "result", {"lat_ns": lat})


# -------------------------------------------------------------- broadcast


class _State:
    def __init__(self, n):
        self.n = n
        self.reps = {}  # rep -> [count, t_first, t_last]
        self.waiters = {}  # rep -> Future
        self.closed = 0
        self.errors = []


class BcastProtocol(asyncio.Protocol):
    def __init__(self, state, port, path):
        self.state = state
        self.parser = FrameParser()
        self.transport = None
        self.req, self.accept = handshake_request(port, path)
        self.handshake = asyncio.get_running_loop().create_future()
        self.head = b""
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(self.req)

    def data_received(self, data):
        if not self.handshake.done():
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, _, data = self.head.partition(b"\r\n\r\n")
            try:
                check_response(head, self.accept, data)
            except Exception as exc:
                self.handshake.set_exception(exc)
                return
            self.handshake.set_result(True)
            if not data:
                return
        for op, payload in self.parser.feed(data):
            if op == TEXT:
                t = time.monotonic_ns()
                rep = int(payload[1:payload.index(b"|")])
                st = self.state
                r = st.reps.get(rep)
                if r is None:
                    r = st.reps[rep] = [0, t, t]
                r[0] += 1
                r[2] = t
                if r[0] == st.n:
                    fut = st.waiters.pop(rep, None)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
            elif op == PING:
                self.transport.write(client_frame(PONG, payload))
            elif op == CLOSE:
                if not self.closed.done():
                    self.closed.set_result(payload[:2])
                self.transport.close()

    def connection_lost(self, exc):
        if not self.handshake.done():
            self.handshake.set_exception(ConnectionError("connection lost during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    def send_text(self, text):
        self.transport.write(client_frame(TEXT, text.encode()))


def bcast_main(conn, cfg):
    try:
        try:
            import uvloop

            uvloop.install()
            loop_name = "uvloop"
        except ImportError:
            loop_name = "asyncio"
        asyncio.run(_bcast(conn, cfg, loop_name))
    except Exception:
        _result(conn, "error", f"broadcast client {cfg.get('index')}: {traceback.format_exc()}")


async def _bcast(conn, cfg, loop_name):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = cfg["n"] + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), hard), hard))
    loop = asyncio.get_running_loop()
    n, port, path = cfg["n"], cfg["port"], cfg["path"]
    state = _State(n)
    sem = asyncio.Semaphore(cfg.get("connect_concurrency", 20))
    protos = []

    refusals = []  # (status, body) of handshakes the server refused (then retried)

    async def connect_one():
        async with sem:
            for attempt in range(5):
                try:
                    _t, proto = await loop.create_connection(lambda: BcastProtocol(state, port, path),
                                                             "127.0.0.1", port)
                    await asyncio.wait_for(proto.handshake, cfg["timeout"])
                    protos.append(proto)
                    return attempt
                except HandshakeRefused as exc:
                    # A 503 is the server refusing for load; counted and reported, then retried.
                    if exc.status != 503 or attempt == 4:
                        raise
                    refusals.append(str(exc))
                    await asyncio.sleep(0.05 * (attempt + 1))
                except (ConnectionError, OSError):
                    if attempt == 4:
                        raise
                    await asyncio.sleep(0.1 * (attempt + 1))

    t0 = time.monotonic()
    retries = await asyncio.wait_for(asyncio.gather(*(connect_one() for _ in range(n))), cfg["timeout"] * 4)
    _result(conn, "ready", {"connect_s": time.monotonic() - t0, "retries": sum(retries), "loop": loop_name,
                            "refused": len(refusals), "refusal": refusals[0] if refusals else None})

    queue = asyncio.Queue()

    def on_cmd():
        try:
            while conn.poll():
                queue.put_nowait(conn.recv())
        except (EOFError, OSError):
            queue.put_nowait(("exit", None))

    loop.add_reader(conn.fileno(), on_cmd)
    pad = "x" * cfg["size"]
    while True:
        cmd, payload = await queue.get()
        if cmd == "go":
            rep, sender = payload["rep"], payload["sender"]
            fut = loop.create_future()
            state.waiters[rep] = fut
            r = state.reps.get(rep)
            if r is not None and r[0] >= n:  # (cannot happen before the send, but be safe)
                fut.set_result(None)
            t_send = None
            if sender:
                text = (f"r{rep}|" + pad)[:max(cfg["size"], len(f"r{rep}|"))]
                frame = client_frame(TEXT, text.encode())
                t_send = time.monotonic_ns()
                protos[0].transport.write(frame)
                _result(conn, "sent", {"t0": t_send})
            try:
                await asyncio.wait_for(fut, payload["timeout"])
            except asyncio.TimeoutError:
                pass
            r = state.reps.get(rep, [0, None, None])
            _result(conn, "done", {"count": r[0], "t_first": r[1], "t_last": r[2]})
            state.reps.pop(rep - 5, None)
        elif cmd == "exit":
            loop.remove_reader(conn.fileno())
            close = client_frame(CLOSE, struct.pack("!H", 1000))
            for p in protos:
                if not p.transport.is_closing():
                    p.transport.write(close)
            waits = [p.closed for p in protos]
            if waits:
                await asyncio.wait(waits, timeout=5)
            for p in protos:
                p.transport.close()
            unclosed = sum(1 for p in protos if not p.closed.done())
            _result(conn, "bye", {"unclosed": unclosed})
            return
