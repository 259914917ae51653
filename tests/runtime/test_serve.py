"""`shmchannels serve` end to end: real processes, real signals.

These run the master without protocol servers (``--protocol-servers 0``, a
worker-only pool) and drive workers through the bus; HTTP and WebSocket
through protocol servers are in tests/test_e2e_*.py.
"""

import os
import signal
import threading
import time

import pytest

from shmchannels import bus as bus_mod
from shmchannels.bus import segments

from serving import APPS, Served, children_of as master_children, serving, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def serve(prefix, tmp_path):
    running = []

    def start(*args, env=None):
        s = Served(prefix, ["--protocol-servers", "0", "--bind", "127.0.0.1:0", "--routing", "workapp:routes", *args],
                   env={"WORKAPP_VERSION_FILE": str(tmp_path / "version"), **(env or {})})
        running.append(s)
        s.attach()
        return s

    (tmp_path / "version").write_text("v1")
    yield start
    for s in running:
        s.stop()
        if s.layer is not None:
            s.layer.core.bus.detach()


def test_serve_runs_workers_and_term_removes_the_bus(serve, prefix):
    s = serve("--workers", "2")
    s.wait_workers(2)
    assert s.request("work", {"n": 1})["n"] == 1
    assert len(s.processes("master")) == 1
    s.layer.core.bus.detach()
    s.layer = None
    assert s.stop(signal.SIGTERM) == 0
    assert segments.bus_files(segments.bus_stem(prefix)) == []


def test_hup_rolls_workers_with_new_code_and_loses_no_message(serve, tmp_path):
    s = serve("--workers", "2", "--capacity", "100000")
    old = s.wait_workers(2)
    reply = s.layer.new_channel("test.reply?")
    total = 300

    def produce():
        for i in range(total):
            s.layer.send("work", {"n": i, "reply_channel": reply, "sleep": 0.003})
            time.sleep(0.003)

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.3)
    (tmp_path / "version").write_text("v2")
    s.send_signal(signal.SIGHUP)
    got = {}
    deadline = time.monotonic() + 60
    while len(got) < total and time.monotonic() < deadline:
        ch, msg = s.layer.receive([reply], block=True)
        if ch is not None:
            got[msg["n"]] = msg
    producer.join()
    assert sorted(got) == list(range(total)), "a message was lost across the HUP"
    versions = [got[i]["version"] for i in range(total)]
    assert versions[-1] == "v2" and "v1" in versions  # new code took over mid-stream
    first_v2 = versions.index("v2")
    assert all(v == "v2" for v in versions[first_v2 + 4 :])  # old workers finished, then left
    new = s.wait_workers(2)
    assert not set(new) & set(old)


def test_killed_worker_is_respawned_and_its_channels_and_memberships_reclaimed(serve, prefix):
    s = serve("--workers", "1")
    (pid,) = s.wait_workers(1)
    owned = s.request("join", {"group": "watchers"})
    assert owned["pid"] == pid
    assert s.layer.group_channels("watchers") == [owned["channel"]]
    assert any("@o" in f for f in segments.bus_files(segments.bus_stem(prefix)))
    os.kill(pid, signal.SIGKILL)
    (new_pid,) = wait_for(lambda: (p := s.pids("worker")) and p != [pid] and p, what="a respawned worker")
    assert new_pid != pid
    # The master reclaimed the dead worker at once: membership and ring gone.
    assert s.layer.group_channels("watchers") == []
    assert not any("@o" in f for f in segments.bus_files(segments.bus_stem(prefix)))
    assert s.request("work", {"n": 7})["pid"] == new_pid


def test_killed_master_takes_its_children_and_the_next_start_recovers(serve, prefix):
    s = serve("--workers", "2")
    children = s.wait_workers(2)
    s.layer.core.bus.detach()
    s.layer = None
    os.kill(s.master_pid, signal.SIGKILL)
    s.proc.wait(10)
    for pid in children:  # PR_SET_PDEATHSIG: children shut down with the master
        wait_for(lambda: not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z",
                 what=f"child {pid} to exit")
    again = serve("--workers", "1")  # no manual /dev/shm cleanup
    again.wait_workers(1)
    assert again.request("work", {"n": 3})["n"] == 3


