"""Supervision of ASGI workers under `shmchannels serve MODULE:APP`: TTIN /
TTOU, max_requests, a stuck event loop past ``timeout``, each with open
WebSockets that must survive; group sends from processes that are not
serve's reach the hosted consumers; ``--check-config`` imports the app."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
import websockets

from serving import APPS, http_status, serving, wait_for

pytestmark = pytest.mark.slow


def app_env(prefix):
    return {"RESUMECHAT_PREFIX": prefix}


APP = ["resumechat:application"]


async def echo_room(port, n, room="s"):
    """``n`` sockets in one room; returns them with a function that checks
    every one of them still gets every broadcast."""
    sockets = [await websockets.connect(f"ws://127.0.0.1:{port}/ws/{room}/") for _ in range(n)]
    await asyncio.sleep(0.3)
    counter = [0]

    async def all_hear_everyone():
        for i, ws in enumerate(sockets):
            counter[0] += 1
            await ws.send(f"{i}:{counter[0]}")
        expected = {f"v0|{i}:{c}" for i, c in zip(range(n), range(counter[0] - n + 1, counter[0] + 1))}
        for ws in sockets:
            got = {await asyncio.wait_for(ws.recv(), 15) for _ in range(n)}
            assert got == expected
    return sockets, all_hear_everyone


def pids_of_http(port, n=20):
    return {httpx.get(f"http://127.0.0.1:{port}/", timeout=10).text.split()[1] for _ in range(n)}


def test_ttin_ttou_and_max_requests_keep_the_websockets(prefix):
    with serving(prefix, APP + ["--max-requests", "40"], workers=2, env=app_env(prefix)) as s:
        async def scenario():
            sockets, check = await echo_room(s.port, 6)
            await check()
            s.send_signal(signal.SIGTTIN)
            await asyncio.to_thread(s.wait_workers, 3)
            await check()
            s.send_signal(signal.SIGTTOU)
            await asyncio.to_thread(s.wait_workers, 2)
            await check()
            before = set(s.pids("worker"))
            def replaced():
                return len(s.pids("worker")) == 2 and not set(s.pids("worker")) & before
            # Whichever worker is free takes a request, so how many each gets
            # varies: go on until every worker has reached its 40 and restarted.
            for _ in range(600):
                if replaced():
                    break
                await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{s.port}/", timeout=10)
            await asyncio.to_thread(wait_for, replaced, 30, 0.05, "max_requests restarts")
            await check()
            assert all(ws.close_code is None for ws in sockets)
            for ws in sockets:
                await ws.close()
        asyncio.run(scenario())
        assert "max_requests" in s.output()


def test_a_stuck_worker_is_killed_past_its_timeout_and_its_sockets_resume(prefix):
    with serving(prefix, APP + ["--timeout", "2"], workers=1, env=app_env(prefix)) as s:
        async def scenario():
            sockets, check = await echo_room(s.port, 3)
            await check()
            stuck = s.pids("worker")
            status = (await asyncio.to_thread(
                lambda: httpx.get(f"http://127.0.0.1:{s.port}/block?s=60", timeout=30))).status_code
            await asyncio.to_thread(wait_for, lambda: s.pids("worker") and s.pids("worker") != stuck, 30, 0.05,
                                    "a new worker")
            await check()
            assert all(ws.close_code is None for ws in sockets)
            for ws in sockets:
                await ws.close()
            return status
        assert asyncio.run(scenario()) == 503  # the request whose worker was killed
        assert "WORKER TIMEOUT" in s.output()


def test_group_sends_from_other_processes_reach_hosted_consumers(prefix):
    with serving(prefix, APP, workers=2, env=app_env(prefix)) as s:
        async def scenario():
            sockets, check = await echo_room(s.port, 4, room="news")
            # a Channels 4 process of the same project (a view, a management command, a Celery task)
            code = (
                "import asyncio; from shmchannels.layers import SharedMemoryChannelLayer as L;"
                f"l = L(prefix={prefix!r});"
                "asyncio.run(l.group_send('news', {'type': 'chat.message', 'text': 'from-channels4'}))"
            )
            await asyncio.to_thread(subprocess.run, [sys.executable, "-c", code], check=True, timeout=30)
            # the CLI (the ASGI 1 layer)
            await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "shmchannels", "group-send", "--prefix", prefix, "news",
                 json.dumps({"type": "chat.message", "text": "from-cli"})],
                check=True, timeout=30)
            for ws in sockets:
                got = [await asyncio.wait_for(ws.recv(), 10) for _ in range(2)]
                assert got == ["from-channels4", "from-cli"]
            await check()
            for ws in sockets:
                await ws.close()
        asyncio.run(scenario())


def test_check_config_imports_the_asgi_application(prefix, tmp_path):
    env = {**os.environ, "RESUMECHAT_PREFIX": prefix, "PYTHONPATH": APPS}
    ok = subprocess.run([sys.executable, "-m", "shmchannels", "serve", "resumechat:application", "--check-config"],
                        env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "application loaded" in ok.stdout
    (tmp_path / "broken_asgi.py").write_text("import no_such_module_here\n")
    bad = subprocess.run([sys.executable, "-m", "shmchannels", "serve", "broken_asgi:app", "--check-config",
                          "--pythonpath", str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert "No module named 'no_such_module_here'" in bad.stderr
    both = subprocess.run([sys.executable, "-m", "shmchannels", "serve", "resumechat:application", "--wsgi", "x:y",
                           "--check-config"], env=env, capture_output=True, text=True, timeout=60)
    assert both.returncode == 1 and "cannot be combined with wsgi" in both.stderr


def test_sigterm_stops_a_worker_whose_loop_is_flooded_with_wakeups(prefix):
    """asyncio's add_signal_handler learns of a signal through a byte in the
    loop's self-pipe; with the pipe full the TERM was lost and the worker
    served on (seen as serve hanging after a Channels broadcast to 1000
    consumers, until it was killed)."""
    with serving(prefix, ["stormapp:app"], workers=1) as s:
        worker = s.pids("worker")[0]
        storm = threading.Thread(target=http_status, args=(s.port, "/storm"), daemon=True)
        storm.start()
        time.sleep(0.5)  # the worker's self-pipe is full and its loop blocked
        os.kill(worker, signal.SIGTERM)  # what a HUP or TTOU sends it
        wait_for(lambda: worker not in s.pids("worker"), timeout=8, what="the worker to stop")
        s.wait_workers(1)  # and the master replaced it
        storm.join(10)


def test_term_to_every_process_at_once_after_a_hup_stops_promptly(prefix):
    """systemd's KillMode=control-group sends TERM to the master and every
    child at once.  Workers that got it asked the stopping protocol server
    for successors and handed their sockets over to nobody; the protocol
    server then waited graceful_timeout for instances that would never come."""
    with serving(prefix, APP, workers=2, env=app_env(prefix)) as s:
        async def scenario():
            sockets, check = await echo_room(s.port, 5)
            old = s.pids("worker")
            s.send_signal(signal.SIGHUP)
            await asyncio.to_thread(wait_for, lambda: len(s.pids("worker")) == 2 and not set(s.pids("worker")) & set(old),
                                    30, 0.05, "the roll")
            await check()
            everyone = [s.master_pid] + s.pids("protocol") + s.pids("worker")
            for pid in everyone:
                os.kill(pid, signal.SIGTERM)
            for ws in sockets:
                await ws.close()
        started = time.monotonic()
        asyncio.run(scenario())
        s.proc.wait(20)
        took = time.monotonic() - started
    assert took < 8, f"serve took {took:.1f} s to stop (graceful_timeout is 10 s)"
