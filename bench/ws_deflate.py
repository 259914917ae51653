"""Does permessage-deflate stall the protocol server's event loop?

One asyncio loop, the real codec (``FrameCodec`` with a negotiated
``ws_deflate.Deflate``), no sockets: 1000 small compressed echoes (decode a
60-byte JSON message, compress the reply), one every 0.5 ms, each timed from
when it was due to when its reply was built; meanwhile, optionally, one
16 MiB compressed message arrives in 256 KiB reads on another connection
(inflated in slices as WebSocketProtocol does: the codec's resume callback
schedules the next slice with call_soon), or one 1 MiB reply is compressed.

    .venv/bin/python bench/ws_deflate.py
"""

import asyncio
import functools
import json
import os
import random
import statistics
import sys
import time
import zlib

# bench/http.py would shadow the stdlib's http
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

from shmchannels.server import websocket as ws  # noqa: E402
from shmchannels.server import ws_deflate  # noqa: E402
from shmchannels.server.config import ProtocolConfig  # noqa: E402
from shmchannels.server.testing import client_frame  # noqa: E402

OFFER = [(b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits")]


def codec(max_size, resume=None, slice_size=None):
    cls = ws.FrameCodec if slice_size is None else type("Sliced", (ws.FrameCodec,), {"inflate_slice": slice_size})
    return cls(max_size, ws_deflate.negotiate(ProtocolConfig(), OFFER), resume)


def compress(data, bits=12):
    c = zlib.compressobj(wbits=-bits)
    return (c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH))[:-4]


@functools.lru_cache(None)
def big_stream():
    return client_frame(0x2, compress(payload(16 << 20)), rsv=4)


@functools.lru_cache(None)
def payload(n):
    random.seed(1)
    recs = [{"id": i, "user": f"user{random.randrange(10000)}",
             "text": "".join(random.choice("abcdefghij klmnop") for _ in range(40))} for i in range(n // 60)]
    return json.dumps(recs).encode()[:n]


async def run(big, slice_size):
    loop = asyncio.get_running_loop()
    small = codec(1 << 20)
    client = zlib.compressobj(wbits=-12)
    msg = b'{"type": "chat", "user": "alice", "text": "hello there, how are you?"}'
    frames = []
    for _ in range(1000):
        z = client.compress(msg) + client.flush(zlib.Z_SYNC_FLUSH)
        frames.append(client_frame(0x1, z[:-4], rsv=4))
    lat = []
    done = asyncio.Event()

    def echo(i, due):
        for kind, text in small.receive_data(frames[i]):
            small.send_text(text)
        lat.append(time.perf_counter() - due)
        if i + 1 < len(frames):
            due = time.perf_counter() + 0.0005
            loop.call_at(loop.time() + 0.0005, echo, i + 1, due)
        else:
            done.set()

    loop.call_soon(echo, 0, time.perf_counter())
    if big == "inflate":
        await asyncio.sleep(0.05)
        state = {}

        def resume():
            loop.call_soon(feed, b"")

        c = codec(16 << 20, resume, slice_size)
        stream = big_stream()
        reads = [stream[i:i + (256 << 10)] for i in range(0, len(stream), 256 << 10)]

        def feed(data):
            events = c.receive_data(data)
            if events:
                state["done"] = time.perf_counter()
            if c.inflate_rest is None and reads:
                loop.call_soon(feed, reads.pop(0))

        state["start"] = time.perf_counter()
        feed(reads.pop(0))
    elif big == "deflate":
        await asyncio.sleep(0.05)
        out = codec(16 << 20)
        data = payload(1 << 20).decode()
        t0 = time.perf_counter()
        out.send_text(data)
        print(f"    compressing 1 MiB took {(time.perf_counter() - t0) * 1e3:.1f} ms")
    await done.wait()
    lat.sort()
    return lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3, lat[-1] * 1e3


def main():
    rows = [("small echoes alone", None, 0), ("+ 16 MiB inflated in 256 KiB slices", "inflate", 256 << 10),
            ("+ 16 MiB inflated in one go", "inflate", 1 << 30), ("+ one 1 MiB reply compressed", "deflate", 0)]
    for name, big, sl in rows:
        runs = [asyncio.run(run(big, sl)) for _ in range(3)]
        p50 = statistics.median(r[0] for r in runs)
        p99 = statistics.median(r[1] for r in runs)
        mx = statistics.median(r[2] for r in runs)
        print(f"{name:40s} p50 {p50:6.3f} ms  p99 {p99:7.3f} ms  max {mx:7.2f} ms (medians of 3 runs)")


if __name__ == "__main__":
    main()