def test_ttin_and_ttou_scale_workers(serve):
    s = serve("--workers", "1")
    s.wait_workers(1)
    s.send_signal(signal.SIGTTIN)
    s.wait_workers(2)
    s.send_signal(signal.SIGTTIN)
    s.wait_workers(3)
    s.send_signal(signal.SIGTTOU)
    s.wait_workers(2)


def test_boot_error_halts_instead_of_restarting(prefix):
    s = Served(prefix, ["--protocol-servers", "0", "--bind", "127.0.0.1:0", "--routing", "badapp:routes", "--workers", "2"])
    try:
        rc = s.proc.wait(30)
    finally:
        s.stop()
    out = s.output()
    assert rc == 4, out
    assert "this_module_does_not_exist" in out
    assert out.count("Booting worker") <= 2, "the master kept restarting a worker that cannot boot"
    assert segments.bus_files(segments.bus_stem(prefix)) == []


def test_consumer_past_its_timeout_is_aborted_and_replaced(serve):
    s = serve("--workers", "1", "--timeout", "2")
    (pid,) = s.wait_workers(1)
    reply = s.layer.new_channel("test.reply?")
    s.layer.send("work", {"n": 1, "sleep": 30, "reply_channel": reply})
    wait_for(lambda: s.pids("worker") and s.pids("worker") != [pid], timeout=20, what="the stuck worker's replacement")
    assert "WORKER TIMEOUT" in s.output() and "past timeout" in s.output()
    assert s.request("work", {"n": 2})["n"] == 2


def test_max_requests_recycles_workers(serve):
    s = serve("--workers", "1", "--max-requests", "5")
    (pid,) = s.wait_workers(1)
    pids = {s.request("whoami", {})["pid"] for _ in range(12)}
    assert len(pids) >= 2 and pid in pids


def test_threads_run_consumers_concurrently(serve):
    s = serve("--workers", "1", "--threads", "4")
    s.wait_workers(1)
    reply = s.layer.new_channel("test.reply?")
    t0 = time.monotonic()
    for i in range(4):
        s.layer.send("work", {"n": i, "sleep": 0.5, "reply_channel": reply})
    got = []
    while len(got) < 4 and time.monotonic() - t0 < 10:
        ch, msg = s.layer.receive([reply], block=True)
        if ch:
            got.append(msg)
    assert len({m["thread"] for m in got}) == 4
    assert time.monotonic() - t0 < 1.8  # four 0.5 s consumers overlapped


def test_consumer_exception_is_logged_and_the_worker_keeps_going(serve):
    s = serve("--workers", "1")
    (pid,) = s.wait_workers(1)
    s.layer.send("boom", {})
    assert s.request("work", {"n": 5})["pid"] == pid
    wait_for(lambda: "consumer failure on purpose" in s.output(), what="the traceback in the log")
    out = s.output()
    assert "Traceback" in out and "consumer boom raised on boom" in out
    assert s.pids("worker") == [pid]


# ------------------------------------------------------------ boot errors


def _halted(prefix, args, env=None, timeout=30):
    s = Served(prefix, ["--bind", "127.0.0.1:0", *args], env=env)
    try:
        rc = s.proc.wait(timeout)
    finally:
        s.stop()
    return rc, s.output()


@pytest.mark.parametrize("pool", ["--protocol-servers 1 --workers 0", "--protocol-servers 0 --workers 2"])
def test_a_child_that_cannot_attach_the_bus_halts_the_master(prefix, pool):
    rc, out = _halted(prefix, [*pool.split(), "--routing", "workapp:routes"],
                      env={"SHMCHANNELS_TEST_FAIL_CHILD_ATTACH": "1",
                           "PYTHONPATH": os.pathsep.join(filter(None, [
                               os.path.join(APPS, "failattach"),
                               os.environ.get("PYTHONPATH")]))})
    assert rc == 3, out  # gunicorn's WORKER_BOOT_ERROR
    assert "refused on purpose by the test" in out
    assert "could not attach the bus (exit code 5) and none has booted yet" in out
    assert out.count("Booting worker") <= 2, "the master kept restarting a child that cannot boot"
    assert segments.bus_files(segments.bus_stem(prefix)) == []


