"""The asyncio side of an HTTP/1.1 connection.

One ``HttpProtocol`` per TCP (or Unix) connection.  Bytes go through the
sans-I/O ``http11.RequestParser``; each request becomes a
``http_cycle.Cycle``, which does the exchange with the bus.  This class
keeps what outlives one request:

1. order: pipelined requests are answered one at a time, in order; a
   request is *dispatched* once it is the current one and its body is
   complete, or ``body_inline`` bytes of it are here, or the client waits
   for ``100 Continue`` (the rest of the body streams through
   ``http_body.BodyStream``);
2. flow control: reading pauses while too many requests wait behind the
   current one, while a body channel is full, or while an upgrade is
   decided; each reason is a bit, and reading resumes when none is left;
3. keep-alive and shutdown: after a complete response the next request
   starts, or the connection closes; ``check_timeouts`` (called by the
   server's sweep) enforces ``http_timeout``, the keep-alive timeout,
   ``header_timeout`` (a whole request head), ``body_timeout`` (a body must
   move ``body_min_bytes`` per period) and ``http_write_timeout`` (a client
   that stopped reading);
4. write backpressure: the write buffer's high-water mark is
   ``http_write_limit``; above it the worker gets no more credit
   (``Cycle.ask_credit``), so its sends wait and the buffer stays bounded;
5. a client that half-closes (shutdown(SHUT_WR)) after complete requests
   still gets their responses; one that half-closes mid-request has left.

A client that leaves before its response is complete produces one
``http.disconnect`` (and ``{"closed": True}`` on an unfinished body
channel).  WebSocket upgrades are handed to ``ws_protocol``.
"""

import asyncio
import collections
import logging
import socket

from shmchannels.counters import C

from . import http11
from .http11 import EV_BODY, EV_END, EV_REQUEST, EV_UPGRADE, MODE_CLOSE, MODE_LENGTH, ParseError
from .http_cycle import Cycle

RESPONSES = C["responses_1xx"]  # then 2xx .. 5xx
CONNECTIONS, REQUESTS = C["connections_total"], C["requests_total"]

logger = logging.getLogger("shmchannels.server")

# why reading is paused (bits of HttpProtocol.paused; plain ints, because
# IntFlag arithmetic runs in Python and this is per request)
PAUSE_BODY = 1  # the body channel is full
PAUSE_PIPELINE = 2  # requests are waiting behind the current one
PAUSE_UPGRADE = 4

OVER_LIMIT_BODY = "Service Unavailable: too many connections"


