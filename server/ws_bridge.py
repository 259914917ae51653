"""A WebSocket connection's messages to the channel layer, in order.

Workers are many and share nothing, so two messages of one connection sent
at once could be handled out of order.  Hence one message per connection in
flight: each ``websocket.connect`` / ``websocket.receive`` gets the next
``order`` and waits here until the previous one's ``{"__ack__": n}`` came
back, or ``ack_timeout`` passed, or the worker holding it died (it said who
it is on the server's ``shmchannels.taken?`` channel: ``taken``; the
server's liveness sweep calls ``worker_died``).  The queue is bounded by
pausing the socket above ``ws_max_queue``.  ``websocket.disconnect`` (order
last + 1, no ack expected) goes out after every earlier message, so a
consumer never sees a disconnect before the messages that preceded it.

The framing side (``ws_protocol.WebSocketProtocol``) decides what a
connection says; this class decides when it reaches the workers.
"""

import collections
import logging

from .markers import worker_ident

logger = logging.getLogger("shmchannels.server")

DISCONNECT = "websocket.disconnect"


class ChannelBridge:
    def __init__(self, conn, reply_channel, path):
        self.conn = conn
        self.server = server = conn.server
        self.layer = server.layer
        self.config = server.config
        self.loop = server.loop
        self.reply_channel = reply_channel
        self.path = path
        self.queue = collections.deque()  # (channel, message) waiting for their turn
        self.inflight = None  # order awaiting its ack
        self.worker = None  # WorkerId of the worker holding the message in flight, once it said so
        self.next_order = 1
        self.ack_handle = None
        self.disconnect_sent = False

    # ------------------------------------------------------------ messages

    def connect(self, message):
        """Send ``websocket.connect`` (order 0); ChannelFull / MessageTooLarge propagate."""
        self.layer.send("websocket.connect", message)
        self._await_ack(0)

    def receive(self, text, data):
        """A message from the client: ``websocket.receive`` in its turn."""
        self.queue.append(("websocket.receive", {
            "reply_channel": self.reply_channel, "path": self.path,
            "text": text, "bytes": data, "order": self.next_order,
            "__taken__": self.server.taken_channel,
        }))
        self.next_order += 1
        if self.inflight is None:
            self._pump()
        if len(self.queue) > self.config.ws_max_queue:
            self.conn.pause_reading()

    def disconnect(self, code):
        """The socket is closed: ``websocket.disconnect`` after the rest."""
        if self.disconnect_sent:
            return
        self.queue.append((DISCONNECT, {
            "reply_channel": self.reply_channel, "path": self.path,
            "code": code, "order": self.next_order,
        }))
        self.next_order += 1
        self._pump()

    def forget(self):
        """No consumer saw a connect: there is no disconnect to pair with it."""
        self.disconnect_sent = True

    def give_up(self):
        """graceful_timeout passed: stop waiting for acks (the worker may be
        gone) and send websocket.disconnect now, if it is queued."""
        if self.disconnect_sent:
            return
        self._release()
        self.queue = collections.deque(item for item in self.queue if item[0] == DISCONNECT)
        if self.queue:
            self._pump()

    def _pump(self):
        layer = self.layer
        queue = self.queue
        while self.inflight is None and queue:
            channel, message = queue.popleft()
            if channel == DISCONNECT:
                try:
                    layer.send(channel, message)
                except (layer.ChannelFull, layer.MessageTooLarge):
                    logger.warning("websocket.disconnect is full; dropped for %s", self.reply_channel)
                self._finalize()
                return
            try:
                layer.send(channel, message)
            except layer.ChannelFull:
                self.server.counters["rejected_full"] += 1
                logger.warning("websocket.receive is full: closing %s with 1013", self.reply_channel)
                queue.clear()
                self.conn.close_with(1013)
                return
            except layer.MessageTooLarge:
                queue.clear()
                self.conn.close_with(1009)
                return
            self._await_ack(message["order"])
        if len(queue) <= self.config.ws_max_queue:
            self.conn.resume_reading()

    def _finalize(self):
        """websocket.disconnect is out: forget this connection."""
        self.disconnect_sent = True
        self._release()
        self.server.channels.pop(self.reply_channel, None)
        self.layer.discard_channel(self.reply_channel)
        self.server.connection_closed()

    # ---------------------------------------------------------------- acks

    def _await_ack(self, order):
        self.inflight = order
        if self.config.ack_timeout:
            self.ack_handle = self.loop.call_later(self.config.ack_timeout, self._ack_timeout, order)

    def on_ack(self, order):
        if order != self.inflight:
            logger.debug("stale ack %r on %s (waiting for %r)", order, self.reply_channel, self.inflight)
            return
        self._release()
        self._pump()

    def _release(self):
        """Nothing is in flight any more (acked, timed out, or its worker died)."""
        if self.ack_handle is not None:
            self.ack_handle.cancel()
            self.ack_handle = None
        self.inflight = None
        if self.worker is not None:
            self.worker = None
            self.server.taken.pop(self, None)

    def _ack_timeout(self, order):
        self.ack_handle = None
        if self.inflight == order:
            logger.warning(
                "no ack for message %d of %s within %ss; sending the next one",
                order, self.reply_channel, self.config.ack_timeout,
            )
            self.server.counters["ack_timeouts"] += 1
            self._release()
            self._pump()

    # --------------------------------------------------------- worker news

    def taken(self, who):
        """The worker that took a message said who it is (``[slot, gen, order]``)."""
        ident = worker_ident(who)
        if ident is None or len(who) < 3:
            logger.warning("malformed __taken__ marker for %s: %.100r", self.reply_channel, who)
            return
        order = who[2]
        if order != self.inflight:
            return  # about a message already acknowledged or given up on
        if self.inflight is not None:
            self.worker = ident
            self.server.taken[self] = ident

    def worker_died(self):
        """The worker holding the message in flight is dead (the server's
        liveness sweep delivered every reply it had sent first)."""
        self.worker = None
        order = self.inflight
        if order is None:
            return
        self.server.counters["worker_deaths"] += 1
        self._release()
        if order == 0 and self.conn.connect_pending():
            logger.error("the worker handling websocket.connect of %s died: 503", self.reply_channel)
            self.conn.reject(503, b"Service Unavailable: the worker handling the connection died")
            return
        logger.warning("the worker handling message %d of %s died; sending the next one", order, self.reply_channel)
        self._pump()
