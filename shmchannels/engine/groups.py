"""Group fan-out and layer statistics: the parts of ``Core`` that work on
many rings at once.

A group send writes one record per destination *ring*, not per channel: a
``prefix!`` ring whose owner has 200 members of the group gets one record
naming all 200 local parts (the demux there fans it out).  It never raises
ChannelFull; full destinations are counted and logged with channels_redis's
exact wording, so log-based alerts keep working.
"""

import logging

from shmchannels import bus as bus_mod
from shmchannels.bus import _shm, blobs
from shmchannels.bus.codec import MSGPACK

logger = logging.getLogger("shmchannels.layers")


def fan_out(bus, group, targets, body, expiry_ns, get_capacity, blob=None):
    """Put ``body`` once into the ring of every target; returns how many
    channels it was delivered to.  ``targets``: ring key -> (channels, meta).

    With ``blob`` (a ``bus.blobs.Blob`` holding ``body``), each record names
    a hard link of its own to that one blob: the message is in /dev/shm once
    whatever the number of destination rings, and each receiving process
    unlinks its own name."""
    over = delivered = total = 0
    flags = MSGPACK if blob is None else blobs.BLOB
    payload = body
    refs = iter(blob.refs(len(targets))) if blob is not None else None
    try:
        for key, (channels, meta) in targets.items():
            total += len(channels)
            if refs is not None:
                payload = next(refs)
            ring = bus.rings.get(key)
            if ring is None:  # owner died; its memberships are being reclaimed
                continue
            status = ring.put(payload, meta, expiry_ns, get_capacity(channels[0]), flags)
            if status == bus_mod.PUT_OK or status == bus_mod.PUT_WAKE:
                if refs is not None:
                    blob.sent(payload)
                if status == bus_mod.PUT_WAKE:
                    bus.wakeups.wake(ring)
                delivered += len(channels)
                continue
            if status in (bus_mod.PUT_FULL, bus_mod.PUT_NOSPACE, bus_mod.PUT_NOMEM):
                if not bus.recovery.reclaim_dead_owners((key,)):
                    over += len(channels)
            elif status == bus_mod.PUT_CLOSED:
                bus.rings.forget(key)
            else:
                bus.recovery.settle_put(status, ring, key, payload, meta, expiry_ns, 0, flags)  # raises
    finally:
        if blob is not None:
            blob.publish()
    if over:
        logger.info("%s of %s channels over capacity in group %s", over, total, group)
    return delivered


def channel_statistics(ring):
    """The ASGI 1 statistics extension's view of one ring (None: no such channel)."""
    if ring is None:
        return {}
    st = ring.stats()
    now = _shm.monotonic_ns()
    return {
        "messages_count": st["sent"],
        "messages_pending": st["pending"],
        "messages_max_age": (now - st["oldest_sent_ns"]) / 1e9 if st["oldest_sent_ns"] else 0,
        "channel_full_count": st["full"],
        "messages_expired": st["expired"],
    }


def global_statistics(rings):
    now = _shm.monotonic_ns()
    stats = [r.stats() for r in rings]
    oldest = [s["oldest_sent_ns"] for s in stats if s["oldest_sent_ns"]]
    return {
        "messages_count": sum(s["sent"] for s in stats),
        "messages_pending": sum(s["pending"] for s in stats),
        "messages_max_age": (now - min(oldest)) / 1e9 if oldest else 0,
        "channel_full_count": sum(s["full"] for s in stats),
        "messages_expired": sum(s["expired"] for s in stats),
    }
