"""`shmchannels serve --bridge`: a serve on one "host" and a Channels 4
layer on another (tests/bridge/agent.py, its own bus prefix and host id),
one Redis namespace.  A group send from the other host reaches a WebSocket
client of the serve, and what that client sends to its room reaches a
member on the other host."""

import asyncio

import pytest
import websockets

from serving import serving

pytestmark = pytest.mark.slow


def test_serve_with_a_bridge_joins_the_rooms_of_another_host(prefix, hosts, namespace, start_host):
    args = ["--routing", "room1_http:routes", "--bridge", hosts[0], "--host-id", "b", "--redis-prefix", namespace]
    with serving(prefix, args, workers=1) as s:
        other = start_host(dict(prefix=prefix + "a", hosts=hosts, host="a", redis_prefix=namespace, host_lease=3))
        member = other.call("new_channel")
        other.call("group_add", "room1-x", member)

        async def scenario():
            async with websockets.connect(f"ws://127.0.0.1:{s.port}/ws/x/") as ws:  # accepted: a member
                other.call("group_send", "room1-x", {"type": "chat", "text": "from host a"})
                assert await asyncio.wait_for(ws.recv(), 10) == "from host a"
                await ws.send("from a client of host b")
                assert await asyncio.wait_for(ws.recv(), 10) == "from a client of host b"
            return other.call("receive", member, 10), other.call("receive", member, 10)

        got = asyncio.run(scenario())
        other.call("group_discard", "room1-x", member)
    # host a's member got its own group send and the serve client's message, through Redis
    assert [m["text"] for m in got] == ["from host a", "from a client of host b"]


def test_check_config_refuses_a_bad_bridge_url(prefix):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "shmchannels", "serve", "--prefix", prefix, "--routing", "x:y",
                          "--bridge", "http://10.0.0.5:6379", "--check-config"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0
    assert "bridge between hosts" in run.stderr and "not a Redis URL" in run.stderr, run.stderr[-2000:]
