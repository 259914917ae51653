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

A worker hosting an ASGI 3 application (``serve MODULE:APP``) answers the
connect with ``{"__bind__": [slot, gen, channel, resumable]}`` first: the
connection is then *hosted* by one application instance, and every later
event (client frames, the disconnect, and the messages sent to the
consumer's channel ``inbox``, which is ours) goes to ``channel`` with the
next ``order``, up to ``ws_max_queue`` of them not yet taken by the
instance (each ``{"__ack__": n}`` says one was).  What was sent but not
taken is kept: when the hosting worker hands the connection over
(``{"__resume__": True}``, a HUP) or dies, ``websocket.connect`` is sent
again with ``"resume": count`` and, once another instance is bound, the
events it has not taken follow, in order (docs/protocol.md, "ASGI 3
applications").

The framing side (``ws_protocol.WebSocketProtocol``) decides what a
connection says; this class decides when it reaches the workers.
"""

import collections
import logging

from shmchannels.names import new_local_part

from .markers import worker_ident

logger = logging.getLogger("shmchannels.server")

DISCONNECT = "websocket.disconnect"
RECEIVE = "websocket.receive"
RELAY = "relay"  # a message sent to the connection's inbox
#: relayed messages a hosted connection may hold before it drops new ones
#: (group senders cannot be paused the way a socket's reader is)
MAX_RELAYED = 1000


class Inbox:
    """``server.channels`` entry of a connection's inbox: messages sent to the
    consumer's ``channel_name`` while its application is hosted in a worker."""

    __slots__ = ("bridge",)

    def __init__(self, bridge):
        self.bridge = bridge

    def on_reply(self, message):
        self.bridge.relay(message)

    def reply_failed(self, reason):
        logger.error("a message for %s could not be relayed: %s", self.bridge.reply_channel, reason)


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

    def relay(self, message):
        """A message for the consumer's channel (its ``inbox``): to the
        hosting instance in its turn, or dropped if nobody can take it."""
        if self.disconnect_sent or self.relayed >= MAX_RELAYED:
            self.server.counters["relays_dropped"] += 1
            logger.warning("a message for the consumer of %s was dropped (%s)", self.reply_channel,
                           "the connection is closed" if self.disconnect_sent else f"{MAX_RELAYED} already wait")
            return
        self.queue.append((self.next_order, RELAY, message))
        self.next_order += 1
        self.relayed += 1
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

    def _pump_hosted(self):
        """Events to the bound instance, up to ``ws_max_queue`` not yet taken;
        once the socket is closed, all of them (nothing more will come)."""
        if self.bound is None:
            return  # between two instances: everything waits here
        layer = self.layer
        queue = self.queue
        unacked = self.unacked
        channel = self.bound[1]
        window = self.config.ws_max_queue
        closing = self.conn.transport_closed
        while queue and (closing or len(unacked) < window):
            order, kind, payload = queue.popleft()
            if kind == RECEIVE:
                text, data = payload
                event = {"type": RECEIVE, "order": order}
                if text is not None:
                    event["text"] = text
                else:
                    event["bytes"] = data
            elif kind == RELAY:
                self.relayed -= 1
                event = {"__channel__": payload, "order": order}
            else:
                event = {"type": DISCONNECT, "code": payload, "order": order}
            try:
                layer.send(channel, event)
            except layer.MessageTooLarge:
                if kind == RELAY:
                    logger.warning("a message for the consumer of %s is too large to relay; dropped", self.reply_channel)
                    continue
                queue.clear()
                self.conn.close_with(1009)
                return
            except layer.ChannelFull:
                queue.appendleft((order, kind, payload))
                if kind == RELAY:
                    self.relayed += 1
                if not unacked and self.retry_handle is None:  # no ack will come to pump again: retry
                    self.full_delay = min(max(self.full_delay * 2, 0.001), 0.05)
                    self.retry_handle = self.loop.call_later(self.full_delay, self._retry_pump)
                break
            self.full_delay = 0.0
            if kind == DISCONNECT:
                self._finalize()
                return
            unacked[order] = (kind, payload)
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

    def worker_died(self):
        """The worker holding the message in flight, or hosting the
        connection, is dead (the server's liveness sweep delivered every reply
        it had sent first)."""
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

    # ------------------------------------------------- hosted connections

    def bind(self, who):
        """The first reply of an ASGI worker that took our connect:
        ``[slot, gen, channel, resumable]``; our events go there from now on."""
        if type(who) not in (list, tuple) or len(who) < 3 or worker_ident(who) is None or type(who[2]) is not str:
            logger.warning("malformed __bind__ for %s: %.100r", self.reply_channel, who)
            return
        ident, channel = worker_ident(who), who[2]
        if self.bound is not None or self.disconnect_sent:
            # a second instance (a connect sent twice) or a connection already gone
            self.layer.send(channel, {"__drop__": True})
            return
        self._release()
        self.hosted = True
        self.bound = (ident, channel)
        self.resumable = bool(who[3]) if len(who) > 3 else True
        self.server.hosting[self] = ident  # the liveness sweep watches the hosting worker
        if self.write_paused:
            self._tell_flow(False)
        self._pump_hosted()

    def flow(self, flowing):
        """The socket's write buffer went over its high-water mark (or back
        under): the hosted instance's sends wait meanwhile.  A Channels 1
        consumer has nothing to hold."""
        self.write_paused = not flowing
        if self.bound is not None:
            self._tell_flow(flowing)

    def _tell_flow(self, flowing):
        try:
            self.layer.send(self.bound[1], {"__flow__": flowing})
        except Exception:
            logger.debug("could not tell %s to %s", self.bound[1], "resume" if flowing else "hold", exc_info=True)

    def unbind(self):
        if self.bound is not None:
            self.bound = None
            self.server.hosting.pop(self, None)

    def handover(self):
        """``{"__resume__": True}``: the hosting worker is stopping (a HUP)
        and ended its instance between two events; every reply it sent came
        before this one."""
        if self.bound is None:
            return
        self.resume()

    def resume(self):
        """Replay the connect into another worker; what the old instance did
        not take goes to the new one."""
        self.unbind()
        if self.disconnect_sent:
            return
        if not self.resumable:
            logger.info("the worker hosting %s left and resume is off: closing with 1012", self.reply_channel)
            self._abandon(1012)
            return
        for order in sorted(self.unacked, reverse=True):
            kind, payload = self.unacked[order]
            self.queue.appendleft((order, kind, payload))
            if kind == RELAY:
                self.relayed += 1
        self.unacked.clear()
        self.resumes += 1
        self.server.counters["resumes"] += 1
        self._send_resume()

    def _retry_pump(self):
        self.retry_handle = None
        if not self.disconnect_sent:
            self._pump_hosted()

    def _send_resume(self, delay=0.0):
        """``websocket.connect`` again, with ``resume``.  A full channel (a
        HUP resumes every socket at once) is waited out, backing off to
        0.1 s: the client is already accepted, so there is no hurry to refuse."""
        self.retry_handle = None
        if self.disconnect_sent or self.bound is not None:
            return
        message = dict(self.connect_message, resume=self.resumes)
        layer = self.layer
        try:
            layer.send("websocket.connect", message)
        except layer.ChannelFull:
            delay = min(max(delay * 2, 0.002), 0.1)
            self.retry_handle = self.loop.call_later(delay, self._send_resume, delay)
            return
        except layer.MessageTooLarge:
            logger.error("cannot resume %s: its connect message no longer fits the layer: closing with 1009",
                         self.reply_channel)
            self._abandon(1009)
            return
        self._await_ack(0)

    def _abandon(self, code):
        """No instance will host this connection again: close it; its
        disconnect has nobody to go to."""
        self.abandoned = True
        self.unacked.clear()
        self.queue.clear()
        self.relayed = 0
        if self.conn.transport_closed:
            self._finalize()
        else:
            self.conn.close_with(code)
