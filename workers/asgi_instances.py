"""ASGI 3 application instances fed from the bus: one per request or connection.

An ``HttpInstance`` turns an ``http.request`` message (docs/protocol.md) into
an ASGI ``http`` scope and its ``receive``/``send`` pair; a
``WebSocketInstance`` does the same for ``websocket.connect`` and the events
its protocol server relays afterwards.  The message formats the application
sees are the ASGI 3 spec's (HTTP 2.3, WebSocket 2.4), and errors are
answered as uvicorn answers them: 500 for an HTTP app that raised before
its response started, close 1011 (500 during the handshake) for a
WebSocket app that raised, 403 for one that returned without accepting.

How a WebSocket instance is hosted (the host is ``asgi_host.AsgiHost``):

* its first reply is ``{"__bind__": [slot, gen, channel, resumable]}``: the
  protocol server then sends the connection's events, each with an
  ``order``, to ``channel`` (this worker's), and keeps each one until the
  instance takes it, which ``{"__ack__": order}`` reports;
* messages sent to the consumer's ``channel_name`` (``hosted.HostedChannel``,
  the protocol server's) arrive the same way, as ``{"__channel__": ...}``;
* a HUP ends the instance *between* events (``freeze`` then ``quiet``: every
  receive it ever had pending is pending again) and sends
  ``{"__resume__": True}``; the protocol server replays ``websocket.connect``
  into another worker, then every event not yet taken.
"""

import asyncio
import collections
import contextvars
import logging
import time

from shmchannels import hosted
from shmchannels.names import new_local_part

logger = logging.getLogger("shmchannels.worker")

ASGI = {"version": "3.0", "spec_version": "2.4"}
DISCONNECT = {"type": "http.disconnect"}


def _pair(value):
    return tuple(value) if value is not None else None


def _headers(headers):
    return [(bytes(k), bytes(v)) for k, v in headers]


