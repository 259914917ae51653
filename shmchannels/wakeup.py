"""Parking asyncio receivers until a ring has something for them.

Each process has one wake FIFO per bus (``@w<slot>`` in /dev/shm).  A task
that finds nothing to receive registers its process's slot bit on the ring
(``fifo_add``), re-checks, and awaits a future.  A producer that commits a
record to a ring with registered slots writes one byte to each of their
FIFOs; every event loop that has waiters watches the FIFO with
``add_reader`` and, when it fires, drains process-specific rings into their
channel buffers and resolves exactly the futures whose channel (or ring) now
has data.  Waking a loop costs one kernel wake-up per burst, not per message,
and an idle process sleeps in epoll: no polling.

The waiter itself never receives: a woken task pops its own message, so a
task cancelled while parked loses and duplicates nothing.

Every park also has a long safety timeout (``park_timeout``).  It only
matters if a producer was killed between committing a record and writing the
wake byte, or if a ring's head record belongs to a writer that died, which
the re-check then hands to ``Bus.unstick``.
"""

import asyncio
import threading
import weakref


def _resolve(fut):
    if not fut.done():
        fut.set_result(None)


class Hub:
    def __init__(self, bus):
        self.bus = bus
        self.lock = threading.Lock()
        self.waiters = {}  # ring -> {waiter: None}   (dict as an ordered set)
        self.keys = {}  # ring -> ring key
        self.loops = weakref.WeakSet()

    async def wait(self, ring, key, ready, channel=None, timeout=None):
        """Return when ``ready()`` may be true, or after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        waiter = (loop, fut, channel)
        with self.lock:
            ws = self.waiters.get(ring)
            if ws is None:
                ws = self.waiters[ring] = {}
                self.keys[ring] = key
                ring.fifo_add(self.bus.slot)
            ws[waiter] = None
            if loop not in self.loops:
                loop.add_reader(self.bus.fifo_fd, self._on_readable)
                self.loops.add(loop)
        handle = loop.call_later(timeout, _resolve, fut) if timeout else None
        try:
            # A record committed before our bit was visible woke nobody:
            # look again now that it is.
            if not ready():
                await fut
        finally:
            if handle is not None:
                handle.cancel()
            with self.lock:
                ws.pop(waiter, None)
                if not ws and self.waiters.get(ring) is ws:
                    del self.waiters[ring]
                    del self.keys[ring]
                    ring.fifo_remove(self.bus.slot)

    def _on_readable(self):
        self.bus.drain_fifo()
        self.dispatch()

    def dispatch(self):
        """Resolve the futures of every waiter whose ring or channel has data."""
        with self.lock:
            items = [(ring, self.keys[ring], list(ws)) for ring, ws in self.waiters.items()]
        if not items:
            return
        self.bus.check_flush_epoch()
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        demux = self.bus._demux
        for ring, key, ws in items:
            if key.endswith("!") and demux is not None and key in demux.capacity_of:
                touched = demux.drain(ring, key, {w[2] for w in ws if w[2] is not None})
                if key in demux.ordered:
                    wake = [w for w in ws if demux.has_ordered(key)]
                else:
                    wake = [w for w in ws if w[2] in touched or (w[2] is not None and demux.has(w[2]))]
            elif ring.has_data() or ring.closed:
                wake = ws
            else:
                continue
            for loop, fut, _channel in wake:
                self._wake(current, loop, fut)

    @staticmethod
    def _wake(current, loop, fut):
        if loop is current:
            _resolve(fut)
        else:
            try:
                loop.call_soon_threadsafe(_resolve, fut)
            except RuntimeError:  # that loop is closed; its waiter is gone with it
                pass

    def close(self):
        for loop in list(self.loops):
            try:
                if not loop.is_closed():
                    loop.remove_reader(self.bus.fifo_fd)
            except (RuntimeError, ValueError):
                pass
        with self.lock:
            for ring in self.waiters:
                ring.fifo_remove(self.bus.slot)
            self.waiters.clear()
            self.keys.clear()

    def forget_after_fork(self):
        # The child's loops (if any) are new; the parent's registrations are
        # the parent's.  Nothing to undo in shared memory.
        self.lock = threading.Lock()
        self.waiters = {}
        self.keys = {}
        self.loops = weakref.WeakSet()
