"""A Channels 4 chat across two hosts: uvicorn with 2 workers on host A,
daphne or `shmchannels serve --bridge` (the app hosted in its workers) on host B, each host its own mount+UTS namespace (private /dev/shm,
own hostname), one redis-server.  Clients on both hosts; every broadcast
reaches every client, and a sync caller on host A (``async_to_sync(group_send)``,
as a Django view would) reaches them all too."""

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from bridge_hosts import NAMESPACE_SHELL, free_port, namespaces_work

pytestmark = [pytest.mark.skipif(not namespaces_work(), reason="needs root for unshare --mount --uts"),
              pytest.mark.slow]
HERE = os.path.dirname(os.path.abspath(__file__))

SYNC_VIEW = """
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
import chat_hosts  # the same settings as the servers
async_to_sync(get_channel_layer().group_send)("lobby", {"type": "chat.message", "text": "from a sync view"})
"""


def in_namespace(hostname, argv, env, join=None):
    if join is not None:
        argv = ["nsenter", "-t", str(join.pid), "--mount", "--uts", "--", *argv]
    else:
        argv = ["unshare", "--mount", "--uts", "sh", "-c", NAMESPACE_SHELL, hostname, *argv]
    return subprocess.Popen(argv, env=env, cwd=HERE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_http(port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"no server on port {port}")


def host_b(server, port, redis_url, namespace):
    if server == "daphne":
        return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "--access-log", os.devnull,
                "chat_hosts:application"]
    # the serve's own layer and the app's join the bridge with the same prefix, Redis and host (the hostname)
    return [sys.executable, "-m", "shmchannels", "serve", "chat_hosts:application", "--bind", f"127.0.0.1:{port}",
            "--prefix", "chathosts", "--protocol-servers", "1", "--workers", "2", "--bridge", redis_url,
            "--redis-prefix", namespace, "--log-level", "warning"]


@pytest.mark.parametrize("server_b", ["daphne", "shmchannels-serve"])
def test_a_chat_on_uvicorn_and_another_server_on_two_hosts(redis_server, namespace, server_b):
    from websockets.sync.client import connect

    env = dict(os.environ, CHAT_REDIS=redis_server.url, CHAT_NAMESPACE=namespace, PYTHONPATH=HERE)
    port_a, port_b = free_port(), free_port()
    servers = [
        in_namespace("chat-a", [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port_a),
                                "--workers", "2", "--lifespan", "off", "--no-access-log", "chat_hosts:application"],
                     env),
        in_namespace("chat-b", host_b(server_b, port_b, redis_server.url, namespace), env),
    ]
    clients = []
    try:
        wait_http(port_a, servers[0])
        wait_http(port_b, servers[1])
        # four clients on host A (spread over its two workers, as the kernel balances) and two on host B
        clients = [connect(f"ws://127.0.0.1:{port}/ws/lobby/", open_timeout=10).__enter__()
                   for port in (port_a, port_a, port_a, port_a, port_b, port_b)]
        for n, sender in enumerate((clients[0], clients[5])):
            sender.send(f"hello {n}")
            got = []
            for ws in clients:
                try:
                    got.append(ws.recv(timeout=10))
                except TimeoutError:
                    got.append(None)
            assert got == [f"hello {n}"] * len(clients), got
        view = in_namespace(None, [sys.executable, "-c", SYNC_VIEW], env, join=servers[0])
        assert view.wait(60) == 0, view.stderr.read()
        for ws in clients:
            assert ws.recv(timeout=10) == "from a sync view"
    finally:
        for ws in clients:
            ws.close()
        for proc in servers:
            proc.terminate()
        for proc in servers:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            proc.stderr.close()
