"""16 MiB WebSocket messages through a worker (issue 10): under `shmchannels
serve --ws-max-size 16777216`, with no other setting, a Channels-1 echo
consumer gets each text and binary message over the bus (`websocket.receive`
in a blob, bus/blobs.py) and its reply comes back the same way.  A message
one byte larger is refused with 1009, and the bus keeps no blob."""

import asyncio
import hashlib
import os

import pytest
import websockets

from serving import serving
from shmchannels.bus import segments

pytestmark = pytest.mark.slow

LIMIT = 16 << 20


def test_sixteen_mebibyte_text_and_binary_messages_are_echoed_by_a_channels_1_consumer(prefix):
    with serving(prefix, ["--routing", "echo1:routes", "--ws-max-size", str(LIMIT)], workers=1) as s:
        async def main():
            url = f"ws://127.0.0.1:{s.port}/ws/"
            binary = os.urandom(LIMIT)
            text = ("0123456789abcdef" * (LIMIT // 16))[:LIMIT - 2] + "é"  # 16 MiB of UTF-8
            assert len(text.encode()) == LIMIT
            async with websockets.connect(url, max_size=None, compression=None, open_timeout=30) as ws:
                for message in (binary, text, binary):
                    await ws.send(message)
                    echo = await asyncio.wait_for(ws.recv(), 60)
                    assert type(echo) is type(message) and len(echo) == len(message)
                    assert hashlib.sha256(echo if isinstance(echo, bytes) else echo.encode()).digest() == \
                        hashlib.sha256(message if isinstance(message, bytes) else message.encode()).digest()
            # compressed by the client (permessage-deflate, as browsers do)
            async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
                await ws.send(text)
                assert await asyncio.wait_for(ws.recv(), 60) == text
                await ws.send(b"x" * (LIMIT + 1))
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), 60)
                assert closed.value.rcvd.code == 1009

        asyncio.run(main())
        assert segments.files_of_kind(segments.bus_stem(prefix), "blob") == []
