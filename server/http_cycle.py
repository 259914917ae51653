"""One HTTP request/response exchange between a client and the workers.

A ``Cycle`` is where a request meets the bus: it sends ``http.request``
(``dispatch``), turns the reply messages on its reply channel into response
bytes (``on_reply``), and decides what the client gets when the workers
fail it: 503 when ``http.request`` is full or the worker that took the
request died before answering, 413 when the message is too large for the
layer, 504 when no first reply came within ``http_timeout``, 500 when a
reply cannot be sent as given.  Once a response has started, the only
honest way to fail it is to close the connection.

The connection (``http_protocol.HttpProtocol``) owns what outlives a
request: the socket, pipelining order, flow control and keep-alive; a cycle
hands back to it when its response is complete or must be cut short.
"""

import logging

from shmchannels.counters import HIST, observe
from shmchannels.names import new_local_part

from . import http11, proxy
from .http11 import MODE_CHUNKED, MODE_LENGTH, MODE_NONE
from .http_body import BodyStream
from .markers import worker_ident

LATENCY = HIST["response_latency"]

logger = logging.getLogger("shmchannels.server")

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
QUEUE_FULL_BODY = b"Service Unavailable: request queue full"
WORKER_DIED_BODY = b"Service Unavailable: the worker handling the request died"
NO_WORKER_BODY = b"Service Unavailable: the server is stopping and no worker is left to take the request"
ERROR_BODY = b"Internal Server Error"

_chunk = http11.chunk
_ResponseError = http11.ResponseError


def reply_content(value):
    """A reply's ``content`` as bytes (the common case, bytes, never gets here).

    A str is sent as UTF-8 (what the Channels 1 talk's raw-layer example
    sends), None as no content; anything else cannot be sent."""
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise http11.ResponseError("content is a str that is not encodable as UTF-8") from None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if value is None:
        return b""
    raise http11.ResponseError(f"content must be bytes (or str), not {type(value).__name__}")


