"""A host's bridge never blocks its link's loop on the group registry: a
membership from another host that meets the registry's write lock held by
a stopped process (SIGSTOP, a debugger) waits off the loop, so the loop's
other work (every cross-host send of the process) goes on.  The
membership is made once the lock is free."""

import asyncio
import os
import sys
import time

from shmchannels.layers import SharedMemoryChannelLayer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bus"))
from test_registry_lock import Holder  # noqa: E402
from test_capacity import bridge_of, wait_for  # noqa: E402


async def test_a_membership_waiting_for_the_registry_lock_holds_up_no_cross_host_send(config, prefix, other_buses):
    a = SharedMemoryChannelLayer(**config("a"))
    other_buses.append(prefix + "b")
    b = SharedMemoryChannelLayer(**config("b", "b"))
    await bridge_of(b)
    on_a, on_b = await a.new_channel(), await b.new_channel()
    await b.send(on_a, {"type": "warm"})  # both hosts claimed and reachable
    assert (await asyncio.wait_for(a.receive(on_a), 10))["type"] == "warm"

    holder = Holder(b.core.bus.registry.path)
    try:
        await a.group_add("room", on_b)  # made on B by its bridge, which now waits for the lock
        await asyncio.sleep(0.3)  # B's bridge has pulled it
        t0 = time.monotonic()
        await asyncio.wait_for(b.send(on_a, {"type": "during"}), 5)
        got = await asyncio.wait_for(a.receive(on_a), 5)
        took = time.monotonic() - t0
        assert got["type"] == "during"
        assert took < 1.0, f"a cross-host send took {took:.2f} s while B's bridge waited for the registry lock"
    finally:
        holder.release()
        holder.kill()
    await wait_for(lambda: on_b in b.core.group_channels("room"), 10, "the membership made once the lock is free")
    await a.group_send("room", {"type": "after"})
    assert (await asyncio.wait_for(b.receive(on_b), 10))["type"] == "after"