def addresses(transport):
    """(client, server) as ASGI 1 [host, port] lists, or None for Unix sockets."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None, None
    peer = transport.get_extra_info("peername")
    local = transport.get_extra_info("sockname")
    return ([peer[0], peer[1]] if peer else None), ([local[0], local[1]] if local else None)


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
        self.write_paused = False
        self.closing = False
        self.closed = False
        self.upgrade_data = None
        self.pending_error = None  # a ParseError to answer after the requests before it
        self.over_limit = False  # past limit_concurrency: the first request gets 503
        self.eof = False  # the client half-closed after complete requests
        self.head_since = 0.0  # loop time a request head began (0: none in progress)
        self.body_seen = 0  # request body bytes read on this connection
        self.body_mark = 0  # body_seen at body_mark_at
        self.body_mark_at = 0.0
        self.write_mark = 0  # write buffer size at write_mark_at (while write_paused)
        self.write_mark_at = 0.0

    # ------------------------------------------------------------ transport

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(high=self.config.http_write_limit)
        self.client, self.server_addr = addresses(transport)
        server = self.server
        limit = self.config.limit_concurrency
        if limit and len(server.connections) + len(server.websockets) >= limit:
            self.over_limit = True
        server.connections.add(self)
        self.server.stats_words[CONNECTIONS] += 1
        if self.server.shutting_down:
            self.closing = True
        self.idle_since = self.loop.time()

    def connection_lost(self, exc):
        self.closed = True
        self.server.connections.discard(self)
        for cycle in self.cycles:
            cycle.cancel_timers()
            if cycle.dispatched and not cycle.done:
                cycle.client_left()
        self.cycles.clear()
        self.server.connection_closed()

    def pause_writing(self):
        """The client reads slower than the response arrives (the write
        buffer passed ``http_write_limit``): an ASGI instance is told to hold
        its sends (Cycle.flow); a Channels 1 / WSGI worker gets no more
        credit (Cycle.ask_credit) until the buffer is under a quarter of it."""
        self.write_paused = True
        self.write_mark = self.transport.get_write_buffer_size()
        self.write_mark_at = self.loop.time()
        if self.cycles:
            self.cycles[0].flow(False)

    def resume_writing(self):
        self.write_paused = False
        if self.cycles:
            cycle = self.cycles[0]
            cycle.flow(True)
            if cycle.credit_owed is not None:
                cycle.send_credit()

    def data_received(self, data):
        if self.upgrade_data is not None:
            self.upgrade_data += data
            return
        for kind, value in self.parser.feed(data):
            if kind == EV_REQUEST:
                if self.closing or self.over_limit:  # shutting down, or an error was answered: no more requests
                    self.parser.dead = True
                    if self.over_limit and not self.closing:
                        self._write_error(None, 503, OVER_LIMIT_BODY)
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
                self._on_parse_error(value)
        if self.parser.in_head:
            if not self.head_since:
                self.head_since = self.loop.time()
        elif self.head_since:
            self.head_since = 0.0
        if not self.cycles:
            self.idle_since = self.loop.time()  # a partial head keeps the connection alive

    def eof_received(self):
        """The client shut down its sending side.  After complete requests
        that is a half-close: their responses still go out, then the
        connection closes.  In the middle of a request (a partial head or
        body) the client has left: http.disconnect, body aborted."""
        cycles = self.cycles
        if (cycles and cycles[-1].body_done and not self.parser.in_head and not self.closed
                and self.upgrade_data is None and self.pending_error is None):
            self.eof = True
            self.parser.dead = True
            return True  # keep the transport open for writing
        return False

    # -------------------------------------------------------------- requests

    def _on_request(self, req):
        self.body_mark, self.body_mark_at = self.body_seen, self.loop.time()  # body_timeout starts
        cycle = Cycle(self, req)
        cycles = self.cycles
        cycles.append(cycle)
        self.server.stats_words[REQUESTS] += 1
        if len(cycles) == 1:
            self._start(cycle)
        elif len(cycles) > self.config.max_pipelined:
            self.pause_reading(PAUSE_PIPELINE)

    def _start(self, cycle):
        """``cycle`` became the current request."""
        if cycle.upgrade:
            if self.upgrade_data is not None:
                self._upgrade(cycle)
            return  # its EV_UPGRADE comes with the same feed
        if cycle.body_done or cycle.req.expect_continue or cycle.body_size >= self.config.body_inline:
            cycle.dispatch()

    def _on_body(self, cycle, data):
        self.body_seen += len(data)
        if cycle.dispatched:
            body = cycle.body
            if body is not None and body.out is not None:
                body.feed(data)
                body.pump()
            return
        cycle.body_parts.append(data)
        cycle.body_size += len(data)
        if cycle.body_size >= self.config.body_inline:
            if cycle is self.cycles[0]:
                cycle.dispatch()
            else:
                self.pause_reading(PAUSE_PIPELINE)

    def _on_end(self, cycle):
        if cycle.body_done:
            return
        cycle.body_done = True
        if cycle.dispatched:
            body = cycle.body
            if body is not None and body.out is not None:
                body.end()
                body.pump()
        elif cycle is self.cycles[0]:
            cycle.dispatch()

    def _on_parse_error(self, error):
        status, reason = error.status, error.reason
        logger.debug("bad request from %s: %s %s", self.client, status, reason)
        self.server.counters["bad_requests"] += 1
        cycles = self.cycles
        if not cycles:
            self._write_error(None, status, reason)
            return
        last = cycles[-1]
        if last.body_done:
            # a bad head after complete requests: answer it in its turn, then close
            self.pending_error = error
            self.pause_reading(PAUSE_PIPELINE)
            return
        # the body of the latest request is bad (malformed chunk, over the limit)
        if last is not cycles[0]:
            cycles.pop()
            self.pending_error = error
            return
        if last.body is not None and last.body.out is not None:
            last.body.abort()
        last.body_done = True  # nothing more will be read
        if last.started:
            self.transport.close()
            return
        last.unregister()
        self.finish_with(last, status, reason.encode("utf-8", "replace"), keep_alive=False)

    # ------------------------------------------------------------ completion

    def abort(self, cycle):
        """End a started response by closing the connection."""
        cycle.done = True
        cycle.cancel_timers()
        cycle.unregister()
        cycle.abort_body()
        cycle.release_credit()
        if self.server.access_log_enabled:
            self.server.access_log.log(cycle.client, cycle.req, cycle.status, cycle.sent)
        self.closing = True
        self.transport.close()

    def finish_with(self, cycle, status, body, keep_alive):
        """Answer ``cycle`` ourselves (it has not started a response)."""
        keep_alive = keep_alive and cycle.keep_alive and not self.closing and bool(self.config.keepalive)
        self.transport.write(http11.simple_response(
            status, body, keep_alive=keep_alive, server_header=self.server.server_header,
        ) if cycle.req.method != "HEAD" else http11.simple_response(
            status, b"", keep_alive=keep_alive, server_header=self.server.server_header,
        ))
        cycle.started = True
        cycle.status = status
        cycle.mode = MODE_LENGTH
        cycle.keep_alive = keep_alive
        cycle.sent = len(body)
        self.complete(cycle)

    def complete(self, cycle):
        """``cycle``'s response is out: start the next request, or close."""
        cycle.done = True
        cycle.cancel_timers()
        server = self.server
        status_class = (cycle.status or 0) // 100
        if 1 <= status_class <= 5:
            server.stats_words[RESPONSES + status_class - 1] += 1
        if server.access_log_enabled:
            server.access_log.log(cycle.client, cycle.req, cycle.status, cycle.sent)
        cycles = self.cycles
        if cycles and cycles[0] is cycle:
            cycles.popleft()
        keep_alive = cycle.keep_alive and cycle.mode != MODE_CLOSE and not (self.eof and not cycles)
        if cycle.body is not None and not cycle.body_done:
            # answered before the body was read: the rest of the stream is
            # body bytes nobody wants; close rather than parse them
            cycle.body.abort()
            keep_alive = False
        elif not cycle.body_done:
            keep_alive = False  # inline body still arriving (early answer)
        if not keep_alive or self.closing:
            self.transport.close()
            return
        if self.pending_error is not None and not cycles:
            error = self.pending_error
            self.pending_error = None
            self._write_error(None, error.status, error.reason)
            return
        self.resume_reading(PAUSE_PIPELINE | PAUSE_BODY)
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

    # ------------------------------------------------------- flow, keep-alive

    def pause_reading(self, reason):
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading(self, reasons):
        if self.paused & reasons:
            self.paused &= ~reasons
            if not self.paused and not self.closed:
                self.transport.resume_reading()

    def body_blocked(self):
        """A body channel is full: stop reading until it drains."""
        self.pause_reading(PAUSE_BODY)
        self.server.counters["body_waits"] += 1

    def body_flowing(self):
        self.resume_reading(PAUSE_BODY)

    def check_timeouts(self, now):
        """Called by the server's sweep: http_timeout, the keep-alive
        timeout, header_timeout, body_timeout and http_write_timeout.

        One periodic sweep instead of two timers per request (creating and
        cancelling TimerHandles was ~10% of a request's cost).
        """
        if self.closed:
            return
        config = self.config
        if self.write_paused and config.http_write_timeout:
            size = self.transport.get_write_buffer_size()
            if size < self.write_mark:
                self.write_mark, self.write_mark_at = size, now
            elif now - self.write_mark_at >= config.http_write_timeout:
                logger.debug("%s read nothing of its response for %ss: closing", self.client, config.http_write_timeout)
                self.transport.abort()  # connection_lost tells the worker (http.disconnect, credit closed)
                return
        if self.head_since and config.header_timeout and now - self.head_since >= config.header_timeout \
                and not self.parser.dead:
            self._read_timeout("request head not complete within %ss" % config.header_timeout)
            return
        cycles = self.cycles
        if cycles:
            last = cycles[-1]
            if not last.body_done and config.body_timeout and not self.parser.dead:
                if self.paused or self.body_seen - self.body_mark >= config.body_min_bytes:
                    self.body_mark, self.body_mark_at = self.body_seen, now  # paused: our wait, not the client's
                elif now - self.body_mark_at >= config.body_timeout:
                    self._read_timeout("request body sent fewer than %d bytes in %ss" % (
                        config.body_min_bytes, config.body_timeout))
                    return
            cycle = cycles[0]
            if cycle.credit_owed is not None and not self.write_paused:
                cycle.send_credit()  # a full credit channel refused it before
            timeout = config.http_timeout
            if timeout and cycle.dispatched and not cycle.started and now - cycle.dispatched_at >= timeout:
                cycle.timed_out()
        elif not self.closed and self.upgrade_data is None and not self.head_since:
            # keepalive 0 turns keep-alive off (responses close), not the
            # wait for a first request
            if now - self.idle_since >= (self.config.keepalive or 5.0):
                self.transport.close()

    def _read_timeout(self, reason):
        """The client is too slow sending its request: 408 where a response
        is still possible (the requests before it are answered first), then
        the connection closes."""
        self.parser.dead = True
        self.head_since = 0.0
        self.pause_reading(PAUSE_PIPELINE)
        self._on_parse_error(ParseError(408, reason))

    def shutdown(self):
        """Stop taking requests; close once the one in flight is answered."""
        self.closing = True
        if not self.cycles or not self.cycles[0].dispatched:
            self.transport.close()

    # ---------------------------------------------------------------- upgrade

    def _on_upgrade(self, leftover):
        self.upgrade_data = bytearray(leftover)
        self.pause_reading(PAUSE_UPGRADE)
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
            self.resume_reading(PAUSE_UPGRADE)
            self.closing = True
            cycle.dispatch()
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
        self.transport.set_write_buffer_limits()  # the WebSocket's own (asyncio's defaults)
        self.transport.set_protocol(ws)
        ws.start()
        self.transport.resume_reading()
