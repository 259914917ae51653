"""WebSocket clients that never read, against a Channels-1 consumer under
`shmchannels serve` (issue 10, "Backpressure and limits"): a client whose
write buffer is over its high-water mark is not read any more, so a flood of
its own (messages, pings) stops at its socket and the protocol server stays
flat; what groups keep sending to it is written until ``ws_write_limit``,
then it is closed with 1008.  Clients that read are not held up."""

import asyncio
import socket
import struct
import time

import pytest
import websockets

from serving import rss_anon, serving

pytestmark = pytest.mark.slow

#: --capacity: 100 flooders keep one message each in websocket.receive, and
#: at the default capacity (100) the reader's would be refused with 1013
ROUTING = ["--routing", "room1_http:routes", "--capacity", "1000"]
FLOODERS = 100
#: how much the protocol server's own memory (RssAnon: the bus's shared
#: pages are not its own) may still grow once 100 clients that are no longer
#: read keep sending: before the fix it grew with the flood (one client's echo
#: flood reached 2.06 GiB in 10 s, one client's pings 774 MiB in 8 s)
FLAT = 16 << 20
HANDSHAKE = (b"GET /ws/%s/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def client_frame(opcode, payload):
    """A masked frame (mask key 0: the payload goes as is)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


def open_raw(port, room):
    """A handshaken WebSocket on a plain socket that will read nothing more."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
    sock.sendall(HANDSHAKE % room.encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


class Flood:
    """Sends ``frame`` over and over on every socket without reading.  A send
    that would block is skipped, and a partial one is resumed where it
    stopped, also by the next ``run``: the stream must stay whole frames."""

    def __init__(self, socks, frame):
        self.socks = socks
        for s in socks:
            s.setblocking(False)
        self.burst = memoryview(frame * max(1, (64 << 10) // len(frame)))
        self.offset = [0] * len(socks)

    def run(self, seconds, until_stuck=None):
        """For ``seconds`` (or, given ``until_stuck``, until no socket has
        taken anything for that many seconds); returns the bytes each socket
        got out."""
        sent = [0] * len(self.socks)
        deadline = time.monotonic() + seconds
        last_move = time.monotonic()
        while time.monotonic() < deadline:
            if until_stuck is not None and time.monotonic() - last_move > until_stuck:
                break
            moved = False
            for i, s in enumerate(self.socks):
                try:
                    n = s.send(self.burst[self.offset[i]:])
                except BlockingIOError:
                    continue
                sent[i] += n
                self.offset[i] = (self.offset[i] + n) % len(self.burst)
                moved = True
                last_move = time.monotonic()
            if not moved:
                time.sleep(0.01)  # every socket is full: the server stopped reading them all
        return sent


async def echo_round_trip(port):
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/reader/") as ws:
        started = time.monotonic()
        await ws.send("still there?")
        assert await asyncio.wait_for(ws.recv(), 10) == "still there?"
        return time.monotonic() - started


@pytest.mark.parametrize("kind, clients", [
    # one client's echoes come as fast as the worker answers: 111 MiB read in
    # 8 s before the fix; with 100, the worker is the bottleneck of the echoes,
    # while pings are answered by the protocol server alone
    ("messages", 1), ("messages", FLOODERS), ("pings", FLOODERS),
])
def test_clients_that_flood_and_never_read_leave_the_protocol_server_flat(prefix, kind, clients):
    with serving(prefix, ROUTING, workers=1) as s:
        protocol = s.pids("protocol")[0]
        socks = [open_raw(s.port, f"flood{i}") for i in range(clients)]
        frame = client_frame(0x1, b"x" * 1024) if kind == "messages" else client_frame(0x9, b"p" * 100)
        flooding = Flood(socks, frame)
        # The kernel's socket buffers (slow on a loaded box).  Stuck means 2 s
        # without a byte taken: with 0.5 s, one CI run called 100 sockets
        # stuck before they were full (a socket takes ~6 MiB here), and each
        # took 2 MiB more in the timed run below (0 on a quiet box).
        filled = flooding.run(90.0, until_stuck=2.0)
        assert min(filled) > 0
        settled = rss_anon(protocol)
        sent = flooding.run(5.0)
        grown = rss_anon(protocol) - settled
        # a reader is answered meanwhile, through the same protocol server and worker
        took = asyncio.run(echo_round_trip(s.port))
        for sock in socks:
            sock.close()
    assert grown < FLAT, f"the protocol server grew by {grown >> 20} MiB for {clients} clients that do not read"
    # nothing more of theirs was read (before the fix: 8-100 MiB each)
    assert max(sent) < 2 << 20, f"a client got {max(sent) >> 20} MiB of {kind} in after its buffers were full"
    assert took < 5, f"a reading client waited {took:.1f} s for its echo"


def test_a_room_member_that_does_not_read_is_closed_past_ws_write_limit_and_the_others_get_everything(prefix):
    limit = 1 << 20
    message = "m" * (64 << 10)
    count = 256  # 16 MiB to each member: 16x the limit
    with serving(prefix, [*ROUTING, "--ws-write-limit", str(limit)], workers=1) as s:
        protocol = s.pids("protocol")[0]
        stuck = open_raw(s.port, "big")
        before = rss_anon(protocol)

        async def scenario():
            async with websockets.connect(f"ws://127.0.0.1:{s.port}/ws/big/", max_size=None) as reader, \
                    websockets.connect(f"ws://127.0.0.1:{s.port}/ws/big/", max_size=None) as sender:
                got = []

                async def read_all():
                    while len(got) < count:
                        got.append(await asyncio.wait_for(reader.recv(), 20))

                reading = asyncio.create_task(read_all())
                for i in range(count):
                    await sender.send(f"{i}|" + message)
                    await asyncio.wait_for(sender.recv(), 20)  # the sender's own copy: one at a time
                await asyncio.wait_for(reading, 20)
                return got

        got = asyncio.run(scenario())
        grown = rss_anon(protocol) - before

        # the member that does not read was dropped: draining its socket
        # ends (before the fix it stayed open, holding all 16 MiB)
        stuck.settimeout(20)
        unread = b""
        try:
            while chunk := stuck.recv(1 << 20):
                unread += chunk
        except ConnectionResetError:
            pass
        stuck.close()
    assert [g.split("|", 1)[0] for g in got] == [str(i) for i in range(count)]
    # what it got: the kernel's buffers and at most the limit, then the close
    assert len(unread) < limit + (6 << 20), f"{len(unread) >> 20} MiB reached the client that did not read"
    assert grown < FLAT, f"the protocol server grew by {grown >> 20} MiB"
