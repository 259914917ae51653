"""The asyncio side of an HTTP/1.1 connection.

One ``HttpProtocol`` per TCP (or Unix) connection.  Bytes go through the
sans-I/O ``http11.RequestParser``; each request becomes a ``Cycle``:

1. parsed (possibly behind earlier pipelined requests, which are answered
   one at a time, in order);
2. *dispatched* on ``http.request`` once it is the current request and its
   body is complete, or ``body_inline`` bytes of it are here, or the client
   waits for ``100 Continue``; the rest of the body then streams through a
   ``http.request.body?`` channel in ``body_inline``-sized chunks, pausing
   the socket while that channel is full (retry 1 ms doubling to 50 ms);
3. answered as reply messages arrive on its reply channel (the server's
   reply reader calls ``Cycle.on_reply``), or by the server itself: 503 when
   ``http.request`` is full, 413 when the message is too large, 504 when no
   first reply came within ``http_timeout``, 500 when the reply cannot be
   sent as given (a reply that goes wrong after the response started closes
   the connection instead), 503 when the worker that took the request died
   (it said who it is on the server's ``shmchannels.taken?`` channel; the
   server's liveness sweep calls ``Cycle.taken``, then ``Cycle.worker_died``).

A client that leaves before its response is complete produces one
``http.disconnect`` (and ``{"closed": True}`` on an unfinished body
channel).  WebSocket upgrades are handed to ``ws_protocol``.
"""

import asyncio
import collections
import logging
import socket

from shmchannels.names import new_local_part

from . import http11, proxy
from .http11 import EV_BODY, EV_END, EV_REQUEST, EV_UPGRADE

logger = logging.getLogger("shmchannels.server")

PAUSE_BODY = 1  # the body channel is full
PAUSE_PIPELINE = 2  # requests are waiting behind the current one
PAUSE_UPGRADE = 4

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
QUEUE_FULL_BODY = b"Service Unavailable: request queue full"
WORKER_DIED_BODY = b"Service Unavailable: the worker handling the request died"
ERROR_BODY = b"Internal Server Error"


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


def worker_ident(value):
    """(slot, gen) from a ``__taken__`` marker's ``[slot, gen, ...]``, or None."""
    if type(value) in (list, tuple) and len(value) >= 2 and type(value[0]) is int and type(value[1]) is int:
        return value[0], value[1]
    return None


