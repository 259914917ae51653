"""The floor of a two-process HTTP server: what a request that crosses a
protocol server and a worker, the design of ``shmchannels serve``, costs at
least on this box.

    .venv/bin/python bench/_http_floor.py --bind 127.0.0.1:8000

Not a server anyone should use; bench/http.py runs it beside uvicorn and
``shmchannels serve`` (variant ``floor-2proc``).  It does only the work that
such a design cannot skip:

* the protocol server (this process, on uvloop when it is installed, as
  serve's protocol servers and uvicorn are; bench/http.py reports the loop)
  parses with httptools, encodes each complete request with
  msgpack and writes all the requests of one loop iteration to a pipe in one
  ``write()``;
* the worker (a forked child) blocks in ``read()``, answers every request it
  read with the hello-world reply (status, headers, body) and writes all the
  replies in one ``write()``;
* the protocol server reads them with ``add_reader`` and writes each
  response to its connection.

A pipe costs a system call per batch, where serve's rings cost none while
the reader is busy; serve's wake-ups cost the same kernel wake of a parked
process.  There is nothing else: no routing, channel names, expiry,
capacity, timeouts, backpressure, crash safety, metrics, access log or Date
header.  Both pipes stay far below their 64 KiB (a request is ~100 bytes, a
reply ~50, wrk keeps at most its connection count in flight), so the
blocking writes never wait.
"""

import argparse
import asyncio
import os
import socket

import httptools
import msgpack

try:
    import uvloop
except ImportError:  # the bench extra installs it; the tests may run without
    uvloop = None

HELLO = (200, [(b"content-type", b"text/plain")], b"Hello, world!")
REASONS = {200: b"OK"}


def worker(requests_fd, replies_fd):
    unpacker = msgpack.Unpacker()
    packb = msgpack.packb
    status, headers, body = HELLO
    while True:
        data = os.read(requests_fd, 1 << 16)
        if not data:  # the protocol server is gone
            os._exit(0)
        unpacker.feed(data)
        replies = [packb((rid, status, headers, body)) for rid, _method, _url, _headers in unpacker]
        if replies:
            os.write(replies_fd, b"".join(replies))


class Connection(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport = None
        self.closed = False
        self.url = None
        self.headers = []

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.closed = True

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url):
        self.url = url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_message_complete(self):
        parser = self.parser
        self.server.submit(self, parser.get_method(), self.url, self.headers, parser.should_keep_alive())
        self.url = None
        self.headers = []


class ProtocolServer:
    def __init__(self, loop, requests_fd, replies_fd):
        self.loop = loop
        self.requests_fd = requests_fd
        self.replies_fd = replies_fd
        self.unpacker = msgpack.Unpacker()
        self.waiting = {}  # request id -> (connection, keep alive?)
        self.pending = []  # encoded requests of this loop iteration
        self.next_id = 0
        self.stopped = loop.create_future()
        loop.add_reader(replies_fd, self.on_replies)

    def submit(self, conn, method, url, headers, keep_alive):
        self.next_id += 1
        self.waiting[self.next_id] = (conn, keep_alive)
        if not self.pending:
            self.loop.call_soon(self.flush)
        self.pending.append(msgpack.packb((self.next_id, method, url, headers)))

    def flush(self):
        os.write(self.requests_fd, b"".join(self.pending))
        self.pending.clear()

    def on_replies(self):
        data = os.read(self.replies_fd, 1 << 16)
        if not data:  # the worker is gone
            self.loop.remove_reader(self.replies_fd)
            if not self.stopped.done():
                self.stopped.set_result(None)
            return
        self.unpacker.feed(data)
        for rid, status, headers, body in self.unpacker:
            conn, keep_alive = self.waiting.pop(rid)
            if conn.closed:
                continue
            head = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, b"Unknown"))]
            head += [b"%s: %s\r\n" % (name, value) for name, value in headers]
            if not keep_alive:
                head.append(b"connection: close\r\n")
            head.append(b"content-length: %d\r\n\r\n" % len(body))
            conn.transport.write(b"".join(head) + body)
            if not keep_alive:
                conn.transport.close()


async def serve(sock, requests_fd, replies_fd):
    loop = asyncio.get_running_loop()
    server = ProtocolServer(loop, requests_fd, replies_fd)
    listener = await loop.create_server(lambda: Connection(server), sock=sock, backlog=2048)
    async with listener:
        await server.stopped


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bind", required=True, help="HOST:PORT")
    args = parser.parse_args(argv)
    host, port = args.bind.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(2048)
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    if os.fork() == 0:
        sock.close()
        os.close(requests_w)
        os.close(replies_r)
        worker(requests_r, replies_w)
    os.close(requests_r)
    os.close(replies_w)
    # SIGTERM ends this process the default way; the worker then reads EOF and exits.
    (uvloop.run if uvloop is not None else asyncio.run)(serve(sock, requests_w, replies_r))


if __name__ == "__main__":
    main()
