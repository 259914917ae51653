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

A worker hosting an ASGI 3 application binds the connection to one
instance instead (``ws_hosted.HostedConnection``, this class's other half).

The framing side (``ws_protocol.WebSocketProtocol``) decides what a
connection says; this class decides when it reaches the workers.
"""

import collections
import logging

from shmchannels.counters import C
from shmchannels.names import new_local_part

from .markers import worker_ident
from .ws_hosted import DISCONNECT, RECEIVE, RELAY, HostedConnection, Inbox

logger = logging.getLogger("shmchannels.server")
MESSAGES_IN = C["ws_messages_in"]


class ChannelBridge(HostedConnection):
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
        # hosted connections (ASGI 3 workers)
        self.inbox = None  # the consumer's channel_name: ours, so it outlives any worker
        self.connect_message = None  # replayed, with "resume", to resume the connection
        self.hosted = False  # an instance was bound once: never fall back to websocket.receive
        self.bound = None  # (WorkerId, channel) of the instance hosting the connection now
        self.resumable = True
        self.unacked = {}  # order -> (kind, payload): sent to the instance, not yet taken
        self.resumes = 0
        self.relayed = 0  # relayed messages waiting in ``queue``
        self.abandoned = False  # hosted, its worker gone, resume off: closing with nobody to tell
        self.retry_handle = None  # a resume waiting for room in websocket.connect, or events for the instance's
        self.full_delay = 0.0  # the last backoff while the instance's channel was full
        self.write_paused = False  # the client does not read: the instance holds its sends
        self.wants_successor = False  # the hosting worker is stopping and asked for a successor
        self.successor = None  # (WorkerId, channel, resumable) of the instance started to take over

    # ------------------------------------------------------------ messages

    def connect(self, message):
        """Send ``websocket.connect`` (order 0); ChannelFull / MessageTooLarge propagate."""
        self.inbox = inbox = self.server.ws_prefix + new_local_part()
        message["inbox"] = inbox
        self.layer.send("websocket.connect", message)
        self.connect_message = message
        self.server.channels[inbox] = Inbox(self)
        self._await_ack(0)

    def receive(self, text, data):
        """A message from the client: ``websocket.receive`` in its turn."""
        self.server.stats_words[MESSAGES_IN] += 1
        self.queue.append((self.next_order, RECEIVE, (text, data)))
        self.next_order += 1
        if self.inflight is None:
            self._pump()
        if len(self.queue) - self.relayed > self.config.ws_max_queue:
            self.conn.pause_reading()

    def disconnect(self, code):
        """The socket is closed: ``websocket.disconnect`` after the rest."""
        if self.disconnect_sent:
            return
        if self.abandoned:
            self._finalize()
            return
        self.queue.append((self.next_order, DISCONNECT, code))
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
        self.relayed = 0
        self.queue = collections.deque(item for item in self.queue if item[1] == DISCONNECT)
        if self.hosted and self.bound is None:  # no instance to tell
            self.queue.clear()
            self._finalize()
        elif self.queue:
            self._pump()

    def _message(self, order, kind, payload):
        """The Channels 1 message of a queue entry (a worker running consumers)."""
        if kind == DISCONNECT:
            return {"reply_channel": self.reply_channel, "path": self.path, "code": payload, "order": order}
        text, data = payload
        return {"reply_channel": self.reply_channel, "path": self.path, "text": text, "bytes": data,
                "order": order, "__taken__": self.server.taken_channel}

    def _pump(self):
        if self.hosted:
            return self._pump_hosted()
        layer = self.layer
        queue = self.queue
        while self.inflight is None and queue:
            order, kind, payload = queue.popleft()
            if kind == RELAY:  # nobody adopted the inbox: a Channels 1 consumer has no use for it
                self.relayed -= 1
                continue
            message = self._message(order, kind, payload)
            if kind == DISCONNECT:
                try:
                    layer.send(DISCONNECT, message)
                except (layer.ChannelFull, layer.MessageTooLarge):
                    logger.warning("websocket.disconnect is full; dropped for %s", self.reply_channel)
                self._finalize()
                return
            try:
                layer.send(RECEIVE, message)
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
            self._await_ack(order)
        if len(queue) - self.relayed <= self.config.ws_max_queue:
            self.conn.resume_reading()

    def _finalize(self):
        """websocket.disconnect is out: forget this connection."""
        self.disconnect_sent = True
        self._release()
        self.server.channels.pop(self.reply_channel, None)
        self.layer.discard_channel(self.reply_channel)
        if self.inbox is not None:
            self.server.channels.pop(self.inbox, None)
            self.layer.discard_channel(self.inbox)
        self.unacked.clear()
        self.unbind()
        if self.successor is not None:
            self._tell(self.successor[1], {"__drop__": True})
            self.successor = None
        if self.retry_handle is not None:
            self.retry_handle.cancel()
            self.retry_handle = None
        self.server.connection_closed()

    # ---------------------------------------------------------------- acks

    def _await_ack(self, order):
        self.inflight = order
        if self.config.ack_timeout:
            self.ack_handle = self.loop.call_later(self.config.ack_timeout, self._ack_timeout, order)

    def on_ack(self, order):
        if self.hosted:
            if self.unacked.pop(order, None) is not None:
                self._pump_hosted()
            return
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
        if self.hosted and self.bound is None and self.inflight == 0:
            logger.warning("no worker resumed %s within %ss; asking again", self.reply_channel, self.config.ack_timeout)
            self._release()
            self._send_resume()
            return
        if self.inflight == order:
            logger.warning(
                "no ack for message %d of %s within %ss; sending the next one",
                order, self.reply_channel, self.config.ack_timeout,
            )
            self.server.counters["ack_timeouts"] += 1
            self._release()
            self._pump()

    # --------------------------------------------------------- worker news

    def taken(self, who, inbox=None):
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

    def worker_died(self, ident=None):
        """The worker holding the message in flight, or hosting the
        connection, is dead (the server's liveness sweep delivered every reply
        it had sent first)."""
        if self.bound is not None and ident is not None and ident != self.bound[0]:
            # the worker that took the successor's connect died before it bound: ask again
            self._release()
            if self.wants_successor and self.successor is None:
                self._send_resume()
            return
        if self.bound is not None:
            self.server.counters["worker_deaths"] += 1
            logger.debug("the worker hosting %s died: resuming the connection", self.reply_channel)
            self.resume()
            return
        if self.hosted and self.inflight == 0:  # the worker resuming it died before it bound
            self._release()
            self._send_resume()
            return
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