def addresses(transport):
    """(client, server) as ASGI 1 [host, port] lists, or None for Unix sockets."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None, None
    peer = transport.get_extra_info("peername")
    local = transport.get_extra_info("sockname")
    return ([peer[0], peer[1]] if peer else None), ([local[0], local[1]] if local else None)


class Cycle:
    """One request/response exchange."""

    __slots__ = (
        "conn", "req", "reply_channel", "client", "upgrade", "body_expected", "body_done", "body_parts",
        "body_size", "dispatched", "body_channel", "body_out", "body_buf", "backoff", "retry_handle",
        "started", "done", "mode", "keep_alive", "status", "sent", "dispatched_at", "worker", "remaining",
    )

    def __init__(self, conn, req):
        self.conn = conn
        self.req = req
        self.reply_channel = None
        self.client = conn.client
        self.upgrade = req.upgrade
        self.body_expected = bool(req.chunked or req.content_length)
        self.body_done = not self.body_expected
        self.body_parts = []
        self.body_size = 0
        self.dispatched = False
        self.body_channel = None
        self.body_out = None
        self.body_buf = None
        self.backoff = 0.001
        self.retry_handle = None
        self.started = False
        self.done = False
        self.mode = None
        self.keep_alive = req.keep_alive
        self.status = None
        self.sent = 0
        self.dispatched_at = 0.0
        self.worker = None  # (slot, gen) of the worker that took the request, once it said so
        self.remaining = None  # body bytes the application's Content-Length still owes

    def on_reply(self, message):
        self.conn.on_reply(self, message)

    def reply_failed(self, reason):
        self.conn.reply_failed(self, reason)

    def taken(self, who):
        """The worker that took the request said who it is (``[slot, gen]``)."""
        if self.done or not self.dispatched:
            return
        ident = worker_ident(who)
        if ident is None:
            logger.warning("malformed __taken__ marker for %s: %.100r", self.reply_channel, who)
            return
        self.worker = ident
        self.conn.server.taken[self] = ident

    def worker_died(self):
        self.conn.worker_died(self)


class HttpProtocol(asyncio.Protocol):
    def __init__(self, server):
        self.server = server
        self.config = config = server.config
        self.layer = server.layer
        self.loop = server.loop
        self.transport = None
        self.parser = http11.RequestParser(
            limit_request_line=config.limit_request_line,
            limit_request_fields=config.limit_request_fields,
            limit_request_field_size=config.limit_request_field_size,
            limit_request_body=config.limit_request_body,
        )
        self.cycles = collections.deque()
        self.client = self.server_addr = None
        self.idle_since = 0.0  # loop time the connection last had nothing to do
        self.paused = 0
        self.closing = False
        self.closed = False
        self.upgrade_data = None
        self.pending_error = None

    # ------------------------------------------------------------ transport

    def connection_made(self, transport):
        self.transport = transport
        self.client, self.server_addr = addresses(transport)
        self.server.connections.add(self)
        self.server.counters["connections_total"] += 1
        if self.server.shutting_down:
            self.closing = True
        self.idle_since = self.loop.time()

    def connection_lost(self, exc):
        self.closed = True
        self.server.connections.discard(self)
        server = self.server
        layer = self.layer
        for cycle in self.cycles:
            self._cancel_timers(cycle)
            if cycle.dispatched and not cycle.done:
                cycle.done = True
                server.channels.pop(cycle.reply_channel, None)
                if cycle.worker is not None:
                    server.taken.pop(cycle, None)
                layer.core.discard_channel(cycle.reply_channel)
                server.counters["client_disconnects"] += 1
                try:
                    layer.send("http.disconnect", {"reply_channel": cycle.reply_channel, "path": cycle.req.path})
                except (layer.ChannelFull, layer.MessageTooLarge):
                    pass
                if cycle.body_channel is not None and not cycle.body_done:
                    cycle.body_out = None
                    self._send_quietly(cycle.body_channel, {"closed": True})
        self.cycles.clear()
        server.connection_closed()

    def pause_writing(self):  # the client reads slower than replies arrive: nothing to slow down
        pass

    def resume_writing(self):
        pass

    def data_received(self, data):
        if self.upgrade_data is not None:
            self.upgrade_data += data
            return
        for kind, value in self.parser.feed(data):
            if kind == EV_REQUEST:
                if self.closing:  # shutting down, or an error was answered: no more requests
                    self.parser.dead = True
                    break
                self._on_request(value)
            elif kind == EV_BODY:
                if self.cycles:
                    self._on_body(self.cycles[-1], value)
            elif kind == EV_END:
                if self.cycles:
                    self._on_end(self.cycles[-1])
            elif kind == EV_UPGRADE:
                self._on_upgrade(value)
            else:  # EV_ERROR
                self._on_parse_error(*value)
        if not self.cycles:
            self.idle_since = self.loop.time()  # a partial head keeps the connection alive

    def eof_received(self):
        # EOF means the client left (as uvicorn reads it): a client that
        # half-closes after its request gets no response, and in exchange a
        # departed client is noticed at once (http.disconnect, body abort).
        return False

    # -------------------------------------------------------------- requests

    def _on_request(self, req):
        cycle = Cycle(self, req)
        cycles = self.cycles
        cycles.append(cycle)
        self.server.counters["requests_total"] += 1
        if len(cycles) == 1:
            self._start(cycle)
        elif len(cycles) > self.config.max_pipelined:
            self._pause(PAUSE_PIPELINE)

    def _start(self, cycle):
        """``cycle`` became the current request."""
        if cycle.upgrade:
            if self.upgrade_data is not None:
                self._upgrade(cycle)
            return  # its EV_UPGRADE comes with the same feed
        if cycle.body_done or cycle.req.expect_continue or cycle.body_size >= self.config.body_inline:
            self._dispatch(cycle)

    def _on_body(self, cycle, data):
        if cycle.dispatched:
            if cycle.body_out is not None:
                self._queue_body(cycle, data)
                self._pump(cycle)
            return
        cycle.body_parts.append(data)
        cycle.body_size += len(data)
        if cycle.body_size >= self.config.body_inline:
            if cycle is self.cycles[0]:
                self._dispatch(cycle)
            else:
                self._pause(PAUSE_PIPELINE)

    def _on_end(self, cycle):
        if cycle.body_done:
            return
        cycle.body_done = True
        if cycle.dispatched:
            if cycle.body_out is not None:
                buf = cycle.body_buf
                cycle.body_out.append({"content": bytes(buf), "more_content": False})
                buf.clear()
                self._pump(cycle)
        elif cycle is self.cycles[0]:
            self._dispatch(cycle)

    def _on_parse_error(self, status, reason):
        logger.debug("bad request from %s: %s %s", self.client, status, reason)
        self.server.counters["bad_requests"] += 1
        cycles = self.cycles
        if not cycles:
            self._write_error(None, status, reason)
            return
        last = cycles[-1]
        if last.body_done:
            # a bad head after complete requests: answer it in its turn, then close
            self.pending_error = (status, reason)
            self._pause(PAUSE_PIPELINE)
            return
        # the body of the latest request is bad (malformed chunk, over the limit)
        if last is not cycles[0]:
            cycles.pop()
            self.pending_error = (status, reason)
            return
        if last.body_channel is not None and last.body_out is not None:
            last.body_out = None
            self._send_quietly(last.body_channel, {"closed": True})
        last.body_done = True  # nothing more will be read
        if last.started:
            self.transport.close()
            return
        self._unregister(last)
        self._finish_with(last, status, reason.encode("utf-8", "replace"), keep_alive=False)

    def _dispatch(self, cycle):
        config = self.config
        layer = self.layer
        req = cycle.req
        parts = cycle.body_parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        cycle.body_parts = None
        inline = config.body_inline
        client, server_addr, scheme = self.client, self.server_addr, "http"
        if config.proxy_headers:
            fwd = proxy.forwarded(config.trusted, req.headers, client, server_addr)
            if fwd is not None:
                client, server_addr, scheme = fwd[0], fwd[1], fwd[2] or "http"
                cycle.client = client
        body_channel = None
        if not cycle.body_done or len(body) > inline:
            body_channel = layer.new_channel("http.request.body?")
        reply_channel = self.server.http_prefix + new_local_part()
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
            "__taken__": self.server.taken_channel,  # (shmchannels) where the worker says who it is
        }
        try:
            layer.send("http.request", message)
        except layer.ChannelFull:
            self.server.counters["rejected_full"] += 1
            self._finish_with(cycle, 503, QUEUE_FULL_BODY, keep_alive=cycle.body_done)
            return
        except layer.MessageTooLarge:
            self._finish_with(cycle, 413, b"Request too large for the channel layer", keep_alive=False)
            return
        cycle.dispatched = True
        cycle.reply_channel = reply_channel
        self.server.channels[reply_channel] = cycle
        cycle.dispatched_at = self.loop.time()  # http_timeout: see check_timeouts()
        if body_channel is not None:
            cycle.body_channel = body_channel
            cycle.body_out = collections.deque()
            cycle.body_buf = bytearray()
            if req.expect_continue and not cycle.body_size:
                self.transport.write(CONTINUE)
            if len(body) > inline:
                self._queue_body(cycle, memoryview(body)[inline:])
            if cycle.body_done:
                cycle.body_out.append({"content": bytes(cycle.body_buf), "more_content": False})
                cycle.body_buf.clear()
            self._pump(cycle)

    # --------------------------------------------------------- body streaming

    def _queue_body(self, cycle, data):
        buf = cycle.body_buf
        buf += data
        n = self.config.body_inline
        if len(buf) >= n:
            out = cycle.body_out
            pos = 0
            view = memoryview(buf)
            while len(buf) - pos >= n:
                out.append({"content": bytes(view[pos:pos + n]), "more_content": True})
                pos += n
            view.release()
            del buf[:pos]

    def _pump(self, cycle):
        out = cycle.body_out
        if out is None:
            return
        if cycle.retry_handle is not None:
            return  # a retry is scheduled; keep the order
        layer = self.layer
        channel = cycle.body_channel
        while out:
            try:
                layer.send(channel, out[0])
            except layer.ChannelFull:
                self._pause(PAUSE_BODY)
                self.server.counters["body_waits"] += 1
                cycle.retry_handle = self.loop.call_later(cycle.backoff, self._retry_pump, cycle)
                cycle.backoff = min(cycle.backoff * 2, 0.05)
                return
            out.popleft()
        cycle.backoff = 0.001
        if cycle.body_done:
            cycle.body_out = None
            layer.core.discard_channel(channel)
        self._resume(PAUSE_BODY)

    def _retry_pump(self, cycle):
        cycle.retry_handle = None
        if not self.closed and cycle.body_out is not None:
            self._pump(cycle)

    # -------------------------------------------------------------- replies

    def on_reply(self, cycle, message):
        if cycle.done:
            return
        transport = self.transport
        try:
            content = message.get("content", b"")
            if type(content) is not bytes:
                content = reply_content(content)
            more = message.get("more_content", False)
            if not cycle.started:
                status = message.get("status")
                if status is None:
                    raise http11.ResponseError(f"the first reply has no status (keys: {sorted(map(str, message))})")
                keep_alive = cycle.keep_alive and not self.closing and bool(self.config.keepalive)
                head, mode, keep_alive, length = http11.response_head(
                    status, message.get("headers", ()), content, more,
                    request=cycle.req, keep_alive=keep_alive,
                    server_header=self.server.server_header, date=self.config.date_header,
                )
                cycle.started = True
                cycle.status = status
                cycle.mode = mode
                cycle.keep_alive = keep_alive
                broken = None
                if length is not None and mode == http11.MODE_LENGTH:
                    cycle.remaining = length
                    content, broken = self._hold_to_length(cycle, content, more)
                if mode == http11.MODE_NONE or not content:
                    transport.write(head)
                elif mode == http11.MODE_CHUNKED:
                    transport.write(head + http11.chunk(content))
                elif len(content) < 65536:
                    transport.write(head + content)
                else:
                    transport.write(head)
                    transport.write(content)
            else:
                if "status" in message:
                    raise http11.ResponseError("a reply carries a status after the response started")
                mode = cycle.mode
                broken = None
                if cycle.remaining is not None:
                    content, broken = self._hold_to_length(cycle, content, more)
                if mode == http11.MODE_CHUNKED:
                    if content:
                        transport.write(http11.chunk(content) + b"0\r\n\r\n" if not more else http11.chunk(content))
                    elif not more:
                        transport.write(b"0\r\n\r\n")
                elif mode != http11.MODE_NONE and content:
                    transport.write(content)
        except http11.ResponseError as exc:
            self.reply_failed(cycle, str(exc))
            return
        if content and cycle.mode != http11.MODE_NONE:
            cycle.sent += len(content)
        if broken is not None:
            self.reply_failed(cycle, broken)
        elif not more:
            self._unregister(cycle)
            self._complete(cycle)

    def _hold_to_length(self, cycle, content, more):
        """Keep the body to the application's Content-Length: (what to write,
        None) or (the part that fits, why the response is broken)."""
        left = cycle.remaining - len(content)
        if left >= 0 and (left == 0 or more):
            cycle.remaining = left
            return content, None
        declared = cycle.sent + cycle.remaining
        cycle.remaining = 0
        if left < 0:
            return content[:left], f"the body is longer than its Content-Length ({declared})"
        return content, f"the body ended {left} bytes short of its Content-Length ({declared})"

    def reply_failed(self, cycle, reason):
        """A reply that cannot be sent as given: 500 if the response has not
        started, else the connection closes (the client sees it cut short)."""
        if cycle.done:
            return
        self.server.counters["bad_replies"] += 1
        if not cycle.started:
            logger.error("bad reply on %s: %s; answering 500", cycle.reply_channel, reason)
            self._unregister(cycle)
            self._finish_with(cycle, 500, ERROR_BODY, keep_alive=False)
        else:
            logger.error("bad reply on %s after the response started: %s; closing the connection",
                         cycle.reply_channel, reason)
            self._abort(cycle)

    def worker_died(self, cycle):
        """The worker that took ``cycle``'s request is dead (the server's
        liveness sweep found it so, after delivering every reply it had sent)."""
        if cycle.done:
            return
        self.server.counters["worker_deaths"] += 1
        if not cycle.started:
            logger.error("the worker (slot %d) that took the request on %s died: 503", cycle.worker[0], cycle.reply_channel)
            self._unregister(cycle)
            self._finish_with(cycle, 503, WORKER_DIED_BODY, keep_alive=cycle.body_done)
        else:
            logger.error("the worker (slot %d) sending the response on %s died: closing the connection",
                         cycle.worker[0], cycle.reply_channel)
            self._abort(cycle)

    def _abort(self, cycle):
        """End a started response by closing the connection."""
        cycle.done = True
        self._cancel_timers(cycle)
        self._unregister(cycle)
        if cycle.body_channel is not None and not cycle.body_done:
            cycle.body_out = None
            self._send_quietly(cycle.body_channel, {"closed": True})
        if self.server.access_log_enabled:
            self.server.access_log.log(cycle.client, cycle.req, cycle.status, cycle.sent)
        self.closing = True
        self.transport.close()

    def _on_timeout(self, cycle):
        if cycle.done or cycle.started:
            return
        self.server.counters["timeouts"] += 1
        logger.warning("no response on %s within %ss: 504", cycle.reply_channel, self.config.http_timeout)
        self._unregister(cycle)
        if cycle.body_channel is not None and not cycle.body_done:
            cycle.body_out = None
            self._send_quietly(cycle.body_channel, {"closed": True})
        self._finish_with(cycle, 504, b"Gateway Timeout: no response from a worker in time", keep_alive=False)

    # ------------------------------------------------------------ completion

    def _unregister(self, cycle):
        if cycle.reply_channel is not None:
            self.server.channels.pop(cycle.reply_channel, None)
        if cycle.worker is not None:
            self.server.taken.pop(cycle, None)

    def _finish_with(self, cycle, status, body, keep_alive):
        """Answer ``cycle`` ourselves (it has not started a response)."""
        keep_alive = keep_alive and cycle.keep_alive and not self.closing and bool(self.config.keepalive)
        self.transport.write(http11.simple_response(
            status, body, keep_alive=keep_alive, server_header=self.server.server_header,
        ) if cycle.req.method != "HEAD" else http11.simple_response(
            status, b"", keep_alive=keep_alive, server_header=self.server.server_header,
        ))
        cycle.started = True
        cycle.status = status
        cycle.mode = http11.MODE_LENGTH
        cycle.keep_alive = keep_alive
        cycle.sent = len(body)
        self._complete(cycle)

    def _complete(self, cycle):
        cycle.done = True
        self._cancel_timers(cycle)
        server = self.server
        if server.access_log_enabled:
            server.access_log.log(cycle.client, cycle.req, cycle.status, cycle.sent)
        cycles = self.cycles
        if cycles and cycles[0] is cycle:
            cycles.popleft()
        keep_alive = cycle.keep_alive and cycle.mode != http11.MODE_CLOSE
        if cycle.body_channel is not None and not cycle.body_done:
            # answered before the body was read: the rest of the stream is
            # body bytes nobody wants; close rather than parse them
            cycle.body_out = None
            self._send_quietly(cycle.body_channel, {"closed": True})
            keep_alive = False
        elif not cycle.body_done:
            keep_alive = False  # inline body still arriving (early answer)
        if not keep_alive or self.closing:
            self.transport.close()
            return
        if self.pending_error is not None and not cycles:
            status, reason = self.pending_error
            self.pending_error = None
            self._write_error(None, status, reason)
            return
        self._resume(PAUSE_PIPELINE | PAUSE_BODY)
        if cycles:
            self._start(cycles[0])
        else:
            self.idle_since = self.loop.time()

    def _write_error(self, cycle, status, reason):
        body = reason.encode("utf-8", "replace")
        self.transport.write(http11.simple_response(
            status, body, keep_alive=False, server_header=self.server.server_header,
        ))
        if self.server.access_log_enabled:
            self.server.access_log.log(self.client, cycle.req if cycle is not None else None, status, len(body))
        self.transport.close()
        self.closing = True

    def _cancel_timers(self, cycle):
        if cycle.retry_handle is not None:
            cycle.retry_handle.cancel()
            cycle.retry_handle = None

    def _send_quietly(self, channel, message):
        layer = self.layer
        try:
            layer.send(channel, message)
        except (layer.ChannelFull, layer.MessageTooLarge):
            pass
        layer.core.discard_channel(channel)

    # ------------------------------------------------------- flow, keep-alive

    def _pause(self, reason):
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def _resume(self, reasons):
        if self.paused & reasons:
            self.paused &= ~reasons
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def check_timeouts(self, now):
        """Called by the server's sweep: http_timeout and the keep-alive timeout.

        One periodic sweep instead of two timers per request (creating and
        cancelling TimerHandles was ~10% of a request's cost).
        """
        cycles = self.cycles
        if cycles:
            cycle = cycles[0]
            timeout = self.config.http_timeout
            if timeout and cycle.dispatched and not cycle.started and now - cycle.dispatched_at >= timeout:
                self._on_timeout(cycle)
        elif not self.closed and self.upgrade_data is None:
            # keepalive 0 turns keep-alive off (responses close), not the
            # wait for a first request
            if now - self.idle_since >= (self.config.keepalive or 5.0):
                self.transport.close()

    def shutdown(self):
        """Stop taking requests; close once the one in flight is answered."""
        self.closing = True
        if not self.cycles or not self.cycles[0].dispatched:
            self.transport.close()

    # ---------------------------------------------------------------- upgrade

    def _on_upgrade(self, leftover):
        self.upgrade_data = bytearray(leftover)
        self._pause(PAUSE_UPGRADE)
        if self.cycles and self.cycles[0].upgrade and not self.cycles[0].dispatched and len(self.cycles) == 1:
            self._upgrade(self.cycles[0])

    def _upgrade(self, cycle):
        req = cycle.req
        is_websocket = any(
            name == b"upgrade" and b"websocket" in value.lower() for name, value in req.headers
        )
        if not is_websocket:
            # h2c, CONNECT...: answer as a plain request and close afterwards;
            # what followed the head is not ours to interpret
            cycle.upgrade = False
            cycle.keep_alive = False
            self.upgrade_data = None
            self._resume(PAUSE_UPGRADE)
            self.closing = True
            self._dispatch(cycle)
            return
        from . import websocket, ws_protocol

        try:
            key, subprotocols = websocket.validate_handshake(req.method, req.http_version, req.headers)
        except websocket.HandshakeError as exc:
            self.cycles.clear()
            self.transport.write(http11.simple_response(
                exc.status, exc.reason, keep_alive=False, server_header=self.server.server_header, extra=exc.headers,
            ))
            if self.server.access_log_enabled:
                self.server.access_log.log(self.client, req, exc.status, len(exc.reason))
            self.transport.close()
            self.closing = True
            return
        leftover = bytes(self.upgrade_data)
        self.upgrade_data = None
        self.cycles.clear()
        self.server.connections.discard(self)
        self.closed = True  # this object is done with the transport
        ws = ws_protocol.WebSocketProtocol(
            self.server, self.transport, req, key, subprotocols, self.client, self.server_addr, leftover,
        )
        self.transport.set_protocol(ws)
        ws.start()
        self.transport.resume_reading()
