"""Group fan-out and layer statistics: the parts of ``Core`` that work on
many rings at once.

A group send writes one record per destination *ring*, not per channel: a
``prefix!`` ring whose owner has 200 members of the group gets one record
naming all 200 local parts (the demux there fans it out).  It never raises
ChannelFull; full destinations are counted and logged with channels_redis's
exact wording, so log-based alerts keep working.

Group changes from an event loop (``registry_write``) never wait on the loop
for a registry lock another process holds.
"""

import asyncio
import atexit
import concurrent.futures
import logging
import os
import queue
import threading
import time

from shmchannels import bus as bus_mod
from shmchannels.bus import _shm, blobs, registry
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


#: how long an exiting process lets its queued registry writes finish
EXIT_GRACE_S = 2.0


class _OffLoop:
    """This process's one thread for the registry writes of event loops that
    found the lock held.  One thread keeps them in order: while any is
    queued, later ones queue behind it instead of trying on the loop (a
    discard must not overtake the add before it).

    A daemon thread, not a ThreadPoolExecutor: the interpreter joins an
    executor's threads at exit, so a process leaving with a write queued
    behind a stopped lock holder waited out SQLite's busy timeout (30 s).
    At exit the queued writes get ``EXIT_GRACE_S`` to finish (a cancelled
    caller's change still happens when the lock is merely busy); what is
    still queued after that is abandoned.  The process's own channels'
    memberships go with it anyway (its detach drops them, or the next
    attach's sweep); a named channel's membership that was abandoned is
    logged."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pid = None
        self._queue = None
        self._last = None
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self):
        # the parent's thread is not in the child: start a fresh one there
        self._lock = threading.Lock()
        self._pid = self._queue = self._last = None

    def pending(self):
        last = self._last
        return last is not None and self._pid == os.getpid() and not last.done()

    def submit(self, write, *args, **kwargs):
        with self._lock:
            if self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._run, args=(self._queue,), name="shmchannels-registry",
                                 daemon=True).start()
                self._pid = os.getpid()
                # registered after the bus's detach hook, so it runs before it (atexit is LIFO)
                atexit.register(self._finish_at_exit, self._pid)
            done = concurrent.futures.Future()
            self._queue.put((done, write, args, kwargs))
            self._last = done
            return done

    def _finish_at_exit(self, pid):
        last = self._last
        if pid != os.getpid() or last is None or last.done():
            return
        concurrent.futures.wait([last], timeout=EXIT_GRACE_S)
        if not last.done():
            logger.warning("exiting with group changes still waiting for the registry's lock after %g s: "
                           "they are abandoned", EXIT_GRACE_S)

    @staticmethod
    def _run(writes):
        while True:
            done, write, args, kwargs = writes.get()
            if not done.set_running_or_notify_cancel():
                continue
            try:
                done.set_result(write(*args, **kwargs))
            except BaseException as exc:
                done.set_exception(exc)


_off_loop = _OffLoop()


async def registry_write(write, group, channel):
    """Run ``write(group, channel, until=...)`` (``Core.group_add`` or
    ``group_discard``) from a coroutine without blocking its event loop on a
    lock another process holds (one stopped with SIGSTOP or in a debugger
    inside a group change).

    It first tries on the loop, waiting a few ms at most
    (``registry.HURRY_S``); when the lock stays held it finishes on this
    process's registry thread within SQLite's usual bound (BusError after
    ``registry.BUSY_TIMEOUT_S``), while the caller awaits and the loop's
    other tasks run.  Once submitted the write happens even if the caller is
    cancelled, as the synchronous write always did."""
    if not _off_loop.pending():
        try:
            write(group, channel, until=registry.NOW)
            return
        except registry.Locked:
            pass
    deadline = time.monotonic() + registry.BUSY_TIMEOUT_S
    done = _off_loop.submit(write, group, channel, until=deadline)
    await asyncio.shield(asyncio.wrap_future(done))


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