@pytest.mark.parametrize("kind", ["worker", "protocol"])
def test_a_replacement_that_cannot_attach_the_bus_is_retried_and_the_others_keep_serving(prefix, tmp_path, kind):
    """Once the deployment served, a child that cannot attach (a full
    /dev/shm, a lock held by a stopped process) is a passing condition: the
    master keeps the others and their sockets and tries again later.  (It
    halted with WORKER_BOOT_ERROR before, closing every WebSocket.)"""
    import websockets.sync.client

    refuse = tmp_path / "refuse-attach"
    env = {"SHMCHANNELS_TEST_FAIL_CHILD_ATTACH": str(refuse),
           "PYTHONPATH": os.pathsep.join(filter(None, [os.path.join(APPS, "failattach"), os.environ.get("PYTHONPATH")]))}
    with serving(prefix, ["--routing", "echo1:routes"], workers=2, env=env) as s:
        ws = websockets.sync.client.connect(f"ws://127.0.0.1:{s.port}/ws/", open_timeout=10).__enter__()
        ws.send("before")
        assert ws.recv(timeout=10) == "before"
        refuse.touch()
        victim = s.pids(kind)[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: "could not attach the bus; the others keep serving" in s.output(), 30,
                 what="the refused replacement")
        assert s.proc.poll() is None, s.output()[-3000:]
        refuse.unlink()
        wait_for(lambda: len(s.pids(kind)) == (2 if kind == "worker" else 1) and victim not in s.pids(kind), 40,
                 what="the replacement once attaching works again")
        if kind == "worker":  # the socket lives in the protocol server: it stayed open throughout
            ws.send("after")
            assert ws.recv(timeout=10) == "after"
        else:  # its protocol server is gone; a new one serves new clients
            with websockets.sync.client.connect(f"ws://127.0.0.1:{s.port}/ws/", open_timeout=10) as again:
                again.send("after")
                assert again.recv(timeout=10) == "after"
        ws.close()


def test_workers_that_keep_dying_right_after_boot_halt_the_master(prefix):
    rc, out = _halted(prefix, ["--protocol-servers", "0", "--workers", "1", "--routing", "crashapp:routes"], timeout=60)
    assert rc == 3, out
    assert "exited with an error within 5 s of starting" in out
    assert out.count("Booting worker") <= 6
    assert segments.bus_files(segments.bus_stem(prefix)) == []


def test_hup_with_an_invalid_config_keeps_the_running_config_and_workers(serve, tmp_path):
    conf = tmp_path / "serve.toml"
    conf.write_text("threads = 2\n")
    s = serve("--workers", "1", "-c", str(conf))
    (pid,) = s.wait_workers(1)
    conf.write_text("capacity = 0\n")
    s.send_signal(signal.SIGHUP)
    wait_for(lambda: "the new config is invalid" in s.output(), what="the refused reload")
    assert "capacity must be at least 1 (got 0)" in s.output()
    time.sleep(0.5)
    assert s.pids("worker") == [pid]
    assert s.request("work", {"n": 4})["pid"] == pid


# ------------------------------------------------------------------ rolls


def test_rapid_hups_converge_to_the_configured_workers_with_the_newest_code(serve, tmp_path):
    s = serve("--workers", "2")
    first = s.wait_workers(2)
    for i in range(2, 22):  # 20 HUPs 50 ms apart, each with newer "code"
        (tmp_path / "version").write_text(f"v{i}")
        s.send_signal(signal.SIGHUP)
        time.sleep(0.05)

    def converged():
        kids, workers = master_children(s.master_pid), s.pids("worker")
        return len(kids) == 2 and kids == workers and workers

    workers = wait_for(converged, timeout=30, interval=0.1, what="exactly 2 workers, all children of the master")
    assert not set(workers) & set(first)
    time.sleep(1.5)  # stays converged
    assert master_children(s.master_pid) == workers == s.pids("worker")
    reply = s.layer.new_channel("test.reply?")
    for n in range(40):
        s.layer.send("work", {"n": n, "sleep": 0.01, "reply_channel": reply})
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 40 and time.monotonic() < deadline:
        ch, msg = s.layer.receive([reply], block=True)
        if ch is not None:
            got.append(msg)
    assert len(got) == 40
    assert {m["version"] for m in got} == {"v21"}, "a worker with old code still takes messages"
    assert {m["pid"] for m in got} <= set(workers)
    out = s.output()
    assert "Traceback" not in out, out[-3000:]


