"""ASGI 3 applications hosted in the workers of `shmchannels serve MODULE:APP`
(the protocol servers relay HTTP and WebSocket over the bus), driven by real
clients (httpx, websockets):

* ``apps/djchat``: a Django project after the Channels tutorial chat, its
  ``SharedMemoryChannelLayer`` on serve's ``--prefix``: room broadcasts with
  the async and the sync consumer (and not to another room), a session login
  over HTTP seen over the WebSocket through ``AuthMiddlewareStack``, plain
  Django views.
* ``apps/starlette_app.py``: HTTP routes (a 1 MiB POST body, a streamed
  response), WebSocket echo, and the lifespan protocol in every worker
  (startup, shutdown after SIGTERM, a failing startup stops serve).

Every test stops the master with SIGTERM and checks that its processes are
gone; the ``prefix`` fixture checks that /dev/shm holds nothing of the bus.
"""

import asyncio
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import time

import httpx
import pytest
import websockets

from serving import APPS, Served, reap, serving, wait_for

pytestmark = pytest.mark.slow

DJCHAT = os.path.join(APPS, "djchat")
RECV_TIMEOUT = 10.0


# --- serving -----------------------------------------------------------------

# --- Django (djchat) ------------------------------------------------------------

@pytest.fixture(scope="module")
def djchat_db(tmp_path_factory):
    """A migrated SQLite database directory for djchat (``DJCHAT_DB``)."""
    db = tmp_path_factory.mktemp("djchat-db")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "djchat.settings", "DJCHAT_DB": str(db),
           "DJCHAT_PREFIX": "djchat-migrate",
           "PYTHONPATH": os.pathsep.join(filter(None, [DJCHAT, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return str(db)


def djchat_env(prefix, db):
    return {"DJCHAT_DB": db, "DJCHAT_PREFIX": prefix, "DJANGO_SETTINGS_MODULE": "djchat.settings",
            "PYTHONPATH": os.pathsep.join(filter(None, [DJCHAT, os.environ.get("PYTHONPATH")]))}


@contextlib.contextmanager
def djchat(prefix, db, workers=2):
    with serving(prefix, ["djchat.asgi:application"], workers, djchat_env(prefix, db), probe="/hello/") as s:
        yield s


async def recv_json(ws, timeout=RECV_TIMEOUT):
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def assert_silent(ws, seconds=0.5):
    with pytest.raises(asyncio.TimeoutError):
        got = await asyncio.wait_for(ws.recv(), seconds)
        pytest.fail(f"unexpected message: {got!r}")


@pytest.mark.parametrize("workers", [1, 2])
def test_django_hello_over_http(prefix, djchat_db, workers):
    with djchat(prefix, djchat_db, workers) as s:
        with httpx.Client(base_url=f"http://127.0.0.1:{s.port}", timeout=10) as client:
            for _ in range(20):
                r = client.get("/hello/")
                assert r.status_code == 200
                assert r.text == "hello"
            assert client.get("/nope/").status_code == 404


@pytest.mark.parametrize("route,workers", [("chat", 2), ("syncchat", 2), ("chat", 1)])
def test_chat_broadcast_reaches_the_room_and_not_another_room(prefix, djchat_db, route, workers):
    via = "sync" if route == "syncchat" else "async"

    async def run(port):
        url = f"ws://127.0.0.1:{port}/ws/{route}"
        room = [await websockets.connect(f"{url}/lobby/") for _ in range(4)]
        other = await websockets.connect(f"{url}/elsewhere/")
        try:
            # every member of the room gets every message, each sender's in order
            for i, ws in enumerate(room):
                await ws.send(json.dumps({"message": f"m{i}"}))
            for ws in room:
                got = [await recv_json(ws) for _ in room]
                assert sorted(g["message"] for g in got) == [f"m{i}" for i in range(len(room))]
                assert all(g["user"] == "anonymous" and g["via"] == via for g in got)
            await assert_silent(other)
            # ... and the other room only its own
            await other.send(json.dumps({"message": "over here"}))
            assert await recv_json(other) == {"message": "over here", "user": "anonymous", "via": via}
            await asyncio.gather(*(assert_silent(ws, 0.3) for ws in room))
        finally:
            await asyncio.gather(*(ws.close() for ws in [*room, other]))

    with djchat(prefix, djchat_db, workers) as s:
        asyncio.run(run(s.port))


def test_async_and_sync_consumers_share_a_room(prefix, djchat_db):
    async def run(port):
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/mixed/") as a, \
                websockets.connect(f"ws://127.0.0.1:{port}/ws/syncchat/mixed/") as b:
            await a.send(json.dumps({"message": "from async"}))
            for ws in (a, b):
                assert await recv_json(ws) == {"message": "from async", "user": "anonymous", "via": "async"}
            await b.send(json.dumps({"message": "from sync"}))
            for ws in (a, b):
                assert await recv_json(ws) == {"message": "from sync", "user": "anonymous", "via": "sync"}

    with djchat(prefix, djchat_db) as s:
        asyncio.run(run(s.port))


def test_logged_in_user_is_seen_over_the_websocket(prefix, djchat_db):
    name = f"alice{prefix}"

    async def run(port, cookie):
        base = f"ws://127.0.0.1:{port}/ws"
        async with websockets.connect(f"{base}/chat/auth/", additional_headers={"Cookie": cookie}) as alice, \
                websockets.connect(f"{base}/syncchat/auth/", additional_headers={"Cookie": cookie}) as alice_sync, \
                websockets.connect(f"{base}/chat/auth/") as anon:
            await alice.send(json.dumps({"message": "hi"}))
            for ws in (alice, alice_sync, anon):
                assert await recv_json(ws) == {"message": "hi", "user": name, "via": "async"}
            await alice_sync.send(json.dumps({"message": "hi again"}))
            for ws in (alice, alice_sync, anon):
                assert await recv_json(ws) == {"message": "hi again", "user": name, "via": "sync"}
            await anon.send(json.dumps({"message": "who?"}))
            for ws in (alice, alice_sync, anon):
                assert await recv_json(ws) == {"message": "who?", "user": "anonymous", "via": "async"}

    with djchat(prefix, djchat_db) as s:
        with httpx.Client(base_url=f"http://127.0.0.1:{s.port}", timeout=10) as client:
            assert client.get("/whoami/").text == "anonymous"
            r = client.get(f"/login/{name}/")
            assert r.status_code == 200 and r.text == f"logged in {name}"
            assert "sessionid" in client.cookies
            for _ in range(4):  # the session is in SQLite: every worker sees it
                assert client.get("/whoami/").text == name
            cookie = f"sessionid={client.cookies['sessionid']}"
        asyncio.run(run(s.port, cookie))


# --- Starlette ---------------------------------------------------------------------

STARLETTE = ["starlette_app:app"]


def starlette(prefix, tmp_path, workers=2, app_args=STARLETTE, **env):
    log = tmp_path / "lifespan.log"
    return serving(prefix, app_args, workers, {"STARLETTE_LIFESPAN_LOG": str(log), **env})


def lifespan_lines(tmp_path, event):
    log = tmp_path / "lifespan.log"
    if not log.exists():
        return []
    return [int(pid) for ev, pid in (line.split() for line in log.read_text().splitlines()) if ev == event]


@pytest.mark.parametrize("workers,app_args", [(2, STARLETTE), (1, ["--asgi", "starlette_app:app"])],
                         ids=["positional-2-workers", "asgi-flag-1-worker"])
def test_starlette_http_routes(prefix, tmp_path, workers, app_args):
    with starlette(prefix, tmp_path, workers, app_args) as s:
        with httpx.Client(base_url=f"http://127.0.0.1:{s.port}", timeout=15) as client:
            r = client.get("/")
            assert r.status_code == 200 and r.text.startswith("hello from starlette ")
            assert r.headers["content-type"].startswith("text/plain")
            r = client.get("/json")
            assert r.status_code == 200 and r.json()["hello"] == "world"
            assert r.json()["pid"] in s.pids("worker")  # answered in a worker process
            assert client.get("/missing").status_code == 404
            assert client.get("/echo").status_code == 405

            body = os.urandom(1 << 20)
            r = client.post("/echo", content=body)
            assert r.status_code == 200
            assert r.json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}

            def pieces():  # the same body, uploaded chunked in 64 KiB pieces
                for i in range(0, len(body), 1 << 16):
                    yield body[i:i + (1 << 16)]

            r = client.post("/echo", content=pieces())
            assert r.status_code == 200
            assert r.json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}

            n = 50
            with client.stream("GET", f"/stream?n={n}") as r:
                assert r.status_code == 200
                assert "content-length" not in r.headers
                assert r.headers.get("transfer-encoding") == "chunked"
                data = b"".join(r.iter_raw())
            assert data == b"".join(f"chunk {i}\n".encode() for i in range(n))

            # streamed, not buffered: the first chunk comes long before the last
            start = time.monotonic()
            with client.stream("GET", "/stream?n=8&delay=0.15") as r:
                arrivals, data = [], b""
                for piece in r.iter_raw():
                    arrivals.append(time.monotonic() - start)
                    data += piece
            assert data == b"".join(f"chunk {i}\n".encode() for i in range(8))
            assert len(arrivals) >= 2 and arrivals[-1] - arrivals[0] > 0.6, arrivals


def test_starlette_websocket_echoes_text_and_bytes(prefix, tmp_path):
    async def run(port):
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
            await ws.send("hello")
            assert await asyncio.wait_for(ws.recv(), RECV_TIMEOUT) == "hello"
            await ws.send(b"\x00\xffbytes")
            assert await asyncio.wait_for(ws.recv(), RECV_TIMEOUT) == b"\x00\xffbytes"
            big = os.urandom(512 * 1024)
            await ws.send(big)
            assert await asyncio.wait_for(ws.recv(), RECV_TIMEOUT) == big
            for i in range(100):
                await ws.send(f"n{i}" if i % 2 else f"n{i}".encode())
            got = [await asyncio.wait_for(ws.recv(), RECV_TIMEOUT) for _ in range(100)]
            assert got == [f"n{i}" if i % 2 else f"n{i}".encode() for i in range(100)]
        # a second connection at once with the first's echoes in flight
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as a, \
                websockets.connect(f"ws://127.0.0.1:{port}/ws") as b:
            await a.send("to a")
            await b.send("to b")
            assert await asyncio.wait_for(b.recv(), RECV_TIMEOUT) == "to b"
            assert await asyncio.wait_for(a.recv(), RECV_TIMEOUT) == "to a"

    with starlette(prefix, tmp_path) as s:
        asyncio.run(run(s.port))


def test_lifespan_starts_in_every_worker_and_shuts_down_after_sigterm(prefix, tmp_path):
    with starlette(prefix, tmp_path, workers=2) as s:
        started = wait_for(lambda: len(lifespan_lines(tmp_path, "startup")) >= 2 and lifespan_lines(tmp_path, "startup"),
                           what="2 lifespan startups")
        time.sleep(0.3)  # no third one
        started = lifespan_lines(tmp_path, "startup")
        assert len(started) == 2 and len(set(started)) == 2, started
        assert sorted(started) == s.pids("worker")
        assert s.master_pid not in started
        assert lifespan_lines(tmp_path, "shutdown") == []
    # serving() stopped the master with SIGTERM and checked rc 0
    assert sorted(lifespan_lines(tmp_path, "shutdown")) == sorted(started)


def test_failing_lifespan_startup_makes_serve_exit_non_zero(prefix, tmp_path):
    marker = f"boom-{prefix}"
    s = Served(prefix, ["starlette_app:app", "--bind", "127.0.0.1:0", "--protocol-servers", "1", "--workers", "2"],
               env={"STARLETTE_LIFESPAN_FAIL": marker})
    try:
        rc = s.proc.wait(20)
    except subprocess.TimeoutExpired:
        rc = None
    finally:
        s.stop(timeout=15)
        output = s.output()
        leftover = reap(prefix)
    assert not leftover, f"serve left processes behind: {leftover}\n{output[-3000:]}"
    assert rc is not None, f"serve still running 20 s after a failed lifespan startup:\n{output[-4000:]}"
    assert rc != 0
    assert f"lifespan startup failed: {marker}" in output, output[-4000:]
    assert not (tmp_path / "lifespan.log").exists()


# --- handshake features (apps/wsfeatures.py) -----------------------------------

def test_denial_response_subprotocol_accept_headers_and_lifespan_state(prefix):
    with serving(prefix, ["wsfeatures:app"], workers=1, probe="/state") as s:
        assert httpx.get(f"http://127.0.0.1:{s.port}/state", timeout=10).text == "hello from lifespan"

        async def scenario():
            with pytest.raises(websockets.InvalidStatus) as denied:
                await websockets.connect(f"ws://127.0.0.1:{s.port}/deny")
            response = denied.value.response
            async with websockets.connect(f"ws://127.0.0.1:{s.port}/proto", subprotocols=["a", "b"]) as ws:
                await ws.send("hi")
                echoed = await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)
                return response, ws.subprotocol, ws.response.headers.get("x-accepted"), echoed
        response, subprotocol, accepted, echoed = asyncio.run(scenario())
    assert response.status_code == 401
    assert response.body == b"no token, no socket"
    assert response.headers["www-authenticate"] == "Token"
    assert (subprotocol, accepted, echoed) == ("b", "yes", "['a', 'b']|hi")


def test_raw_path_is_the_path_as_the_client_sent_it(prefix):
    """``raw_path``, as uvicorn gives it: percent-escapes kept, query string left out."""
    with serving(prefix, ["wsfeatures:app"], workers=1, probe="/state") as s:
        def get(target):
            return httpx.get(f"http://127.0.0.1:{s.port}{target}", timeout=10).text

        async def over_websocket(target):
            async with websockets.connect(f"ws://127.0.0.1:{s.port}{target}") as ws:
                return await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)

        assert get("/raw/plain?x=1") == "/raw/plain|/raw/plain"
        assert get("/raw/a%20b/caf%C3%A9?q=%20") == "/raw/a b/caf\u00e9|/raw/a%20b/caf%C3%A9"
        assert get("/raw/slash%2Fin%2fit") == "/raw/slash/in/it|/raw/slash%2Fin%2fit"
        assert asyncio.run(over_websocket("/raw/room%201/?t=2")) == "/raw/room 1/|/raw/room%201/"
