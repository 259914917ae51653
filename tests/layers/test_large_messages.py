"""8 MiB messages across processes with default options, as channels_redis
takes them: ``send`` to a named channel and to a process-specific one, and a
``group_send`` to members in several processes (fork and spawn).  Nothing of
them stays in /dev/shm (the ``prefix`` fixture checks)."""

import asyncio
import hashlib
import multiprocessing
import os

import pytest

from shmchannels.bus import segments
from shmchannels.layers import SharedMemoryChannelLayer

SIZE = 8 << 20


def payload(tag):
    return hashlib.sha256(tag.encode()).digest() * (SIZE // 32)


def member(prefix, report):
    """Mint a channel, join ``big``, then report a digest of each message:
    one by group_send, one sent to our channel, one on the named channel."""

    async def main():
        layer = SharedMemoryChannelLayer(prefix=prefix)
        ch = await layer.new_channel()
        await layer.group_add("big", ch)
        report.send(ch)
        for _ in range(2):
            msg = await layer.receive(ch)
            report.send((msg["tag"], hashlib.sha256(msg["bytes"]).hexdigest(), len(msg["text"])))
        msg = await layer.receive("big.named")
        report.send((msg["tag"], hashlib.sha256(msg["bytes"]).hexdigest(), len(msg["text"])))

    asyncio.run(main())


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_eight_mebibyte_send_and_group_send_across_processes(prefix, start_method):
    ctx = multiprocessing.get_context(start_method)
    pipes, procs = [], []
    for _ in range(3):
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=member, args=(prefix, w))
        p.start()
        pipes.append(r)
        procs.append(p)
    try:
        channels = [r.recv() for r in pipes]
        layer = SharedMemoryChannelLayer(prefix=prefix)
        text = "é" * (SIZE // 2)  # 8 MiB of UTF-8

        async def send_all():
            await layer.group_send("big", {"type": "x", "tag": "group", "bytes": payload("group"), "text": text})
            for i, ch in enumerate(channels):
                await layer.send(ch, {"type": "x", "tag": f"direct{i}", "bytes": payload(f"direct{i}"), "text": ""})
            for i in range(3):
                await layer.send("big.named", {"type": "x", "tag": "named", "bytes": payload("named"), "text": ""})

        asyncio.run(send_all())
        got = [[r.recv() for _ in range(3)] for r in pipes]
        for i, reports in enumerate(got):
            assert reports[0] == ("group", hashlib.sha256(payload("group")).hexdigest(), len(text))
            assert reports[1] == (f"direct{i}", hashlib.sha256(payload(f"direct{i}")).hexdigest(), 0)
            assert reports[2] == ("named", hashlib.sha256(payload("named")).hexdigest(), 0)
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        # every blob was unlinked by the process that took its record
        assert segments.files_of_kind(segments.bus_stem(prefix), "blob") == []
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)


def test_a_sixteen_mebibyte_message_through_a_sixty_four_kibibyte_ring(prefix):
    """No ring sizing: the ring carries a reference, never the message."""

    async def main():
        layer = SharedMemoryChannelLayer(prefix=prefix, ring_size=1 << 16)
        big = os.urandom(16 << 20)
        for _ in range(3):  # more than the ring could ever hold at once
            await layer.send("tiny", {"type": "x", "bytes": big})
        for _ in range(3):
            assert (await layer.receive("tiny"))["bytes"] == big

    asyncio.run(main())
