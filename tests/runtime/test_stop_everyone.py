"""SIGTERM to every process of a serve at once (systemd's default
KillMode=control-group, `kill -TERM -PGID`), with real processes and clients.

The worker stops after the consumer it is running; the requests still queued
behind it have no worker left to take them.  The protocol server answers them
503 at once instead of holding the clients, and the stop, for the whole
graceful_timeout (10 s here; 30 s by default).
"""

import http.client
import os
import re
import signal
import threading
import time

import pytest

from serving import Served, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

QUEUED = 5


def test_requests_no_worker_is_left_to_take_get_503_and_the_stop_does_not_wait(prefix):
    s = Served(prefix, ["--bind", "127.0.0.1:0", "--protocol-servers", "1", "--workers", "1",
                        "--routing", "faultapp:routes"])
    try:
        s.attach()
        port = int(wait_for(lambda: re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", s.output()),
                            what="the port").group(1))
        s.wait_workers(1)
        s.wait_workers(1, kind="protocol")
        everyone = [s.master_pid, *s.pids("worker"), *s.pids("protocol")]
        answers = {}

        def get(key, path):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                answers[key] = (resp.status, resp.read(), time.monotonic())
            except (OSError, http.client.HTTPException) as exc:
                answers[key] = (None, repr(exc).encode(), time.monotonic())
            finally:
                conn.close()

        slow = threading.Thread(target=get, args=("slow", "/slow"))
        slow.start()
        ch, msg = s.layer.receive(["fault.started"], block=True)
        assert msg["what"] == "slow", msg
        # Our own layer is a process that could read http.request: leave.
        s.layer.core.bus.detach()
        s.layer = None
        queued = [threading.Thread(target=get, args=(i, "/")) for i in range(QUEUED)]
        for t in queued:
            t.start()
        time.sleep(0.3)  # they reach http.request behind the slow one
        assert not answers, answers
        t_term = time.monotonic()
        for pid in everyone:
            os.kill(pid, signal.SIGTERM)
        s.proc.wait(20)
        stopped_after = time.monotonic() - t_term
        for t in [slow, *queued]:
            t.join(10)
        assert answers["slow"][:2] == (200, b"slow done")
        for i in range(QUEUED):
            status, body, at = answers[i]
            assert status == 503 and b"no worker is left" in body, (status, body)
            assert at - t_term < 5, f"request {i} answered {at - t_term:.1f} s after the SIGTERM"
        assert s.proc.returncode == 0, s.output()[-3000:]
        assert stopped_after < 6, f"serve took {stopped_after:.1f} s to stop (graceful_timeout 10 s)"
        assert "no worker is left to take" in s.output()
    finally:
        if s.layer is not None:
            s.layer.core.bus.detach()
        s.stop()
    leftover = [f for f in os.listdir("/dev/shm") if f.startswith(f"shmch-{os.getuid()}-{prefix}@")]
    assert not leftover, f"serve left shared memory behind: {leftover}"