class HttpInstance:
    kind = "http"

    def __init__(self, host, message):
        self.host = host
        self.reply = message["reply_channel"]
        self.channel = host.prefix + new_local_part()  # where http.disconnect reaches us
        self.body = message.get("body", b"")
        self.body_channel = message.get("body_channel")
        self.first = True
        self.started = None  # the http.response.start event, until the first body goes out
        self.response_started = False
        self.complete = False
        self.disconnected = False
        self.waiter = None
        self.held = False  # the protocol server's socket is not being read: hold the body
        self.flow_waiter = None
        self.task = None
        self.scope = {
            "type": "http",
            "asgi": ASGI,
            "http_version": message.get("http_version", "1.1"),
            "method": message["method"],
            "scheme": message.get("scheme", "http"),
            "path": message["path"],
            "raw_path": message.get("raw_path") or message["path"].encode(),
            "query_string": message.get("query_string", b""),
            "root_path": message.get("root_path", ""),
            "headers": _headers(message.get("headers", ())),
            "client": _pair(message.get("client")),
            "server": _pair(message.get("server")),
            "extensions": {},
        }
        if host.state is not None:
            self.scope["state"] = dict(host.state)

    def start(self, app):
        self.task = self.host.loop.create_task(self.run(app))

    async def run(self, app):
        started = time.monotonic_ns()
        raised = False
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            raise
        except Exception:
            raised = True
            logger.exception("exception in ASGI application (%s %s)", self.scope["method"], self.scope["path"])
            self._fail()
        else:
            if not self.response_started and not self.disconnected:
                logger.error("ASGI callable returned without starting a response: 500")
                self._fail()
            elif not self.complete and not self.disconnected:
                logger.error("ASGI callable returned without completing its response: closing the connection")
                self.host.reply(self.reply, {"__abort__": True})
        finally:
            self.host.counts.consumed("http.request", time.monotonic_ns() - started, raised)
            self.host.forget(self)

    def _fail(self):
        if self.disconnected:
            return
        if not self.response_started:
            self.host.reply(self.reply, {
                "status": 500, "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                "content": b"Internal Server Error",
            })
        elif not self.complete:
            self.host.reply(self.reply, {"__abort__": True})
        self.complete = True

    def deliver(self, message):
        """A message on our channel: ``http.disconnect``, or ``__flow__``."""
        flowing = message.get("__flow__")
        if flowing is not None:
            self.held = not flowing
        else:
            self.disconnected = True
        self._wake()

    def _wake(self):
        for waiter in (self.waiter, self.flow_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def receive(self):
        if self.first:
            self.first = False
            return {"type": "http.request", "body": self.body, "more_body": self.body_channel is not None}
        if self.body_channel is not None and not self.disconnected:
            _, chunk = await self.host.layer.receive_async([self.body_channel])
            if chunk.get("closed"):
                self.body_channel = None
                self.disconnected = True
                return DISCONNECT
            more = bool(chunk.get("more_content"))
            if not more:
                self.body_channel = None
            return {"type": "http.request", "body": chunk.get("content", b""), "more_body": more}
        while not (self.disconnected or self.complete):
            self.waiter = self.host.loop.create_future()
            await self.waiter
        return DISCONNECT

    async def send(self, event):
        kind = event["type"]
        if kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("Unexpected ASGI message 'http.response.start' sent, after response already started.")
            self.started = event
            self.response_started = True
            return
        if kind != "http.response.body":
            raise RuntimeError(f"Unexpected ASGI message {kind!r} sent to an HTTP connection.")
        if not self.response_started:
            raise RuntimeError("Expected ASGI message 'http.response.start', but got 'http.response.body'.")
        if self.complete:
            raise RuntimeError("Unexpected ASGI message 'http.response.body' sent, after response already completed.")
        more = bool(event.get("more_body", False))
        if more:
            self.host.poll_events()  # a hold may be waiting (see AsgiHost.poll_events)
        while self.held and not self.disconnected:  # a client that does not read slows us down
            self.flow_waiter = self.host.loop.create_future()
            await self.flow_waiter
        if self.disconnected:
            return
        message = {"content": event.get("body", b""), "more_content": more}
        start = self.started
        if start is not None:
            self.started = None
            message["status"] = start["status"]
            message["headers"] = start.get("headers", ())
        if not more:
            self.complete = True
            self._wake()
        await self.host.send_reply(self.reply, message)


class WebSocketInstance:
    kind = "websocket"

    def __init__(self, host, message):
        self.host = host
        self.reply = message["reply_channel"]
        self.channel = host.prefix + new_local_part()
        self.resume = message.get("resume") or 0
        inbox = message.get("inbox")
        self.hosted = hosted.HostedChannel(inbox, host.bus_prefix, self.receive_relayed) if inbox else None
        self.events = collections.deque([(None, {"type": "websocket.connect"})])  # (order, ASGI event)
        self.relayed = collections.deque()  # (order, channel message)
        self.waiters = {}  # which queue -> the future a receive parks on
        self.handling = {}  # which queue -> order of the event the application took last, until it is back
        self.timing = {}  # which queue -> (event type, when it was taken), until the application is back
        self.pending = 0  # receives waiting now
        self.most_pending = 0  # the most ever waiting at once: "between events" means pending == this
        self.frozen = False
        self.quiet = None  # future: set once frozen and between events
        self.successor_ready = None  # future: the protocol server has a successor instance (HUP)
        self.accepted = False
        self.closed = False
        self.disconnected = False
        self.denial = None  # websocket.http.response.start, until its body is complete
        self.denial_body = []
        self.handed_over = False
        self.held = False  # the client does not read: websocket.send waits
        self.gone = False  # the client's disconnect arrived (the app may not have taken it yet)
        self.flow_waiter = None
        self.task = None
        extensions = {"websocket.http.response": {}}
        if self.resume:
            extensions["shmchannels.resume"] = {"count": self.resume}
        self.scope = {
            "type": "websocket",
            "asgi": ASGI,
            "http_version": "1.1",
            "scheme": message.get("scheme", "ws"),
            "path": message["path"],
            "raw_path": message.get("raw_path") or message["path"].encode(),
            "query_string": message.get("query_string", b""),
            "root_path": message.get("root_path", ""),
            "headers": _headers(message.get("headers", ())),
            "client": _pair(message.get("client")),
            "server": _pair(message.get("server")),
            "subprotocols": list(message.get("subprotocols") or ()),
            "extensions": extensions,
        }
        if host.state is not None:
            self.scope["state"] = dict(host.state)

    def start(self, app):
        context = contextvars.copy_context()
        context.run(hosted.CURRENT.set, self.hosted)
        self.task = self.host.loop.create_task(self.run(app), context=context)

    async def run(self, app):
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            if not self.handed_over:
                raise
        except Exception:
            logger.exception("exception in ASGI application (WebSocket %s)", self.scope["path"])
            for which in list(self.timing):
                self._count(which, raised=True)
            if not self.closed and not self.disconnected:
                self.closed = True
                self.host.reply(self.reply, {"close": 1011})
        else:
            self._done_with("events")  # it returned: what it took is handled
            self._done_with("relayed")
            if not self.closed and not self.disconnected:
                self.closed = True  # returned without closing: 403 during the handshake, else 1000
                self.host.reply(self.reply, {"close": 1000})
        finally:
            self._set_quiet()  # an instance that ended is as quiet as it gets
            self._resolve(self.successor_ready)
            self.host.forget(self)

    # ------------------------------------------------------------ incoming

    def deliver(self, message):
        """An event from the protocol server (see the module docstring)."""
        if "__drop__" in message:  # another worker hosts this connection: leave without a word
            self.handed_over = True
            if self.task is not None:
                self.task.cancel()
            return
        flowing = message.get("__flow__")
        if flowing is not None:
            self.held = not flowing
            if flowing:
                self._release_sends()
            return
        if "__yield__" in message:  # a successor has run connect(): hand over now
            self._resolve(self.successor_ready)
            return
        order = message.pop("order", None)
        if "__channel__" in message:
            self.relayed.append((order, message["__channel__"]))
            self._wake("relayed")
        else:
            self.events.append((order, message))
            self._wake("events")
            if message.get("type") == "websocket.disconnect":
                self.gone = True  # sends held for a client that does not read can stop waiting
                self._release_sends()

    def _release_sends(self):
        if self.flow_waiter is not None and not self.flow_waiter.done():
            self.flow_waiter.set_result(None)

    def _wake(self, which):
        waiter = self.waiters.pop(which, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive(self):
        return await self._take("events")

    async def receive_relayed(self):
        """``channel_layer.receive(self.channel_name)`` of a hosted consumer."""
        return await self._take("relayed")

    def _done_with(self, which):
        """The application came back for more from ``which``: the event it
        took from there before is handled; the protocol server may forget it."""
        order = self.handling.pop(which, None)
        if order is not None:
            self.host.reply(self.reply, {"__ack__": order})
        if which in self.timing:
            self._count(which)

    def _count(self, which, raised=False):
        """The run time of the event taken from ``which``, by its type."""
        kind, taken = self.timing.pop(which)
        self.host.counts.consumed(kind, time.monotonic_ns() - taken, raised)

    async def _take(self, which):
        queue = self.events if which == "events" else self.relayed
        self._done_with(which)
        self.pending += 1
        if self.pending > self.most_pending:
            self.most_pending = self.pending
        try:
            while self.frozen or not queue:
                if self.frozen and self.pending >= self.most_pending:
                    self._set_quiet()
                waiter = self.waiters[which] = self.host.loop.create_future()
                await waiter
            order, event = queue.popleft()
        finally:
            self.pending -= 1
        if order is not None:
            self.handling[which] = order
        kind = event.get("type")
        self.timing[which] = (kind if type(kind) is str else which, time.monotonic_ns())
        if kind == "websocket.disconnect":
            self.disconnected = True
        return event

    # ------------------------------------------------------------- handover

    def freeze(self):
        """Deliver nothing more; ``quiet`` resolves once the application is
        between events (or at once if it is)."""
        self.frozen = True
        self.quiet = self.host.loop.create_future()
        if (self.most_pending and self.pending >= self.most_pending) or self.task is None or self.task.done():
            self._set_quiet()
        return self.quiet

    def _set_quiet(self):
        self._resolve(self.quiet)

    @staticmethod
    def _resolve(future):
        if future is not None and not future.done():
            future.set_result(None)

    async def await_successor(self, timeout):
        """Ask the protocol server to start this connection's next instance
        (it runs ``connect()`` in another worker while this one still serves)
        and wait until it has, or ``timeout``: then it is time to hand over."""
        if self.gone or self.closed or self.disconnected or self.task is None or self.task.done():
            return
        self.successor_ready = self.host.loop.create_future()
        self.host.reply(self.reply, {"__successor__": True})
        try:
            await asyncio.wait_for(asyncio.shield(self.successor_ready), timeout)
        except asyncio.TimeoutError:
            pass

    async def hand_over(self):
        """End the instance without a disconnect; the protocol server resumes the connection elsewhere."""
        self.handed_over = True
        task = self.task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if not self.closed and not self.disconnected:
            self.host.reply(self.reply, {"__resume__": True})

    # -------------------------------------------------------------- outgoing

    async def send(self, event):
        kind = event["type"]
        if self.closed:
            raise RuntimeError(f"Unexpected ASGI message {kind!r}, after sending 'websocket.close'.")
        if self.disconnected:
            return  # the client left: nobody to tell (the app learns it from receive())
        if kind == "websocket.send":
            if not self.accepted:
                raise RuntimeError("Expected ASGI message 'websocket.accept', but got 'websocket.send'.")
            self.host.poll_events()  # a hold may be waiting (see AsgiHost.poll_events)
            while self.held and not self.gone:
                self.flow_waiter = self.host.loop.create_future()
                await self.flow_waiter
            if self.gone:
                return
            text = event.get("text")
            message = {"text": text} if text is not None else {"bytes": event.get("bytes")}
        elif kind == "websocket.accept":
            if self.accepted:
                raise RuntimeError("Unexpected ASGI message 'websocket.accept': the connection is already accepted.")
            self.accepted = True
            message = {"accept": True}
            if event.get("subprotocol") is not None:
                message["subprotocol"] = event["subprotocol"]
            if event.get("headers"):
                message["headers"] = _headers(event["headers"])
        elif kind == "websocket.close":
            self.closed = True
            message = {"close": event.get("code") or 1000}
        elif kind == "websocket.http.response.start" and not self.accepted and self.denial is None:
            self.denial = event
            return
        elif kind == "websocket.http.response.body" and self.denial is not None:
            self.denial_body.append(event.get("body", b""))
            if event.get("more_body", False):
                return
            self.closed = True
            message = {"deny": [self.denial["status"], _headers(self.denial.get("headers", ())),
                                b"".join(self.denial_body)]}
        else:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} sent to a WebSocket connection.")
        await self.host.send_reply(self.reply, message)