class Cycle:
    __slots__ = (
        "conn", "req", "reply_channel", "client", "upgrade", "body_expected", "body_done", "body_parts",
        "body_size", "dispatched", "body", "started", "done", "mode", "keep_alive", "status", "sent",
        "dispatched_at", "worker", "remaining", "inbox", "held", "credit_to", "credit_owed",
    )

    def __init__(self, conn, req):
        self.conn = conn
        self.req = req
        self.reply_channel = None
        self.client = conn.client
        self.upgrade = req.upgrade
        self.body_expected = bool(req.chunked or req.content_length)
        self.body_done = not self.body_expected
        self.body_parts = []  # the inline part of the body, until dispatched
        self.body_size = 0
        self.dispatched = False
        self.body = None  # BodyStream, when the body does not fit in http.request
        self.started = False
        self.done = False
        self.mode = None
        self.keep_alive = req.keep_alive
        self.status = None
        self.sent = 0
        self.dispatched_at = 0.0
        self.worker = None  # WorkerId of the worker that took the request, once it said so
        self.remaining = None  # body bytes the application's Content-Length still owes
        self.inbox = None  # an ASGI instance's channel, where http.disconnect goes (its __taken__ says)
        self.held = False  # we told that instance to hold its sends (the client is not reading)
        self.credit_to = None  # where the worker waits for credit (ReplyFlow), once it asked
        self.credit_owed = None  # the credit we owe it once the client reads again

    # -------------------------------------------------------------- request

    def dispatch(self):
        conn = self.conn
        config = conn.config
        layer = conn.layer
        server = conn.server
        req = self.req
        parts = self.body_parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        self.body_parts = None
        inline = config.body_inline
        client, server_addr, scheme = conn.client, conn.server_addr, "http"
        if config.proxy_headers:
            fwd = proxy.forwarded(config.trusted, req.headers, client, server_addr)
            if fwd is not None:
                client, server_addr, scheme = fwd.client, fwd.server, fwd.scheme or "http"
                self.client = client
        body_channel = None
        if not self.body_done or len(body) > inline:
            body_channel = layer.new_channel("http.request.body?")
        reply_channel = server.http_prefix + new_local_part()
        message = {
            "reply_channel": reply_channel,
            "http_version": req.http_version,
            "method": req.method,
            "scheme": scheme,
            "path": req.path,
            "query_string": req.query_string,
            "root_path": config.root_path,
            "headers": req.headers,
            "body": body if body_channel is None else body[:inline],
            "body_channel": body_channel,
            "client": client,
            "server": server_addr,
            "__taken__": server.taken_channel,  # (shmchannels) where the worker says who it is
            "__window__": config.http_write_limit,  # (shmchannels) response bytes a worker may have unwritten
        }
        if req.raw_path is not None:
            message["raw_path"] = req.raw_path
        try:
            layer.send("http.request", message)
        except layer.ChannelFull:
            server.counters["rejected_full"] += 1
            conn.finish_with(self, 503, QUEUE_FULL_BODY, keep_alive=self.body_done)
            return
        except layer.MessageTooLarge:
            conn.finish_with(self, 413, b"Request too large for the channel layer", keep_alive=False)
            return
        self.dispatched = True
        self.reply_channel = reply_channel
        server.channels[reply_channel] = self
        self.dispatched_at = conn.loop.time()  # http_timeout: see HttpProtocol.check_timeouts()
        if body_channel is not None:
            self.body = stream = BodyStream(conn, body_channel)
            if req.expect_continue and not self.body_size:
                conn.transport.write(CONTINUE)
            if len(body) > inline:
                stream.feed(memoryview(body)[inline:])
            if self.body_done:
                stream.end()
            stream.pump()

    def abort_body(self):
        """Tell the worker reading the body that no more of it will come."""
        if self.body is not None and not self.body_done:
            self.body.abort()

    def cancel_timers(self):
        if self.body is not None:
            self.body.cancel_retry()

    def unregister(self):
        """No more replies or worker news for this cycle."""
        server = self.conn.server
        if self.reply_channel is not None:
            server.channels.pop(self.reply_channel, None)
        if self.worker is not None:
            server.taken.pop(self, None)

    def client_left(self):
        """The connection closed before the response was complete."""
        conn = self.conn
        server = conn.server
        layer = conn.layer
        if self.inbox is None and self.worker is None and self.dispatched:
            server.drain_taken()  # the marker saying which ASGI instance holds it may be waiting
        self.done = True
        server.channels.pop(self.reply_channel, None)
        if self.worker is not None:
            server.taken.pop(self, None)
        layer.discard_channel(self.reply_channel)
        server.counters["client_disconnects"] += 1
        self.release_credit()
        try:
            if self.inbox is not None:
                layer.send(self.inbox, {"type": "http.disconnect"})
            else:
                layer.send("http.disconnect", {"reply_channel": self.reply_channel, "path": self.req.path})
        except (layer.ChannelFull, layer.MessageTooLarge):
            pass
        self.abort_body()

    def flow(self, flowing):
        """The transport's write buffer crossed its high-water mark (or went
        back under the low one): an ASGI instance holds or resumes its sends."""
        if self.done or not self.dispatched or flowing != self.held:
            return
        if self.inbox is None:
            self.conn.server.drain_taken()  # which instance holds it, if its marker is waiting
            if self.inbox is None:
                return
        self.held = not flowing
        try:
            self.conn.layer.send(self.inbox, {"__flow__": flowing})
        except Exception:
            logger.debug("could not tell %s to %s", self.inbox, "resume" if flowing else "hold", exc_info=True)

    # ----------------------------------------------------- write backpressure

    def ask_credit(self, credit):
        """The worker sent ``[channel, n]`` with a body chunk and waits: it
        may go on to n + window once that chunk is in a write buffer under
        the high-water mark, which is now, or when the client has read enough
        (``resume_writing``).  One answer per question (workers.message.ReplyFlow)."""
        if type(credit) not in (list, tuple) or len(credit) != 2 or type(credit[0]) is not str \
                or type(credit[1]) is not int:
            logger.warning("malformed __credit__ on %s: %.100r", self.reply_channel, credit)
            return
        self.credit_to = credit[0]
        self.credit_owed = credit[1]
        if not self.conn.write_paused:
            self.send_credit()

    def send_credit(self):
        layer = self.conn.layer
        try:
            layer.send(self.credit_to, {"credit": self.credit_owed})
        except (layer.ChannelFull, layer.MessageTooLarge):
            return  # still owed: resume_writing or the sweep tries again
        self.credit_owed = None

    def release_credit(self):
        """The response ends before it is complete: a worker waiting for
        credit hears that the client is gone."""
        if self.credit_owed is not None:
            self.credit_owed = None
            layer = self.conn.layer
            try:
                layer.send(self.credit_to, {"closed": True})
            except (layer.ChannelFull, layer.MessageTooLarge):
                pass  # its CREDIT_TIMEOUT ends the wait

    # -------------------------------------------------------------- replies

    def on_reply(self, message):
        if self.done:
            return
        conn = self.conn
        transport = conn.transport
        try:
            content = message.get("content", b"")
            if not content and "__abort__" in message:
                raise _ResponseError("the application failed its response")
            if type(content) is not bytes:
                content = reply_content(content)
            more = message.get("more_content", False)
            if not self.started:
                status = message.get("status")
                if status is None:
                    raise _ResponseError(f"the first reply has no status (keys: {sorted(map(str, message))})")
                config = conn.config
                keep_alive = self.keep_alive and not conn.closing and bool(config.keepalive)
                head, mode, keep_alive, length = http11.response_head(
                    status, message.get("headers", ()), content, more,
                    request=self.req, keep_alive=keep_alive,
                    server_header=conn.server.server_header, date=config.date_header,
                )
                self.started = True
                self.status = status
                self.mode = mode
                if self.dispatched_at:  # request complete (dispatched) -> response start
                    observe(conn.server.stats_words, LATENCY, int((conn.loop.time() - self.dispatched_at) * 1e9))
                self.keep_alive = keep_alive
                broken = None
                if length is not None and mode == MODE_LENGTH:
                    self.remaining = length
                    content, broken = self._hold_to_length(content, more)
                if mode == MODE_NONE or not content:
                    transport.write(head)
                elif mode == MODE_CHUNKED:
                    transport.write(head + _chunk(content))
                elif len(content) < 65536:
                    transport.write(head + content)
                else:
                    transport.write(head)
                    transport.write(content)
            else:
                if "status" in message:
                    raise _ResponseError("a reply carries a status after the response started")
                mode = self.mode
                broken = None
                if self.remaining is not None:
                    content, broken = self._hold_to_length(content, more)
                if mode == MODE_CHUNKED:
                    if content:
                        transport.write(_chunk(content) + b"0\r\n\r\n" if not more else _chunk(content))
                    elif not more:
                        transport.write(b"0\r\n\r\n")
                elif mode != MODE_NONE and content:
                    transport.write(content)
        except _ResponseError as exc:
            self.reply_failed(str(exc))
            return
        if content and self.mode != MODE_NONE:
            self.sent += len(content)
        if more and "__credit__" in message:
            self.ask_credit(message["__credit__"])
        if broken is not None:
            self.reply_failed(broken)
        elif not more:
            self.unregister()
            conn.complete(self)

    def _hold_to_length(self, content, more):
        """Keep the body to the application's Content-Length: (what to write,
        None) or (the part that fits, why the response is broken)."""
        left = self.remaining - len(content)
        if left >= 0 and (left == 0 or more):
            self.remaining = left
            return content, None
        declared = self.sent + self.remaining
        self.remaining = 0
        if left < 0:
            return content[:left], f"the body is longer than its Content-Length ({declared})"
        return content, f"the body ended {left} bytes short of its Content-Length ({declared})"

    def reply_failed(self, reason):
        """A reply that cannot be sent as given: 500 if the response has not
        started, else the connection closes (the client sees it cut short)."""
        if self.done:
            return
        conn = self.conn
        conn.server.counters["bad_replies"] += 1
        if not self.started:
            logger.error("bad reply on %s: %s; answering 500", self.reply_channel, reason)
            self.unregister()
            conn.finish_with(self, 500, ERROR_BODY, keep_alive=False)
        else:
            logger.error("bad reply on %s after the response started: %s; closing the connection",
                         self.reply_channel, reason)
            conn.abort(self)

    # --------------------------------------------------------- worker news

    def taken(self, who, inbox=None):
        """The worker that took the request said who it is (``[slot, gen]``),
        and, an ASGI worker, its instance's channel."""
        if type(inbox) is str:
            self.inbox = inbox
        if self.done or not self.dispatched:
            return
        ident = worker_ident(who)
        if ident is None:
            logger.warning("malformed __taken__ marker for %s: %.100r", self.reply_channel, who)
            return
        self.worker = ident
        self.conn.server.taken[self] = ident

    def worker_died(self, ident=None):
        """The worker that took the request is dead (the server's liveness
        sweep found it so, after delivering every reply it had sent)."""
        if self.done:
            return
        conn = self.conn
        conn.server.counters["worker_deaths"] += 1
        if not self.started:
            logger.error("the worker (slot %d) that took the request on %s died: 503",
                         self.worker.slot, self.reply_channel)
            self.unregister()
            conn.finish_with(self, 503, WORKER_DIED_BODY, keep_alive=self.body_done)
        else:
            logger.error("the worker (slot %d) sending the response on %s died: closing the connection",
                         self.worker.slot, self.reply_channel)
            conn.abort(self)

    def no_worker_left(self):
        """The server is stopping and no process is left that could take the
        request it sent (every worker got SIGTERM with it, as systemd's
        KillMode=control-group does): 503 now, rather than the client and
        the stop waiting out graceful_timeout.  True if it was answered
        (sent and taken by no worker, not done)."""
        if self.done or not self.dispatched or self.worker is not None:
            return False
        conn = self.conn
        if not self.started:
            self.unregister()
            conn.finish_with(self, 503, NO_WORKER_BODY, keep_alive=False)
        else:
            conn.abort(self)
        return True

    def timed_out(self):
        """No first reply within ``http_timeout``."""
        if self.done or self.started:
            return
        conn = self.conn
        conn.server.counters["timeouts"] += 1
        logger.warning("no response on %s within %ss: 504", self.reply_channel, conn.config.http_timeout)
        self.unregister()
        self.abort_body()
        conn.finish_with(self, 504, b"Gateway Timeout: no response from a worker in time", keep_alive=False)
