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

A task parked on a process-specific channel of the dispatching loop is
handed its message directly (its future's result), skipping the buffer; if
it is cancelled before it resumes, it puts the message back at the head of
its buffer, so cancellation loses and duplicates nothing.  Other waiters are
only told to look again, and take their own message.

Parks are bounded by a safety timeout (``park_timeout``): one watchdog timer
per event loop, not one per waiter (500 parked consumers would otherwise
churn 500 timers through the loop's heap on every message).  It only matters
if a producer was killed between committing a record and writing the wake
byte, or if a ring's head record belongs to a writer that died, which the
re-check then hands to ``Recovery.unstick``.
"""

import asyncio
import threading

from shmchannels.bus import head_unready
from shmchannels.engine.demux import signal_waiters


def resolve(fut):
    """Tell the receive parked on ``fut`` to look again (nothing once it is done)."""
    if not fut.done():
        fut.set_result(None)


class Hub:
    def __init__(self, bus, demux):
        self.bus = bus
        self.demux = demux
        self.lock = threading.Lock()
        # ring -> {channel (None for ring-level waiters): [waiter, ...]}, where
        # a waiter is (loop, future, channel) (see demux).  Indexed by channel so that a
        # dispatch delivers a group message to 500 parked consumers in one pass.
        self.waiters = {}
        self.keys = {}  # ring -> ring key
        # Plain dicts keyed by loop (weak containers cost a weakref per
        # lookup on the hot path); closed loops are pruned as they pile up.
        self.loops = {}  # loop -> watchdog TimerHandle or None

    def park(self, ring, key, channel=None, timeout=None, loop=None):
        """Register a waiter on ``loop`` (default: the running loop); returns
        (future, token).

        The caller re-checks for data, awaits the future, and always calls
        ``unpark(token)``.  The future's result is the (deadline, flags,
        body) of a message handed over on wake-up, or None (look again).
        Split from awaiting so that a receive costs one coroutine frame less.
        """
        if loop is None:
            loop = asyncio.get_running_loop()
        fut = loop.create_future()
        waiter = (loop, fut, channel)
        with self.lock:
            ws = self.waiters.get(ring)
            if ws is None:
                ws = self.waiters[ring] = {}
                self.keys[ring] = key
                ring.fifo_add(self.bus.slot)
            lst = ws.get(channel)
            if lst is None:
                ws[channel] = [waiter]
            else:
                lst.append(waiter)
            watchdog = self.loops.get(loop, False)
            if watchdog is False:
                self._watch(loop)
                watchdog = None
            if timeout and watchdog is None:
                self.loops[loop] = loop.call_later(timeout, self._watchdog, loop)
        return fut, (ring, ws, waiter)

    def unpark(self, token):
        """Take a waiter off its ring.  A waiter that was handed a message is
        off already (``deliver`` took it), so this is then a no-op."""
        ring, ws, waiter = token
        _loop, _fut, channel = waiter
        with self.lock:
            lst = ws.get(channel)
            if lst is not None and waiter in lst:
                lst.remove(waiter)
                if not lst:
                    del ws[channel]
            if not ws:
                self._forget_ring(ring, ws)

    def _forget_ring(self, ring, ws):
        """Nobody of this process waits on ``ring`` any more.  Hub lock held."""
        if self.waiters.get(ring) is ws:
            del self.waiters[ring]
            del self.keys[ring]
            ring.fifo_remove(self.bus.slot)

    def cancelled(self, fut, channel):
        """A parked receive was cancelled: a message handed over goes back."""
        if fut.done() and not fut.cancelled() and fut.result() is not None:
            self.demux.requeue(channel, fut.result())

    async def wait(self, ring, key, ready, channel=None, timeout=None):
        """Park until ``ready()`` may be true (or the watchdog fires).
        Returns a handed-over (deadline, flags, body), or None."""
        fut, token = self.park(ring, key, channel, timeout)
        try:
            # A record committed before our bit was visible woke nobody:
            # look again now that it is.
            if not ready():
                return await fut
            return None
        except asyncio.CancelledError:
            self.cancelled(fut, channel)
            raise
        finally:
            self.unpark(token)

    def _watch(self, loop):
        if len(self.loops) > 32:
            for old in [lp for lp in self.loops if lp.is_closed()]:
                del self.loops[old]
        loop.add_reader(self.bus.wakeups.fd, self._on_readable)
        self.loops[loop] = None

    def _watchdog(self, loop):
        """Wake every waiter of ``loop`` to look again (they re-arm by parking)."""
        self.bus.recovery.maintain()
        with self.lock:
            if loop in self.loops:
                self.loops[loop] = None
            futures = [fut for ws in self.waiters.values() for lst in ws.values() for lp, fut, _ in lst if lp is loop]
        for fut in futures:
            resolve(fut)

    def _on_readable(self):
        self.bus.wakeups.drain()
        self.dispatch()

    def dispatch(self):
        """Hand over or signal data to every waiter whose ring or channel has some."""
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        demux = self.demux
        demux.check_flush_epoch()
        elsewhere = []  # waiters of other event loops: told to look again, outside the lock
        with self.lock:
            for ring, ws in list(self.waiters.items()):
                key = self.keys[ring]
                if key.endswith("!") and key in demux.capacity_of:
                    if key in demux.ordered:
                        demux.drain(ring, key, (key,))
                        if demux.has_ordered(key):
                            self._signal(ws, current, elsewhere)
                    else:
                        demux.deliver(ring, key, ws, current, elsewhere)
                        if not ws:  # every waiter was handed its message
                            self._forget_ring(ring, ws)
                    if head_unready(ring):
                        self._signal(ws, current, elsewhere)  # see below
                elif ring.has_data() or ring.closed or ring.pending:
                    # ``pending`` without data: records were committed behind
                    # an unready head (a writer mid-copy, or dead).  The
                    # waiters look, find it, and re-park with the short
                    # STUCK_RECHECK timer that recovers a dead writer's claim.
                    self._signal(ws, current, elsewhere)
        for loop, fut in elsewhere:
            try:
                loop.call_soon_threadsafe(resolve, fut)
            except RuntimeError:  # that loop is closed; its waiter is gone with it
                pass

    @staticmethod
    def _signal(ws, current, elsewhere):
        for lst in ws.values():
            signal_waiters(lst, current, elsewhere)

    def close(self):
        for loop, watchdog in list(self.loops.items()):
            if watchdog is not None:
                watchdog.cancel()
            try:
                if not loop.is_closed():
                    loop.remove_reader(self.bus.wakeups.fd)
            except (RuntimeError, ValueError):
                pass
        with self.lock:
            for ring in self.waiters:
                ring.fifo_remove(self.bus.slot)
            self.waiters.clear()
            self.keys.clear()
