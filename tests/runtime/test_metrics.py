"""Metrics and health of a real `shmchannels serve --metrics` (faultapp: 1
protocol server, 2 workers), of `shmchannels metrics` on a bus without a
master, and `shmchannels status --watch`: values, not just presence, read
over real HTTP, checked by Prometheus's own `promtool`."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import shmchannels
from shmchannels.bus import segments
from serving import serving, wait_for

pytestmark = pytest.mark.slow

FAULT = ["--routing", "faultapp:routes", "--metrics", "127.0.0.1:0"]


def metrics_port(served):
    m = wait_for(lambda: re.search(r"Metrics on http://127\.0\.0\.1:(\d+)/metrics", served.output()),
                 what="the metrics port")
    return int(m.group(1))


def scrape(port, path="/metrics"):
    return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5.0)


def samples(text):
    """{(name, frozenset(labels)): value} of an exposition."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(text, name, **labels):
    return samples(text).get((name, frozenset(labels.items())), 0.0)


def promtool_check(text):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) is not installed")
    out = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


def test_serve_metrics_count_requests_refusals_and_a_restart(prefix):
    with serving(prefix, FAULT) as s:
        port = metrics_port(s)
        before = scrape(port).text
        n = 25
        for _ in range(n):
            assert httpx.get(f"http://127.0.0.1:{s.port}/", timeout=5).status_code == 200
        for _ in range(3):
            assert httpx.get(f"http://127.0.0.1:{s.port}/raise", timeout=5).status_code == 500
        # M refusals: a channel nobody reads, capacity 5, 5 + 7 sends
        layer = shmchannels.ChannelLayer(prefix=prefix, capacity=5)
        refused = 0
        for i in range(12):
            try:
                layer.send("metrics.nobody", {"i": i})
            except layer.ChannelFull:
                refused += 1
        assert refused == 7
        time.sleep(1.2)  # the protocol server sets its open-connection gauges on its 1 s tick
        after = scrape(port)
        assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
        text = after.text
        promtool_check(text)

        def delta(name, **labels):
            return value(text, name, **labels) - value(before, name, **labels)

        assert delta("shmchannels_http_responses_total", status_class="2xx") == n
        assert delta("shmchannels_http_responses_total", status_class="5xx") == 3
        assert delta("shmchannels_channel_messages_sent_total", channel="http.request", owner_kind="") == n + 3
        assert delta("shmchannels_channel_messages_received_total", channel="http.request", owner_kind="") == n + 3
        assert delta("shmchannels_consumer_messages_total") == n + 3
        assert delta("shmchannels_consumer_exceptions_total", channel="http.request") == 3
        assert delta("shmchannels_consumer_duration_seconds_count", channel="http.request") == n + 3
        assert delta("shmchannels_http_response_latency_seconds_count") == n + 3
        assert value(text, "shmchannels_channel_full_total", channel="metrics.nobody", owner_kind="") == 7
        assert value(text, "shmchannels_channel_messages_pending", channel="metrics.nobody", owner_kind="") == 5
        assert value(text, "shmchannels_channel_messages_sent_total", channel="metrics.nobody", owner_kind="") == 5
        assert value(text, "shmchannels_processes", kind="worker") == 2
        assert value(text, "shmchannels_processes", kind="protocol") == 1
        assert value(text, "shmchannels_http_connections_open") == 0
        # the protocol channels of the protocol server are aggregated per owner kind, not one series each
        assert value(text, "shmchannels_channel_messages_sent_total", channel="http.response.*!",
                     owner_kind="protocol") >= n + 3
        labels = {dict(k[1]).get("channel", "") for k in samples(text)}
        assert not [c for c in labels if re.search(r"shm[0-9a-f]{10}", c)], labels
        layer.flush()

        # one worker SIGKILLed: one restart (a crash), and the counters it had do not leave the totals
        handled = value(text, "shmchannels_consumer_messages_total")
        victim = s.pids("worker")[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: victim not in s.pids("worker") and len(s.pids("worker")) == 2, what="a new worker")
        wait_for(lambda: value(scrape(port).text, "shmchannels_restarts_total", kind="worker", cause="crash") == 1,
                 what="the restart counted")
        text = scrape(port).text
        assert value(text, "shmchannels_consumer_messages_total") == handled
        assert sum(value(text, "shmchannels_restarts_total", kind=k, cause=c)
                   for k in ("worker", "protocol") for c in ("exit", "timeout", "crash", "max_requests")) == 1

        # health: the master's loop is alive; ready until every worker is stopped
        health = scrape(port, "/healthz")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert scrape(port, "/readyz").status_code == 200
        workers = s.pids("worker")
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            ready = wait_for(lambda: (r := scrape(port, "/readyz")).status_code == 503 and r, timeout=15,
                             what="/readyz 503")
            assert "no worker alive and heartbeating" in " ".join(ready.json()["reasons"])
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        wait_for(lambda: scrape(port, "/readyz").status_code == 200, timeout=15, what="/readyz 200 again")
        assert scrape(port, "/nothing").status_code == 404


def test_metrics_that_cannot_bind_stop_serve_before_anything_starts(prefix):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "shmchannels", "serve", "--prefix", prefix, "--bind", "127.0.0.1:0",
             "--metrics", f"127.0.0.1:{taken.getsockname()[1]}"],
            capture_output=True, text=True, timeout=60,
        )
    finally:
        taken.close()
    assert out.returncode == 1, out.stderr
    assert "Error: cannot serve metrics on '127.0.0.1:" in out.stderr and "Address already in use" in out.stderr
    assert "Booting" not in out.stderr
    assert segments.bus_files(segments.bus_stem(prefix)) == []


