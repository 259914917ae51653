"""bench/_floor.py, the floor of the group fan-out in bench/layer.py: each
member must get the message exactly once, parked or not, or the floor
figure measures something else."""

import asyncio
import os
import sys

# appended: bench/http.py must not hide the standard library's http
sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "bench"))

from _floor import FloorLayer  # noqa: E402


async def test_a_group_message_reaches_parked_and_unparked_members_once(prefix):
    layer = FloorLayer(prefix)
    try:
        channels = [await layer.new_channel() for _ in range(5)]
        for ch in channels:
            await layer.group_add("room", ch)
        parked = [asyncio.create_task(layer.receive(ch)) for ch in channels[:3]]
        await asyncio.sleep(0)
        for n in range(2):
            await layer.group_send("room", {"type": "chat", "n": n})
        got = await asyncio.wait_for(asyncio.gather(*parked), 5)
        assert got == [{"type": "chat", "n": 0}] * 3
        assert got[0] is not got[1]  # a copy each
        for ch in channels[:3]:  # the second message waits in their buffers
            assert await asyncio.wait_for(layer.receive(ch), 5) == {"type": "chat", "n": 1}
        for ch in channels[3:]:  # never parked: both messages, in order
            assert [await asyncio.wait_for(layer.receive(ch), 5) for _ in range(2)] == [
                {"type": "chat", "n": 0}, {"type": "chat", "n": 1}]
        assert not any(layer.buffers.values())
    finally:
        asyncio.get_running_loop().remove_reader(layer.fd)
        for fd in [layer.fd, layer.keepalive, *(layer.peers or [])]:
            os.close(fd)
        await layer.flush()
    assert not os.path.exists(layer.dir)
