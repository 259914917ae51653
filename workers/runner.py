"""Run consumers on messages from the bus: the body of a worker process.

``threads`` consumer threads each block in ``receive(channels, block=True)``
(a futex wait with the GIL released) and call the routed consumer
synchronously.  Around every consumer:

* sends are held until it returns (``Channel.send`` / ``Group.send``), so a
  consumer that raises sends nothing;
* a message whose ``"__taken__"`` names a channel (the protocol server asks
  who takes it) is first answered there with ``{"__taken__": [slot, gen],
  "reply_channel": ...}`` (plus the ``order`` of a WebSocket message), so
  that the protocol server can answer at once if this process dies while the
  consumer runs; the key is removed before the consumer sees the message;
* an exception is logged with its traceback; an ``http.request`` that got no
  response is answered 500, a ``websocket.connect`` / ``websocket.receive``
  closes its socket with 1011 (HTTP 500 during the handshake); the worker
  keeps running;
* after a ``websocket.connect`` / ``websocket.receive`` the worker sends
  ``{"__ack__": order}`` to the connection, which lets the protocol server
  hand it the connection's next message (docs/protocol.md): one message of a
  connection at a time, in order, whatever worker takes it;
* a message no route matches is dropped, logged once per channel.

``busy_since()`` tells the supervisor how long the longest-running consumer
has been running ("consumer ran past its timeout").
"""

import fnmatch
import logging
import threading
import time

from shmchannels import counters, objects

from .message import Message

logger = logging.getLogger("shmchannels.worker")

ACKED = frozenset(("websocket.connect", "websocket.receive"))


def select_channels(channels, only=(), exclude=()):
    chosen = sorted(channels)
    if only:
        chosen = [c for c in chosen if any(fnmatch.fnmatchcase(c, g) for g in only)]
    if exclude:
        chosen = [c for c in chosen if not any(fnmatch.fnmatchcase(c, g) for g in exclude)]
    return chosen


class ConsumerRunner:
    def __init__(self, layer, router, channels=None, threads=1, max_messages=None):
        self.layer = layer
        self.router = router
        self.channels = list(channels) if channels is not None else sorted(router.channels())
        if not self.channels:
            raise ValueError("the routing gives this worker no channel to listen on")
        self.threads = max(1, threads)
        self.max_messages = max_messages
        self.alive = True
        self.handled = 0
        self._busy = {}  # thread ident -> start (time.monotonic_ns) of the consumer it runs
        self._unrouted = set()
        self._lock = threading.Lock()
        self._threads = []
        #: run time and exceptions per channel, in this process's stats segment
        self.counts = counters.ConsumerCounts(layer)

    # ----------------------------------------------------------------- loop

    def start(self):
        for i in range(self.threads):
            t = threading.Thread(target=self._thread_main, name=f"consumer-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self):
        """Stop taking messages; consumers already running finish."""
        self.alive = False
        self.layer.wake_receivers(self.channels)  # threads parked in receive()

    def join(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def _thread_main(self):
        receive = self.layer.receive
        channels = self.channels
        while self.alive:
            try:
                channel, content = receive(channels, block=True)
            except Exception:
                logger.exception("receiving from the bus failed")
                time.sleep(0.5)
                continue
            if channel is not None:
                self.handle(channel, content)

    # -------------------------------------------------------------- handling

    def handle(self, channel, content):
        ident = threading.get_ident()
        # one clock read: time.monotonic() is this clock in seconds (busy_since)
        self._busy[ident] = started = time.monotonic_ns()
        raised = False
        if "__taken__" in content:
            self._say_taken(content)
        try:
            raised = self._dispatch(channel, content)
        finally:
            self._busy.pop(ident, None)
            self.counts.consumed(channel, time.monotonic_ns() - started, raised)
            with self._lock:
                self.handled += 1
                if self.max_messages and self.handled >= self.max_messages:
                    logger.info("handled %d messages (max_requests): restarting", self.handled)
                    self.alive = False
                    self.counts.max_requests_reached()

    def _say_taken(self, content):
        """Tell the protocol server which process holds its message."""
        where = content.pop("__taken__")
        reply = content.get("reply_channel")
        if not reply or type(where) is not str:
            return
        ident = list(self.layer.process_id())
        order = content.get("order")
        try:
            self.layer.send(where, {"__taken__": ident if order is None else ident + [order], "reply_channel": reply})
        except Exception:  # a full ring: the server falls back to its timeouts
            logger.debug("could not send __taken__ to %s", where, exc_info=True)

    def _dispatch(self, channel, content):
        message = Message(content, channel, self.layer)
        try:
            found = self.router.match(message)
        except Exception:
            logger.exception("routing a message on %s failed", channel)
            found = None
        if found is None:
            if channel not in self._unrouted:
                self._unrouted.add(channel)
                logger.warning("no route matches a message on %r (dropped; logged once per channel)", channel)
            self._ack(channel, content)
            return False
        consumer, kwargs = found
        try:
            with objects.deferred_sends():
                consumer(message, **kwargs)
            return False
        except Exception:
            logger.exception("consumer %s raised on %s", getattr(consumer, "__qualname__", consumer), channel)
            if channel == "http.request" and content.get("reply_channel"):
                self._safe_send(
                    content["reply_channel"],
                    {"status": 500, "headers": [[b"content-type", b"text/plain"]], "content": b"Internal Server Error"},
                )
            elif channel in ACKED and content.get("reply_channel"):
                self._safe_send(content["reply_channel"], {"close": 1011})
            return True
        finally:
            self._ack(channel, content)

    def _ack(self, channel, content):
        if channel in ACKED and content.get("reply_channel") and "order" in content:
            self._safe_send(content["reply_channel"], {"__ack__": content["order"]})

    def _safe_send(self, channel, message):
        try:
            self.layer.send(channel, message)
        except Exception:
            logger.exception("could not send to %s", channel)

    def busy_since(self):
        """Start time (time.monotonic) of the longest-running consumer, or None."""
        busy = list(self._busy.values())
        return min(busy) / 1e9 if busy else None
