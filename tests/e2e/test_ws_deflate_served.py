"""permessage-deflate end to end: the ``websockets`` client (which offers
permessage-deflate by default) against a Channels-1 echo consumer under
`shmchannels serve`: compression is negotiated and messages of every size up
to ws_max_size round-trip through a worker; with
``--no-ws-per-message-deflate`` nothing is negotiated."""

import os

import pytest
from websockets.exceptions import ConnectionClosedError
from websockets.sync.client import connect

from serving import serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROUTING = ["--routing", "echo1:routes"]
MAX = 1 << 20  # until large messages cross the bus (issue 10), 1 MiB is the most it carries


def negotiated(ws):
    return ws.response.headers.get("Sec-WebSocket-Extensions")


def test_deflate_negotiated_and_messages_round_trip(prefix):
    with serving(prefix, [*ROUTING, "--ws-max-size", str(MAX)], workers=1) as s:
        with connect(f"ws://127.0.0.1:{s.port}/echo", max_size=None) as ws:
            assert negotiated(ws).startswith("permessage-deflate")
            assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
            for text in ("x", "héllo wörld " * 1000, '{"k": "v"}' * 50_000):
                ws.send(text)
                assert ws.recv(timeout=10) == text
            for data in (b"", os.urandom(70_000), b"\x00" * (MAX - 1000), os.urandom(1000) * 1000):
                ws.send(data)
                assert ws.recv(timeout=10) == data
            # a message that inflates past ws_max_size is refused with 1009
            ws.send(b"\x00" * (MAX + 1))
            with pytest.raises(ConnectionClosedError) as info:
                ws.recv(timeout=10)
            assert info.value.rcvd.code == 1009


def test_deflate_off_is_not_negotiated(prefix):
    with serving(prefix, [*ROUTING, "--no-ws-per-message-deflate"], workers=1) as s:
        with connect(f"ws://127.0.0.1:{s.port}/echo") as ws:
            assert negotiated(ws) is None
            assert ws.protocol.extensions == []
            ws.send("plain " * 100)
            assert ws.recv(timeout=10) == "plain " * 100