def test_metrics_command_serves_any_bus_and_status_watch_redraws(prefix):
    # a bus with no master: this process's layer, as a uvicorn or daphne process would have it
    layer = shmchannels.ChannelLayer(prefix=prefix, capacity=3)
    for i in range(5):
        try:
            layer.send("plain.channel", {"i": i})
        except layer.ChannelFull:
            pass
    proc = subprocess.Popen([sys.executable, "-m", "shmchannels", "metrics", "--prefix", prefix, "--listen", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line).group(1))
        text = scrape(port).text
        promtool_check(text)
        assert value(text, "shmchannels_channel_messages_pending", channel="plain.channel", owner_kind="") == 3
        assert value(text, "shmchannels_channel_full_total", channel="plain.channel", owner_kind="") == 2
        assert value(text, "shmchannels_processes", kind="process") == 1
        assert scrape(port, "/healthz").json()["master"] is None
        ready = scrape(port, "/readyz")
        assert ready.status_code == 200, ready.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    watch = subprocess.Popen([sys.executable, "-m", "shmchannels", "status", "--prefix", prefix, "--watch"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        os.set_blocking(watch.stdout.fileno(), False)
        seen = b""

        def two_frames():
            nonlocal seen
            seen += watch.stdout.read() or b""
            return seen.count(b"BUSIEST CHANNELS") >= 2

        started = time.monotonic()
        wait_for(two_frames, timeout=15, what="two frames of status --watch")
        assert time.monotonic() - started >= 0.9  # one frame a second, not a busy loop
        assert b"plain.channel" in seen and b"\x1b[2J" in seen
        watch.send_signal(signal.SIGINT)
        assert watch.wait(10) == 0, watch.stderr.read()
        assert b"Traceback" not in watch.stderr.read()
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    layer.flush()


def test_max_requests_restarts_are_counted_as_such(prefix):
    with serving(prefix, [*FAULT, "--max-requests", "5"], workers=1) as s:
        port = metrics_port(s)
        for _ in range(12):
            assert httpx.get(f"http://127.0.0.1:{s.port}/", timeout=10).status_code == 200
        handled = value(scrape(port).text, "shmchannels_consumer_messages_total")
        assert handled >= 12
        wait_for(lambda: value(scrape(port).text, "shmchannels_restarts_total", kind="worker",
                               cause="max_requests") == handled // 5, what=f"{int(handled) // 5} max_requests restarts")
        text = scrape(port).text
        assert value(text, "shmchannels_consumer_messages_total") == handled  # every recycled worker's count kept
        assert value(text, "shmchannels_restarts_total", kind="worker", cause="crash") == 0
        assert value(text, "shmchannels_restarts_total", kind="worker", cause="exit") == 0


def test_websocket_messages_closes_and_hosted_asgi_consumers_are_counted(prefix):
    import asyncio

    import websockets

    with serving(prefix, ["metricsapp:app", "--metrics", "127.0.0.1:0"], workers=1) as s:
        port = metrics_port(s)
        before = scrape(port).text
        for path in ["/"] * 10 + ["/raise"] * 2:
            httpx.get(f"http://127.0.0.1:{s.port}{path}", timeout=5)

        async def clients():
            url = f"ws://127.0.0.1:{s.port}/echo"
            async with websockets.connect(url) as ws:  # 5 echoes, then the client closes with 1000
                for i in range(5):
                    await ws.send(str(i))
                    assert await ws.recv() == str(i)
            async with websockets.connect(url) as ws:  # the application closes with 4000
                await ws.send("bye")
                await ws.wait_closed()
                assert ws.close_code == 4000
            ws = await websockets.connect(url)  # the client goes away
            await ws.close(1001)

        asyncio.run(clients())

        def delta(text, name, **labels):
            return value(text, name, **labels) - value(before, name, **labels)

        def settled():
            text = scrape(port).text
            return delta(text, "shmchannels_websocket_closes_total", code="1001") == 1 and text

        text = wait_for(settled, what="the third close counted")
        assert delta(text, "shmchannels_websocket_messages_total", direction="in") == 6
        assert delta(text, "shmchannels_websocket_messages_total", direction="out") == 5
        assert delta(text, "shmchannels_websocket_closes_total", code="1000") == 1
        assert delta(text, "shmchannels_websocket_closes_total", code="other") == 1
        assert delta(text, "shmchannels_websocket_closes_total", code="1006") == 0
        assert delta(text, "shmchannels_http_responses_total", status_class="5xx") == 2
        # the hosted application's run time: a request each, an event each
        assert delta(text, "shmchannels_consumer_duration_seconds_count", channel="http.request") == 12
        assert delta(text, "shmchannels_consumer_exceptions_total", channel="http.request") == 2
        assert delta(text, "shmchannels_consumer_duration_seconds_count", channel="websocket.connect") == 3
        assert delta(text, "shmchannels_consumer_duration_seconds_count", channel="websocket.receive") == 6
        promtool_check(text)


def test_max_requests_restarts_of_asgi_workers_are_counted_as_such(prefix):
    with serving(prefix, ["metricsapp:app", "--metrics", "127.0.0.1:0", "--max-requests", "5"], workers=1) as s:
        port = metrics_port(s)
        for _ in range(12):
            assert httpx.get(f"http://127.0.0.1:{s.port}/", timeout=10).status_code == 200
        wait_for(lambda: value(scrape(port).text, "shmchannels_restarts_total", kind="worker",
                               cause="max_requests") >= 2, what="2 max_requests restarts")
        text = scrape(port).text
        assert value(text, "shmchannels_restarts_total", kind="worker", cause="crash") == 0
        assert value(text, "shmchannels_restarts_total", kind="worker", cause="exit") == 0
