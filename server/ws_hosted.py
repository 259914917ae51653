"""Hosted WebSocket connections: one ASGI 3 instance in a worker at a time.

A worker hosting an ASGI 3 application (``serve MODULE:APP``) answers the
connect with ``{"__bind__": [slot, gen, channel, resumable]}`` first: the
connection is then *hosted* by one application instance, and every later
event (client frames, the disconnect, and the messages sent to the
consumer's channel ``inbox``, which is ours) goes to ``channel`` with the
next ``order``, up to ``ws_max_queue`` of them not yet handled by the
instance (each ``{"__ack__": n}`` says one was).  What was sent but not
handled is kept: when the hosting worker hands the connection over
(``{"__resume__": True}``, a HUP) or dies, ``websocket.connect`` is sent
again with ``"resume": count`` and, once another instance is bound, the
events it has not handled follow, in order (docs/protocol.md, "ASGI 3
applications").

A HUP hands over without a gap the client can see: the stopping worker asks
for a successor (``{"__successor__": True}``) and keeps serving while the
connect is replayed into another worker; when the successor's
``__bind__`` comes, the old instance is told to ``__yield__``, ends between
two events, says ``__resume__``, and the successor takes over with what the
old one had not handled.
"""

import logging

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


class HostedConnection:
    """The hosted half of ``ws_bridge.ChannelBridge``: its state is set up in
    ``ChannelBridge.__init__`` (``inbox``, ``bound``, ``unacked``, ...)."""

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

    def _pump_hosted(self):
        """Events to the bound instance, up to ``ws_max_queue`` not yet handled;
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


    def bind(self, who):
        """The first reply of an ASGI worker that took our connect:
        ``[slot, gen, channel, resumable]``; our events go there from now on
        (or, while the hosting worker hands over, once it has yielded)."""
        if type(who) not in (list, tuple) or len(who) < 3 or worker_ident(who) is None or type(who[2]) is not str:
            logger.warning("malformed __bind__ for %s: %.100r", self.reply_channel, who)
            return
        ident, channel = worker_ident(who), who[2]
        resumable = bool(who[3]) if len(who) > 3 else True
        if self.bound is not None and self.wants_successor and self.successor is None and not self.disconnect_sent:
            # The successor ran connect() while the old instance still serves:
            # now the old one ends between two events, and this one takes over.
            self._release()
            self.successor = (ident, channel, resumable)
            self._tell(self.bound[1], {"__yield__": True})
            return
        if self.bound is not None or self.disconnect_sent:
            # a second instance (a connect sent twice) or a connection already gone
            self._tell(channel, {"__drop__": True})
            return
        self._release()
        self._bind(ident, channel, resumable)

    def _bind(self, ident, channel, resumable):
        self.hosted = True
        self.bound = (ident, channel)
        self.resumable = resumable
        self.server.hosting[self] = ident  # the liveness sweep watches the hosting worker
        if self.write_paused:
            self._tell_flow(False)
        self._pump_hosted()

    def _tell(self, channel, message):
        try:
            self.layer.send(channel, message)
        except Exception:
            logger.debug("could not send %s to %s", sorted(message), channel, exc_info=True)

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

    def prepare_successor(self):
        """``{"__successor__": True}``: the hosting worker is stopping and
        keeps serving until another instance has run ``connect()``, so the
        client waits only for the switch, not for the new instance to start."""
        if (self.bound is None or self.disconnect_sent or not self.resumable or self.wants_successor
                or self.server.shutting_down):  # a stopping server closes its sockets: no successor
            if self.bound is not None and not self.wants_successor:
                self._tell(self.bound[1], {"__yield__": True})  # no successor to wait for
            return
        self.wants_successor = True
        self.resumes += 1
        self.server.counters["resumes"] += 1
        self._send_resume()

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
        if self.server.shutting_down:  # closing with 1001 anyway: no instance to wait for
            self._abandon(1001)
            return
        for order in sorted(self.unacked, reverse=True):
            kind, payload = self.unacked[order]
            self.queue.appendleft((order, kind, payload))
            if kind == RELAY:
                self.relayed += 1
        self.unacked.clear()
        successor, self.successor = self.successor, None
        asked, self.wants_successor = self.wants_successor, False
        if successor is not None:
            self._bind(*successor)
            return
        if asked:
            return  # the successor's connect is on its way: it binds as a resume
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
        if self.disconnect_sent or (self.bound is not None and not self.wants_successor):
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
