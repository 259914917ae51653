"""The deploy promise, end to end: HUP rolls the workers with new code while
WebSocket clients and an HTTP keep-alive connection stay connected, and no
message is lost or reordered.  Plus the protocol-server signals: USR2 rolls
them (1012), TERM stops them (1001), and a killed one is replaced."""

import asyncio
import http.client
import os
import re
import signal

import pytest
import websockets

from serving import Served, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def deploy(prefix, tmp_path):
    version = tmp_path / "version"
    version.write_text("v1")
    s = Served(prefix, ["--bind", "127.0.0.1:0", "--protocol-servers", "1", "--workers", "2",
                        "--routing", "deployapp:routes", "--keep-alive", "60", "--capacity", "10000"],
               env={"DEPLOYAPP_VERSION_FILE": str(version)})
    s.attach()
    port = int(wait_for(lambda: re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", s.output()), what="the port").group(1))
    s.wait_workers(2)
    s.wait_workers(1, kind="protocol")
    s.port, s.version = port, version
    yield s
    s.stop()
    s.layer.core.bus.detach()


def http_get(conn):
    conn.request("GET", "/", headers={"Connection": "keep-alive"})
    resp = conn.getresponse()
    return resp.read().decode()


def test_hup_keeps_websockets_and_keepalive_connections_while_new_code_takes_over(deploy):
    s = deploy
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    assert http_get(conn).startswith("v1 ")
    local_port = conn.sock.getsockname()[1]
    clients, per_client = 20, []

    async def client(i, hup_sent):
        got = []
        async with websockets.connect(f"ws://127.0.0.1:{s.port}/ws/{i}") as ws:
            n = 0
            # keep talking until this socket has seen the new code answer,
            # plus a few more messages
            while True:
                await ws.send(f"{i}-{n}")
                reply = await asyncio.wait_for(ws.recv(), 20)
                version, _, text = reply.partition(":")
                got.append((version, text))
                n += 1
                if hup_sent.is_set() and version == "v2" and sum(v == "v2" for v, _ in got) >= 5:
                    break
                await asyncio.sleep(0.005)
            assert ws.close_code is None  # never closed under us
        return got

    async def run():
        hup_sent = asyncio.Event()
        tasks = [asyncio.ensure_future(client(i, hup_sent)) for i in range(clients)]
        await asyncio.sleep(0.5)
        s.version.write_text("v2")
        s.send_signal(signal.SIGHUP)
        hup_sent.set()
        return await asyncio.wait_for(asyncio.gather(*tasks), 60)

    per_client = asyncio.run(run())
    for i, got in enumerate(per_client):
        texts = [t for _, t in got]
        assert texts == [f"{i}-{n}" for n in range(len(texts))], f"client {i}: lost or reordered echoes"
        versions = [v for v, _ in got]
        assert versions[0] == "v1" and versions[-1] == "v2"
        first_v2 = versions.index("v2")
        assert all(v == "v2" for v in versions[first_v2 + 2:]), f"client {i}: old code answered after new code"
    # the keep-alive connection is still the same TCP connection, now served by new code
    assert http_get(conn).startswith("v2 ")
    assert conn.sock.getsockname()[1] == local_port
    conn.close()
    assert "rolled 2 worker(s); protocol servers untouched" in s.output()


def test_usr2_rolls_protocol_servers_closing_websockets_with_1012(deploy):
    s = deploy
    (old,) = s.pids("protocol")

    async def run():
        async with websockets.connect(f"ws://127.0.0.1:{s.port}/ws/x") as ws:
            await ws.send("hi")
            assert await ws.recv() == "v1:hi"
            s.send_signal(signal.SIGUSR2)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 15)
            assert ws.close_code == 1012
        # new protocol server on the same listener
        async with websockets.connect(f"ws://127.0.0.1:{s.port}/ws/y") as ws:
            await ws.send("again")
            assert await ws.recv() == "v1:again"

    asyncio.run(run())
    wait_for(lambda: s.pids("protocol") and s.pids("protocol") != [old], what="the new protocol server")


def test_killed_protocol_server_is_replaced(deploy):
    s = deploy
    (old,) = s.pids("protocol")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: s.pids("protocol") and s.pids("protocol") != [old], what="a new protocol server")
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    assert http_get(conn).startswith("v1 ")
    conn.close()


def test_term_closes_websockets_with_1001_and_removes_the_bus(deploy):
    s = deploy

    async def run():
        async with websockets.connect(f"ws://127.0.0.1:{s.port}/ws/z") as ws:
            await ws.send("x")
            await ws.recv()
            s.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 15)
            return ws.close_code

    assert asyncio.run(run()) == 1001
    assert s.proc.wait(30) == 0
