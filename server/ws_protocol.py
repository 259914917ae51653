"""The asyncio side of a WebSocket connection.

``HttpProtocol`` hands the transport over after a valid upgrade request.
This class is the framing side; ``ws_bridge.ChannelBridge`` carries the
connection's messages to the workers, one at a time, in order.  Then:

* ``websocket.connect`` (order 0) goes out and the handshake is *held*
  until a reply arrives on the connection's reply channel: ``accept``,
  text/bytes (accept and send), ``close`` or ``accept: False`` (HTTP 403),
  or nothing within ``websocket_connect_timeout`` (403).  A full
  ``websocket.connect`` gives 503.  The application may pick one of the
  offered subprotocols with ``subprotocol`` in its accept.
* permessage-deflate (RFC 7692) is negotiated when the client offers it
  and ``ws_per_message_deflate`` is on (``ws_deflate``: websockets'
  negotiation, our codec's inflate/deflate); a large compressed message is
  inflated a slice per loop turn, with reading paused in between.
* Frames are decoded by the sans-I/O ``websocket.FrameCodec``.  Each message
  gets the next ``order`` and waits in this object until the previous
  message's ``{"__ack__": n}`` came back (or ``ack_timeout`` passed): at most
  one ``websocket.connect``/``websocket.receive`` per connection is in
  flight, so workers process a connection's messages in arrival order.
  More than ``ws_max_queue`` waiting messages pause reading.
* A client that does not read: while the socket's write buffer is over its
  high-water mark, reading from it pauses too (its own flood of messages or
  pings stops there) and a hosted ASGI instance's sends wait.  What other
  senders (groups) keep sending is written until ``ws_write_limit`` bytes
  are unsent; past that the socket is closed with 1008.
* A full ``websocket.receive`` closes with 1013.
* The worker that takes a message says who it is (``[slot, gen, order]`` on
  the server's ``shmchannels.taken?`` channel: ``taken``); if it dies before
  the ack, the server's liveness sweep calls ``worker_died``: the next
  message goes out at once (a connect whose handshake is still pending is
  rejected with 503).
* A malformed send (``text`` not a str, ``bytes`` not bytes) closes with
  1011 (HTTP 500 while the handshake is pending), and so does an
  application close with 1011 before the handshake completes (500): that is
  what the worker sends when a consumer raises.
* Keep-alive pings every ``ws_ping_interval``; no pong within
  ``ws_ping_timeout`` closes with 1011.
* ``websocket.disconnect`` (order last + 1, no ack expected) goes out after
  the socket closed and every earlier message was acknowledged.
"""

import asyncio
import enum
import logging
import struct

from shmchannels.counters import C, WS_CLOSE_CODES
from shmchannels.names import new_local_part

from . import http11, proxy, ws_deflate
from .websocket import BINARY, CLOSE, PONG, TEXT, ProtocolError, accept_response
from .ws_bridge import ChannelBridge

logger = logging.getLogger("shmchannels.server")


class State(enum.IntEnum):
    HANDSHAKE = 0  # websocket.connect is out; the 101 waits for the application
    OPEN = 1
    CLOSING = 2  # our close frame is out; waiting for the peer's
    CLOSED = 3


HANDSHAKE, OPEN, CLOSING, CLOSED = State  # aliases: globals, not Enum attribute lookups, per frame

#: close code reported in websocket.disconnect when the TCP connection ended
#: without a close frame (also after a rejected handshake)
ABNORMAL = 1006
#: why reading from the client is paused (bits)
PAUSE_QUEUE = 1  # its messages wait for the workers (ws_max_queue)
PAUSE_WRITE = 2  # it does not read what we send
PAUSE_INFLATE = ws_deflate.PAUSE_INFLATE  # a large compressed message is inflated in slices
#: where the protocol server counts messages sent and closes by code (``shmchannels.counters``)
MESSAGES_OUT = C["ws_messages_out"]
CLOSES = {code: C[f"ws_closes_{code}"] for code in WS_CLOSE_CODES}
CLOSES_OTHER = C["ws_closes_other"]


def _cancel_timers(conn, names):
    for name in names:
        handle = getattr(conn, name)
        if handle is not None:
            handle.cancel()
            setattr(conn, name, None)


