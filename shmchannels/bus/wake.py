"""Wake FIFOs: how a producer wakes processes parked on a ring.

Every attached process makes one FIFO, ``w<slot>`` in /dev/shm, fresh for
each slot generation.  A process parked on a ring (asyncio receivers, via
``shmchannels.engine.wakeup``) registers its slot bit on the ring; a producer
whose put reports ``PUT_WAKE`` writes one byte to the FIFO of every
registered slot.  One byte per burst, not per message: a full FIFO already
holds a pending wake-up.  (Blocking receivers park in a futex wait on the
ring itself and need no FIFO.)
"""

import os

from shmchannels.bus import segments


def fifo_name(stem, slot):
    return segments.file_name(stem, f"w{slot:03x}")


class WakeFifos:
    """This process's own wake FIFO, and the open FIFOs of the others."""

    def __init__(self, stem, slot, slot_gen):
        self.stem = stem
        self._slot_gen = slot_gen  # slot -> its current generation (a shared-memory load)
        self.path = segments.make_fifo(fifo_name(stem, slot), fresh=True)
        # O_RDWR keeps the FIFO open for writing too, so it never reports EOF.
        self.fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        # Others' FIFOs are cached per slot together with the slot's
        # generation: a slot's next process makes a new FIFO, and a byte
        # written to the old one would wake nobody.
        self._peers = {}  # slot -> (gen, fd)
        self.drain()

    def drain(self):
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def wake(self, ring):
        """Write one byte to the FIFO of every process parked on ``ring``."""
        for slot in ring.fifo_slots():
            gen = self._slot_gen(slot)
            cached = self._peers.get(slot)
            if cached is not None and cached[0] != gen:
                self.forget(slot)
                cached = None
            if cached is None:
                try:
                    fd = os.open(segments.path(fifo_name(self.stem, slot)), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError:  # no FIFO or no reader: that slot's process is gone
                    ring.fifo_remove(slot)
                    continue
                cached = self._peers[slot] = (gen, fd)
            try:
                os.write(cached[1], b"\0")
            except BlockingIOError:
                pass  # the FIFO is full, so a wake-up is already pending
            except OSError:
                self.forget(slot)

    def forget(self, slot):
        cached = self._peers.pop(slot, None)
        if cached is not None:
            os.close(cached[1])

    def forget_dead(self, is_alive):
        """Close the cached FIFOs of slots whose process is gone; True if any."""
        gone = [slot for slot in self._peers if not is_alive(slot)]
        for slot in gone:
            self.forget(slot)
        return bool(gone)

    def close(self):
        for _gen, fd in self._peers.values():
            os.close(fd)
        self._peers.clear()
        os.close(self.fd)

    def forget_after_fork(self):
        """In a forked child: close the inherited descriptors, touch nothing shared."""
        for fd in [fd for _gen, fd in self._peers.values()] + [self.fd]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._peers = {}
