"""``python -m shmchannels.server`` as a real process: memory under a large
upload, signals, and a clean bus afterwards."""

import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

import shmchannels
from shmchannels.server import channel_capacity
from shmchannels.server.testing import FakeWorker, send_retrying

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


class ServerProcess:
    def __init__(self, prefix, *args):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shmchannels.server", "--bind", "127.0.0.1:0", "--prefix", prefix,
             "--log-level", "info", *args],
            stderr=subprocess.PIPE, text=True,
        )
        self.lines = []
        self.port = None
        listening = threading.Event()

        def pump():
            for line in self.proc.stderr:
                self.lines.append(line)
                m = re.search(r"Listening on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    listening.set()

        self.reader = threading.Thread(target=pump, daemon=True)
        self.reader.start()
        if not listening.wait(15):
            self.proc.kill()
            raise RuntimeError("server did not start: " + "".join(self.lines))

    def status(self, field):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(field)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.reader.join(5)


@pytest.fixture
def harness(prefix):
    started, workers = [], []

    class H:
        def server(self, *args):
            sp = ServerProcess(prefix, *args)
            started.append(sp)
            return sp

        def worker(self, handler, channels):
            layer = shmchannels.ChannelLayer(prefix=prefix, channel_capacity=channel_capacity())
            w = FakeWorker(layer, channels, handler).start()
            workers.append(w)
            return w

    yield H()
    for sp in started:
        sp.stop()
    for w in workers:
        w.stop()
    for w in workers:
        assert not w.errors, w.errors
    shmchannels.ChannelLayer(prefix=prefix).flush()


def test_50_mib_upload_keeps_server_memory_bounded(harness):
    total = 50 * 1024 * 1024
    sp = harness.server()
    got = {}

    def slow_worker(layer, channel, message):
        time.sleep(1.0)  # the client could push everything into the server meanwhile, were it not paused
        size = len(message["body"])
        while True:
            _, chunk = layer.receive([message["body_channel"]], block=True)
            assert chunk is not None, "body chunk did not arrive"
            size += len(chunk["content"])
            if not chunk["more_content"]:
                break
        got["size"] = size
        send_retrying(layer, message["reply_channel"], {"status": 200, "content": b"%d" % size})

    harness.worker(slow_worker, ["http.request"])
    baseline = sp.status("VmRSS")

    def body():
        piece = b"u" * (1024 * 1024)
        for _ in range(total // len(piece)):
            yield piece

    t0 = time.monotonic()
    r = httpx.post(f"http://127.0.0.1:{sp.port}/upload", content=body(), timeout=60)
    elapsed = time.monotonic() - t0
    assert r.status_code == 200 and r.content == str(total).encode()
    assert got["size"] == total
    peak = sp.status("VmHWM")
    growth = peak - baseline
    print(f"50 MiB upload in {elapsed:.2f}s; server RSS {baseline >> 20} MiB -> peak {peak >> 20} MiB")
    # without flow control this grows by ~65 MiB (measured); with it by ~10 MiB
    assert growth < 32 * 1024 * 1024, f"server RSS grew by {growth >> 20} MiB"


def test_sigterm_finishes_http_closes_websockets_1001_and_leaves_a_clean_bus(harness, prefix):
    sp = harness.server("--graceful-timeout", "10")
    release = threading.Event()
    disconnects = []

    def handler(layer, channel, message):
        rc = message["reply_channel"]
        if channel == "http.request":
            release.wait(10)
            send_retrying(layer, rc, {"status": 200, "content": b"done"})
        elif channel == "websocket.connect":
            send_retrying(layer, rc, {"accept": True})
            send_retrying(layer, rc, {"__ack__": 0})
        elif channel == "websocket.disconnect":
            disconnects.append(message["code"])

    harness.worker(handler, ["http.request", "websocket.connect", "websocket.disconnect"])
    result = {}

    def slow_request():
        result["r"] = httpx.get(f"http://127.0.0.1:{sp.port}/slow", timeout=20)

    with connect(f"ws://127.0.0.1:{sp.port}/ws") as ws:
        t = threading.Thread(target=slow_request)
        t.start()
        time.sleep(0.3)
        sp.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd.code == 1001
    assert sp.proc.poll() is None  # still finishing the HTTP request
    release.set()
    t.join(10)
    assert result["r"].status_code == 200 and result["r"].text == "done"
    assert sp.proc.wait(10) == 0
    deadline = time.monotonic() + 5
    while not disconnects and time.monotonic() < deadline:
        time.sleep(0.01)
    assert disconnects == [1001]


def test_sigusr2_closes_websockets_with_1012(harness):
    sp = harness.server()

    def handler(layer, channel, message):
        if channel == "websocket.connect":
            send_retrying(layer, message["reply_channel"], {"accept": True, "__ack__": 0})

    harness.worker(handler, ["websocket.connect"])
    with connect(f"ws://127.0.0.1:{sp.port}/ws") as ws:
        sp.proc.send_signal(signal.SIGUSR2)
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd.code == 1012
    assert sp.proc.wait(10) == 0