def test_a_retired_worker_that_does_not_exit_is_killed_after_graceful_timeout(serve, tmp_path):
    s = serve("--workers", "1", "--graceful-timeout", "2")
    (old,) = s.wait_workers(1)
    os.kill(old, signal.SIGSTOP)  # it cannot act on the TERM the roll sends it
    try:
        (tmp_path / "version").write_text("v2")
        s.send_signal(signal.SIGHUP)
        t0 = time.monotonic()
        wait_for(lambda: old not in master_children(s.master_pid), timeout=15, what="the stuck old worker to be killed")
        assert 1.5 < time.monotonic() - t0 < 8
    finally:
        try:
            os.kill(old, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "after it was retired: killing it" in s.output()
    (new,) = s.wait_workers(1)
    assert s.request("work", {"n": 1})["version"] == "v2"


# ------------------------------------------------------- one master a bus


def test_a_second_master_on_the_same_prefix_refuses_to_start(prefix, tmp_path):
    import re
    import subprocess
    import sys
    import urllib.request

    version = tmp_path / "version"
    version.write_text("v1")
    first = Served(prefix, ["--bind", "127.0.0.1:0", "--protocol-servers", "1", "--workers", "1",
                            "--routing", "deployapp:routes"], env={"DEPLOYAPP_VERSION_FILE": str(version)})
    try:
        first.attach()
        first.wait_workers(1)
        first.wait_workers(1, kind="protocol")
        port = int(wait_for(lambda: re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", first.output()),
                            what="the port").group(1))

        def get():
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
                return resp.status, resp.read().decode()

        assert get()[0] == 200
        second = subprocess.run(
            [sys.executable, "-m", "shmchannels", "serve", "--prefix", prefix, "--bind", "127.0.0.1:0",
             "--pythonpath", APPS, "--routing", "deployapp:routes"],
            capture_output=True, text=True, timeout=30, env={**os.environ, "DEPLOYAPP_VERSION_FILE": str(version)})
        assert second.returncode == 1, second.stderr
        error = second.stderr.strip().splitlines()[-1]
        assert error.startswith("Error: another `shmchannels serve`") and f"master pid {first.master_pid}" in error
        assert "Booting worker" not in second.stderr
        # The first one's bus is untouched: it still serves, with its children.
        assert get() == (200, f"v1 {first.pids('worker')[0]}")
        assert len(first.processes("master")) == 1
    finally:
        first.stop()
        if first.layer is not None:
            first.layer.core.bus.detach()
    assert first.proc.returncode == 0


def test_of_two_masters_starting_at_once_exactly_one_runs(prefix):
    both = [Served(prefix, ["--protocol-servers", "0", "--bind", "127.0.0.1:0", "--routing", "workapp:routes",
                            "--workers", "1"]) for _ in range(2)]
    try:
        loser = wait_for(lambda: next((s for s in both if s.proc.poll() is not None), None), timeout=30,
                         what="one of the two masters to give up")
        (winner,) = [s for s in both if s is not loser]
        assert loser.proc.returncode == 1, loser.output()
        assert f"master pid {winner.master_pid}" in loser.output()
        time.sleep(0.5)
        assert winner.proc.poll() is None, winner.output()
        winner.attach()
        winner.wait_workers(1)
        assert winner.request("work", {"n": 9})["n"] == 9
    finally:
        for s in both:
            s.stop()
            if s.layer is not None:
                s.layer.core.bus.detach()
            if s.proc.returncode == 1 and os.path.exists(s.log_path):
                os.unlink(s.log_path)  # the refusal was the expected outcome


def test_the_master_purges_expired_messages_nobody_reads(serve, prefix):
    """No reader, no sender, no attach: the master's janitor drops them.
    Read from the ring file itself, so the check purges nothing."""
    import struct

    import shmchannels

    s = serve()
    shmchannels.ChannelLayer(prefix=prefix, expiry=1).send("nobody.reads", {"n": 1})  # expiry is the sender's
    s.layer.core.bus.rings.forget("nobody.reads")
    path = segments.path(segments.file_name(s.stem, f"r{segments.ring_hash('nobody.reads')}"))

    def pending():
        with open(path, "rb") as f:
            f.seek(256)
            _tail_pos, tail_seq = struct.unpack("<QQ", f.read(16))
            f.seek(320)
            _head_pos, head_seq = struct.unpack("<QQ", f.read(16))
        return tail_seq - head_seq

    assert pending() == 1
    wait_for(lambda: pending() == 0, timeout=10, what="the janitor to purge the expired message")


def _stand_in_protocol_server(prefix, ready, done):
    bus = bus_mod.Bus(prefix, kind="protocol")  # as ``python -m shmchannels.server`` attaches
    ready.set()
    done.wait(20)
    bus.detach()


@pytest.mark.parametrize("protocol_server_left", [False, True])
def test_the_master_drops_protocol_messages_no_protocol_server_is_left_to_answer(prefix, protocol_server_left):
    """At its exit the master empties http.request, websocket.connect, ...
    once no protocol server is attached: each message there names a
    connection that closed with its server.  What a standalone protocol
    server still serves, and the application's own channels, are kept."""
    import multiprocessing

    import shmchannels
    from shmchannels.runtime.arbiter import PROTOCOL_CHANNELS, discard_orphaned_protocol_messages

    layer = shmchannels.ChannelLayer(prefix=prefix)
    ctx = multiprocessing.get_context("fork")
    ready, done = ctx.Event(), ctx.Event()
    server = ctx.Process(target=_stand_in_protocol_server, args=(prefix, ready, done))
    if protocol_server_left:
        server.start()
        assert ready.wait(10)
    try:
        for channel in sorted(PROTOCOL_CHANNELS):
            layer.send(channel, {"reply_channel": "http.response.shm0000000000000000000000!x"})
        layer.send("thumbnail", {"n": 1})
        discard_orphaned_protocol_messages(layer.core.bus)
        pending = {r.key: r.pending for r in layer.core.bus.all_rings()}
    finally:
        done.set()
        if protocol_server_left:
            server.join(10)
    expected = 1 if protocol_server_left else 0
    assert {ch: pending.get(ch, 0) for ch in PROTOCOL_CHANNELS} == dict.fromkeys(PROTOCOL_CHANNELS, expected)
    assert pending["thumbnail"] == 1
    layer.core.bus.flush()


def test_a_clean_stop_keeps_messages_and_memberships_of_named_channels(prefix):
    """What a script left on the bus outlives a serve's clean stop, as it
    outlives the script: an unexpired message on a named channel and a named
    channel's membership are there for the next start (a stop removed the
    whole bus before, and both were lost)."""
    import subprocess
    import sys

    import socket

    import shmchannels
    from serving import http_status

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "shmchannels", "serve", "--prefix", prefix, "--pythonpath", APPS,
                             "--routing", "echo1:routes", "--bind", f"127.0.0.1:{port}", "--protocol-servers", "1",
                             "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: http_status(port, "/") == 200 or proc.poll() is not None, what="serve")
        script = (f"import shmchannels; layer = shmchannels.ChannelLayer(prefix={prefix!r}); "
                  "layer.send('thumbnail', {'id': 42}); layer.group_add('liveblog', 'liveblog.listener')")
        subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()[-3000:]
    layer = shmchannels.ChannelLayer(prefix=prefix)
    try:
        assert layer.receive(["thumbnail"]) == ("thumbnail", {"id": 42})
        layer.send_group("liveblog", {"text": "still a member"})
        assert layer.receive(["liveblog.listener"]) == ("liveblog.listener", {"text": "still a member"})
    finally:
        layer.flush()