class WebSocketProtocol(asyncio.Protocol):
    def __init__(self, server, transport, req, key, subprotocols, client, server_addr, leftover=b""):
        self.server = server
        self.config = server.config
        self.layer = server.layer
        self.loop = server.loop
        self.transport = transport
        self.req = req
        self.key = key
        self.subprotocols = subprotocols
        self.client = client
        self.server_addr = server_addr
        self.scheme = "ws"
        self.path = req.path
        self.codec = ws_deflate.server_codec(self, req.headers)  # permessage-deflate if offered and on
        self.state = HANDSHAKE
        self.pending = bytearray(leftover)  # bytes that arrived before the handshake completed
        self.reply_channel = reply_channel = server.ws_prefix + new_local_part()
        self.bridge = ChannelBridge(self, reply_channel, req.path)
        self.connect_handle = None
        self.ping_handle = None
        self.pong_handle = None
        self.close_handle = None
        self.ping_payload = None
        self.pings = 0
        self.close_code = None  # what websocket.disconnect will report
        self.paused = 0  # PAUSE_* bits
        self.transport_closed = False
        self.opened = False  # the 101 went out: only then is the end a WebSocket close (by code)

    @property
    def disconnect_sent(self):
        """Whether this connection is over for the workers too (the server waits for it at shutdown)."""
        return self.bridge.disconnect_sent

    # ------------------------------------------------------------ life cycle

    def start(self):
        server = self.server
        config = self.config
        layer = self.layer
        req = self.req
        if config.proxy_headers:
            fwd = proxy.forwarded(config.trusted, req.headers, self.client, self.server_addr, websocket=True)
            if fwd is not None:
                self.client, self.server_addr = fwd.client, fwd.server
                self.scheme = fwd.scheme or "ws"
        message = {
            "reply_channel": self.reply_channel,
            "scheme": self.scheme,
            "path": req.path,
            "query_string": req.query_string,
            "root_path": config.root_path,
            "headers": req.headers,
            "client": self.client,
            "server": self.server_addr,
            "order": 0,
            "subprotocols": self.subprotocols,
            "__taken__": server.taken_channel,  # (shmchannels) where the worker says who it is
        }
        if req.raw_path is not None:
            message["raw_path"] = req.raw_path
        try:
            self.bridge.connect(message)
        except (layer.ChannelFull, layer.MessageTooLarge) as exc:
            server.counters["rejected_full"] += 1
            self.reject(503, b"Service Unavailable: connect queue full", log_status=503)
            self.bridge.forget()
            logger.debug("websocket.connect refused: %r", exc)
            return
        server.channels[self.reply_channel] = self
        server.websockets.add(self)
        server.counters["websockets_total"] += 1
        if config.websocket_connect_timeout:
            self.connect_handle = self.loop.call_later(config.websocket_connect_timeout, self._connect_timeout)
        if server.shutting_down:
            self.shutdown(1001)

    def connection_made(self, transport):  # pragma: no cover - we are given the transport
        self.transport = transport

    def connection_lost(self, exc):
        self.transport_closed = True
        previous = self.state
        self.state = CLOSED
        _cancel_timers(self, ("connect_handle", "ping_handle", "pong_handle", "close_handle"))
        if self.close_code is None:
            self.close_code = ABNORMAL
        if self.opened:
            self.server.stats_words[CLOSES.get(self.close_code, CLOSES_OTHER)] += 1
        elif previous == HANDSHAKE and self.server.access_log_enabled:  # the client left while we waited
            self.server.access_log.log(self.client, self.req, 499, 0)
        self.server.websockets.discard(self)
        self.bridge.disconnect(self.close_code)
        self.server.connection_closed()

    def eof_received(self):
        return False  # the peer half-closed: close our side too

    def pause_writing(self):
        self.pause_reading(PAUSE_WRITE)
        self.bridge.flow(False)

    def resume_writing(self):
        self.resume_reading(PAUSE_WRITE)
        self.bridge.flow(True)

    def _write_message(self, frame):
        """A message for the client, or a close with 1008 if it left too much unread."""
        buffered = self.transport.get_write_buffer_size()
        if buffered and buffered + len(frame) > self.config.ws_write_limit:
            self.server.counters["write_limit_closes"] += 1
            logger.warning("%s does not read: %d bytes unsent (ws_write_limit %d): closing with 1008",
                           self.client, buffered, self.config.ws_write_limit)
            return self.close_with(1008)
        self.server.stats_words[MESSAGES_OUT] += 1
        self.transport.write(frame)

    # ---------------------------------------------------------- incoming data

    def data_received(self, data):
        state = self.state
        if state == HANDSHAKE:
            self.pending += data
            if len(self.pending) > self.config.ws_max_size + 16:
                self.transport.close()
            return
        if state == CLOSED:
            return
        codec = self.codec
        try:
            events = codec.receive_data(data)
        except ProtocolError as exc:
            logger.debug("websocket protocol error from %s: %s %s", self.client, exc.code, exc.reason)
            self.server.counters["ws_protocol_errors"] += 1
            for event in exc.events:
                self._on_event(event)
            self._fail(exc.code)
            return
        out = codec.data_to_send()
        if out:
            self.transport.write(out)
        for event in events:
            self._on_event(event)

    def _on_event(self, event):
        kind, payload = event
        if self.state != OPEN and (kind is TEXT or kind is BINARY):
            return  # we are closing (1013, shutdown...): later messages are discarded
        if kind is TEXT:
            self.bridge.receive(payload, None)
        elif kind is BINARY:
            self.bridge.receive(None, payload)
        elif kind is PONG:
            if payload == self.ping_payload and self.pong_handle is not None:
                self.pong_handle.cancel()
                self.pong_handle = None
        elif kind is CLOSE:
            if self.close_code is None:
                self.close_code = payload.code
            out = self.codec.data_to_send()  # our echo, unless we closed first
            if out:
                self.transport.write(out)
            self.state = CLOSED
            self.transport.close()  # the server closes TCP first (RFC 6455 7.1.1)
        # PING: the codec already queued the pong

    # ---------------------------------------------------------------- replies

    def on_reply(self, message):
        state = self.state
        text = message.get("text")
        data = message.get("bytes")
        if text is None and data is None and len(message) == 1:
            # the control replies of a worker hosting an ASGI application
            if "__bind__" in message:
                return self.bridge.bind(message["__bind__"])
            if "__resume__" in message:
                return self.bridge.handover()
            if "__successor__" in message:
                return self.bridge.prepare_successor()
            if "deny" in message:
                return self._deny(message["deny"])
        if (text is not None and type(text) is not str) or (
            data is not None and not isinstance(data, (bytes, bytearray, memoryview))
        ):
            self.reply_failed(
                f"text must be a str and bytes bytes (got text {type(text).__name__}, bytes {type(data).__name__})"
            )
            state = CLOSED
        if state == HANDSHAKE:
            accept = message.get("accept")
            close = message.get("close")
            if close == 1011 and type(close) is int and text is None and data is None and accept is not True:
                logger.error("the application failed websocket.connect on %s: 500", self.reply_channel)
                self.reject(500, b"Internal Server Error")
            elif accept is False or (close and text is None and data is None and accept is not True):
                self.reject(403, b"Forbidden")
            elif accept is True or text is not None or data is not None:
                self._accept(message.get("subprotocol"), message.get("headers") or ())
            state = self.state
        if state == OPEN:
            if text is not None:
                try:
                    frame = self.codec.send_text(text)
                except UnicodeEncodeError:
                    self.reply_failed("text is not encodable as UTF-8 (a lone surrogate?)")
                    frame = None
                if frame is not None:
                    self._write_message(frame)
            elif data is not None:
                self._write_message(self.codec.send_binary(data))
            close = message.get("close")
            if close and self.state == OPEN:
                self.close_with(1000 if close is True else close)
        ack = message.get("__ack__")
        if ack is not None:
            self.bridge.on_ack(ack)

    def reply_failed(self, reason):
        """A send that cannot be delivered as given: close with 1011 (HTTP
        500 while the handshake is pending)."""
        self.server.counters["bad_replies"] += 1
        if self.state == HANDSHAKE:
            logger.error("bad reply on %s: %s; answering 500", self.reply_channel, reason)
            self.reject(500, b"Internal Server Error")
        elif self.state == OPEN:
            logger.error("bad reply on %s: %s; closing with 1011", self.reply_channel, reason)
            self.close_with(1011)
        else:
            logger.error("bad reply on %s: %s (ignored: the connection is closing)", self.reply_channel, reason)

    def _accept(self, subprotocol, headers=()):
        if self.connect_handle is not None:
            self.connect_handle.cancel()
            self.connect_handle = None
        if subprotocol is not None and subprotocol not in self.subprotocols:
            logger.warning("application chose subprotocol %r, which the client did not offer; not sent", subprotocol)
            subprotocol = None
        try:
            headers = http11.checked_headers(headers)
        except http11.ResponseError as exc:
            logger.error("bad accept headers on %s: %s; sent without them", self.reply_channel, exc)
            headers = ()
        self.transport.write(accept_response(self.key, subprotocol, headers, self.server.server_header, self.codec.extension))
        self.state = OPEN
        self.opened = True
        if self.server.access_log_enabled:
            self.server.access_log.log(self.client, self.req, 101, 0)
        if self.config.ws_ping_interval:
            self.ping_handle = self.loop.call_later(self.config.ws_ping_interval, self._ping)
        if self.pending:
            data = bytes(self.pending)
            self.pending = None
            self.data_received(data)
        else:
            self.pending = None

    def _deny(self, denial):
        """``websocket.http.response``: the application refused the handshake
        with a response of its own ([status, headers, body])."""
        if self.state != HANDSHAKE:
            self.reply_failed("a denial response after the handshake completed")
            return
        try:
            status, headers, body = denial
            head = http11.response_head(
                status, headers, body, False, request=self.req, keep_alive=False,
                server_header=self.server.server_header, date=self.config.date_header,
            )[0]
        except (TypeError, ValueError, http11.ResponseError) as exc:
            self.reply_failed(f"bad denial response: {exc}")
            return
        if self.connect_handle is not None:
            self.connect_handle.cancel()
            self.connect_handle = None
        self.transport.write(head + (b"" if self.req.method == "HEAD" else bytes(body)))
        if self.server.access_log_enabled:
            self.server.access_log.log(self.client, self.req, status, len(body))
        self.close_code = ABNORMAL
        self._drop()

    def connect_pending(self):
        """Whether the handshake still waits for the application's answer."""
        return self.state == HANDSHAKE

    def reject(self, status, body, log_status=None):
        """Refuse the handshake with an HTTP response."""
        if self.connect_handle is not None:
            self.connect_handle.cancel()
            self.connect_handle = None
        self.transport.write(http11.simple_response(status, body, keep_alive=False, server_header=self.server.server_header))
        if self.server.access_log_enabled:
            self.server.access_log.log(self.client, self.req, log_status or status, len(body))
        self.close_code = ABNORMAL
        self._drop()

    def _connect_timeout(self):
        self.connect_handle = None
        if self.state == HANDSHAKE:
            logger.warning("no answer to websocket.connect on %s within %ss: 403",
                           self.reply_channel, self.config.websocket_connect_timeout)
            self.server.counters["timeouts"] += 1
            self.reject(403, b"Forbidden: no answer from the application")

    # ------------------------------------------------------------------ close

    def close_with(self, code):
        """Start the closing handshake (we close first)."""
        if self.state == HANDSHAKE:
            self.reject(503 if code in (1001, 1012, 1013) else 403, b"Service Unavailable")
            return
        if self.state != OPEN:
            return
        if type(code) is not int or not (
            code == 1000 or 3000 <= code <= 4999 or (1001 <= code <= 1014 and code not in (1004, 1005, 1006))
        ):
            logger.warning("invalid close code %r from the application; using 1000", code)
            code = 1000
        self.close_code = code
        self.transport.write(self.codec.send_close(code))
        self.state = CLOSING
        _cancel_timers(self, ("ping_handle", "pong_handle"))
        self.close_handle = self.loop.call_later(self.config.ws_close_timeout, self._close_timeout)

    def _close_timeout(self):
        self.close_handle = None
        if not self.transport_closed:
            self.transport.abort()

    def _fail(self, code):
        """Fail the connection: the codec queued our close frame; drop TCP."""
        if self.close_code is None:
            self.close_code = code
        out = self.codec.data_to_send()
        if out:
            self.transport.write(out)
        self._drop()

    def _drop(self):
        """Close TCP after what is queued, within ws_close_timeout: a client
        that never reads would keep a plain ``transport.close()`` waiting forever."""
        self.state = CLOSED
        _cancel_timers(self, ("ping_handle", "pong_handle"))
        self.transport.close()
        if self.close_handle is None and not self.transport_closed:
            self.close_handle = self.loop.call_later(self.config.ws_close_timeout, self._close_timeout)

    def shutdown(self, code=1001):
        """Server stop (1001) or roll (1012)."""
        if self.state in (HANDSHAKE, OPEN):
            self.close_with(code)

    def force_close(self):
        """graceful_timeout passed: drop TCP, send websocket.disconnect now."""
        if not self.transport_closed:
            self.transport.abort()
        self.bridge.give_up()

    def taken(self, who, inbox=None):
        self.bridge.taken(who)

    def pause_reading(self, reason=PAUSE_QUEUE):
        """The bridge's queue is over ws_max_queue (or the client does not read)."""
        if not self.paused and not self.transport_closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume_reading(self, reason=PAUSE_QUEUE):
        if self.paused == reason and not self.transport_closed:
            self.transport.resume_reading()
        self.paused &= ~reason

    # ------------------------------------------------------------------ pings

    def _ping(self):
        self.ping_handle = None
        if self.state != OPEN:
            return
        if self.pong_handle is None:
            self.pings += 1
            self.ping_payload = struct.pack("!I", self.pings)
            self.transport.write(self.codec.send_ping(self.ping_payload))
            if self.config.ws_ping_timeout:
                self.pong_handle = self.loop.call_later(self.config.ws_ping_timeout, self._pong_missing)
        self.ping_handle = self.loop.call_later(self.config.ws_ping_interval, self._ping)

    def _pong_missing(self):
        self.pong_handle = None
        if self.state != OPEN:
            return
        logger.info("no pong from %s within %ss: closing with 1011", self.client, self.config.ws_ping_timeout)
        self.server.counters["ping_timeouts"] += 1
        self.close_code = 1011
        self.transport.write(self.codec.send_close(1011))
        self._drop()
