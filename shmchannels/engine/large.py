"""Sending messages too large for a ring: the message goes into a blob
(``shmchannels/bus/blobs.py``) and each ring record names it.

``Core`` sends a record over ``blobs.inline_max(ring_size)`` (256 KiB with
8 MiB rings) through here, so ring use stays bounded whatever the message
size; ``max_message_size`` is only the user's limit.
"""

import logging

from shmchannels import bus as bus_mod
from shmchannels.bus import _shm, blobs
from shmchannels.engine import groups
from shmchannels.exceptions import ChannelFull, MessageTooLarge

logger = logging.getLogger("shmchannels.layers")

#: a sender of blobs sweeps the bus's garbage blobs at most this often, so
#: those of dead processes go without waiting for a janitor or an attach
SWEEP_EVERY_NS = 1_000_000_000


def check_size(body, limit, what, name):
    if len(body) > limit:
        raise MessageTooLarge(f"{what} {name!r} is {len(body)} bytes encoded; max_message_size is {limit}")


class BlobSender:
    def __init__(self, expiry_ns):
        self.expiry_ns = expiry_ns
        self._swept = 0

    def new(self, bus, body, where):
        now = _shm.monotonic_ns()
        if now - self._swept > SWEEP_EVERY_NS:
            self._swept = now
            bus.recovery.sweep_blobs()
        return blobs.Blob(bus.stem, bus.owner_tag, now + self.expiry_ns, body, where)

    def send(self, bus, route, channel, body):
        """``Core.send`` of a large message; False if it was dropped (the
        channel's owner is gone).  ChannelFull as for any send, also when
        /dev/shm has no room for the blob."""
        ring, key, meta, capacity = route
        blob = self.new(bus, body, channel)
        (ref,) = blob.refs(1)
        sent = False
        try:
            status = ring.put(ref, meta, self.expiry_ns, capacity, blobs.BLOB)
            sent = status == bus_mod.PUT_OK or bus.recovery.settle_put(
                status, ring, key, ref, meta, self.expiry_ns, capacity, blobs.BLOB)
            if sent:
                blob.sent(ref)
        finally:
            blob.publish()  # unlinks the name if no record took it
        return sent

    def group_send(self, bus, group, targets, body, get_capacity):
        """``Core.group_send`` of a large message: one blob, a hard link per
        destination ring.  A full /dev/shm counts every member as over
        capacity (group sends never raise ChannelFull)."""
        try:
            blob = self.new(bus, body, f"group {group}")
        except ChannelFull as exc:
            n = sum(len(channels) for channels, _meta in targets.values())
            logger.info("%s of %s channels over capacity in group %s (%s)", n, n, group, exc)
            return 0
        return groups.fan_out(bus, group, targets, body, self.expiry_ns, get_capacity, blob)
