"""Sans-I/O WebSocket (RFC 6455), server side: handshake and frame codec.

No sockets and no event loop here: ``validate_handshake`` checks an upgrade
request, ``accept_response`` builds the 101, and ``FrameCodec`` turns bytes
into messages (``receive_data``) and messages into bytes (``send_text`` ...).
The asyncio glue lives in ``ws_protocol.py``.

What the codec enforces (each failure raises ``ProtocolError`` with the close
code the connection must be failed with; the codec has then queued that
close frame in ``data_to_send()``):

* client frames must be masked; RSV bits must be clear, except RSV1 on the
  first frame of a compressed message when permessage-deflate was
  negotiated; opcodes are 0, 1, 2, 8, 9, 10 only                -> 1002
* control frames: at most 125 bytes, never fragmented; they may arrive
  between the fragments of a message                             -> 1002
* continuation without a message in progress, or a new text/binary frame
  while one is in progress                                       -> 1002
* text must be UTF-8, checked incrementally across fragments (a bad
  sequence fails at the fragment that contains it)               -> 1007
* a message (or one frame) larger than ``max_size``, refused from the
  frame header, before its payload is buffered                   -> 1009
* compressed messages (RFC 7692, ``ws_deflate.Deflate``): ``max_size``
  bounds the *inflated* size, checked while inflating (a zip bomb stops
  after ``max_size + 1`` bytes came out)                         -> 1009;
  data that does not inflate                                      -> 1007
* close frames: a 1-byte payload, an invalid code (< 1000, 1004-1006,
  1015, 1016-2999, >= 5000) or a reason that is not UTF-8         -> 1002 / 1007

Pings are answered with pongs automatically; a received close is echoed
(with the peer's code, or none if it sent none).  Unmasking uses
``websockets.speedups.apply_mask`` (SSE2, 16 bytes a step), UTF-8 goes
through CPython's decoder; docs/decisions-server.md has the measurements
against wsaccel and against websockets' own ``ServerProtocol``.
"""

import base64
import codecs
import zlib
import enum
import hashlib
import struct
from typing import NamedTuple

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - the wheel ships the C version
    from websockets.utils import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: what a sender strips from the end of a compressed message (RFC 7692 7.2.1)
DEFLATE_TAIL = b"\x00\x00\xff\xff"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class EventKind(enum.StrEnum):
    TEXT = "text"
    BINARY = "bytes"
    PING = "ping"
    PONG = "pong"
    CLOSE = "close"


# module-level aliases: the per-frame path compares with ``is`` against a
# global, not an attribute of the Enum class (slow in CPython 3.11)
TEXT, BINARY, PING, PONG, CLOSE = EventKind


class CloseReason(NamedTuple):
    code: int  # 1005: the peer sent no code
    reason: str


class CodecState(enum.IntEnum):
    OPEN = 0
    CLOSING = 1  # our close frame is out, the peer's not yet in
    CLOSED = 2


OPEN, CLOSING, CLOSED = CodecState

_pack_H = struct.Struct("!H").pack
_pack_BBH = struct.Struct("!BBH").pack
_pack_BBQ = struct.Struct("!BBQ").pack
_unpack_H = struct.Struct("!H").unpack_from
_unpack_Q = struct.Struct("!Q").unpack_from
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


def valid_close_code(code):
    """Codes a peer may put in a close frame (RFC 6455 7.4, IANA registry)."""
    return (1000 <= code <= 1003) or (1007 <= code <= 1014) or (3000 <= code <= 4999)


class ProtocolError(Exception):
    def __init__(self, code, reason=""):
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class HandshakeError(Exception):
    """The upgrade request is not a valid WebSocket opening handshake."""

    def __init__(self, status, reason, headers=()):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = list(headers)


def validate_handshake(method, http_version, headers):
    """Check an upgrade request; return (key, offered subprotocols).

    ``headers`` are (lower-case name, value) byte pairs.  Raises
    HandshakeError(400 or 426) when the request is not acceptable.
    """
    if method != "GET":
        raise HandshakeError(400, "WebSocket handshake must use GET")
    if http_version != "1.1":
        raise HandshakeError(400, "WebSocket handshake needs HTTP/1.1")
    key = version = None
    connection_upgrade = upgrade_ws = False
    subprotocols = []
    for name, value in headers:
        if name == b"sec-websocket-key":
            if key is not None:
                raise HandshakeError(400, "duplicate Sec-WebSocket-Key")
            key = value.strip()
        elif name == b"sec-websocket-version":
            version = value.strip()
        elif name == b"connection":
            if any(t.strip().lower() == b"upgrade" for t in value.split(b",")):
                connection_upgrade = True
        elif name == b"upgrade":
            if any(t.strip().lower() == b"websocket" for t in value.split(b",")):
                upgrade_ws = True
        elif name == b"sec-websocket-protocol":
            for item in value.split(b","):
                item = item.strip()
                if item:
                    subprotocols.append(item.decode("latin-1"))
    if not (connection_upgrade and upgrade_ws):
        raise HandshakeError(400, "missing Connection: Upgrade / Upgrade: websocket")
    if version != b"13":
        raise HandshakeError(426, "unsupported Sec-WebSocket-Version", [(b"Sec-WebSocket-Version", b"13")])
    if key is None:
        raise HandshakeError(400, "missing Sec-WebSocket-Key")
    try:
        raw = base64.b64decode(key, validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "invalid Sec-WebSocket-Key")
    return key, subprotocols


def accept_key(key):
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def accept_response(key, subprotocol=None, headers=(), server_header=None, extensions=None):
    """The 101 response completing the handshake, as bytes (``extensions``:
    the Sec-WebSocket-Extensions value, bytes, if one was negotiated)."""
    parts = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        accept_key(key),
        b"\r\n",
    ]
    if subprotocol:
        parts += [b"Sec-WebSocket-Protocol: ", subprotocol.encode("latin-1"), b"\r\n"]
    if extensions:
        parts += [b"Sec-WebSocket-Extensions: ", extensions, b"\r\n"]
    if server_header:
        parts += [b"Server: ", server_header, b"\r\n"]
    for name, value in headers:
        parts += [name, b": ", value, b"\r\n"]
    parts.append(b"\r\n")
    return b"".join(parts)


def encode_frame(opcode, payload, fin=True):
    """One unmasked (server) frame."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        return bytes((b0, n)) + payload
    if n < 65536:
        return _pack_BBH(b0, 126, n) + payload
    return _pack_BBQ(b0, 127, n) + payload


def encode_close(code=1000, reason=""):
    if code is None:
        return b"\x88\x00"
    payload = _pack_H(code) + reason.encode("utf-8")[:123]
    return bytes((0x88, len(payload))) + payload


class FrameCodec:
    """Server-side frame codec of one connection.

    ``receive_data(data)`` returns a list of ``(kind, payload)`` events:
    (TEXT, str), (BINARY, bytes), (PING, bytes), (PONG, bytes), (CLOSE,
    CloseReason).  Plain tuples, not records: there is one per message, and
    a NamedTuple costs ~250 ns more to create and free.  It raises
    ProtocolError on a violation (the close frame is then already queued).
    ``data_to_send()`` hands over the bytes the codec produced itself (pongs,
    the close echo, the failure close).

    ``deflate`` (a ``ws_deflate.Deflate``, None: not negotiated) inflates
    compressed messages and compresses outgoing ones.  An inflate that gives
    more than one slice of output stops there: ``resume()`` is called, the
    rest of the input waits in the codec, and the next ``receive_data``
    (``b""`` will do) goes on with it before any later frame.
    """

    #: unmask(data, mask) -> bytes; decode_text(bytes) -> str or UnicodeDecodeError.
    #: Class-level hooks so bench/ws_codec.py can time other primitives (wsaccel).
    unmask = staticmethod(apply_mask)
    decode_text = staticmethod(lambda payload: payload.decode("utf-8"))
    #: inflate output per ``receive_data`` call (about 1 ms of zlib) before the codec yields
    inflate_slice = 256 * 1024

    __slots__ = (
        "max_size", "buf", "frag_op", "frag_parts", "frag_size", "decoder", "out", "state",
        "close_sent", "close_received", "close_code", "deflate", "resume", "frag_deflate", "inflate_rest",
        "max_wire", "budget",
    )

    def __init__(self, max_size=1 << 20, deflate=None, resume=None):
        self.max_size = max_size
        self.deflate = deflate
        self.resume = resume or (lambda: None)
        self.frag_deflate = False  # the message in progress is compressed
        self.inflate_rest = None  # (input, fin, tail fed) of an inflate cut after a slice
        # largest compressed frame buffered: zlib's worst expansion of max_size bytes (deflateBound)
        self.max_wire = max_size + (max_size >> 3) + (max_size >> 6) + 64
        self.budget = 0  # inflate output this receive_data call may still produce
        self.buf = b""
        self.frag_op = None  # opcode of the fragmented message in progress
        self.frag_parts = []
        self.frag_size = 0
        self.decoder = None
        self.out = []
        self.state = OPEN
        self.close_sent = None  # code we sent (None: not yet)
        self.close_received = None  # code the peer sent (1005: no code)
        self.close_code = None

    # ------------------------------------------------------------ outgoing

    @property
    def extension(self):
        """The Sec-WebSocket-Extensions value for the 101, or None."""
        return None if self.deflate is None else self.deflate.response

    def send_text(self, text):
        payload = text.encode("utf-8")
        if self.deflate is not None:
            compressed = self.deflate.compress(payload)
            if compressed is not None:
                return encode_frame(OP_TEXT | 0x40, compressed)
        return encode_frame(OP_TEXT, payload)

    def send_binary(self, data):
        if self.deflate is not None:
            compressed = self.deflate.compress(data)
            if compressed is not None:
                return encode_frame(OP_BINARY | 0x40, compressed)
        return encode_frame(OP_BINARY, data)

    def send_ping(self, payload=b""):
        return encode_frame(OP_PING, payload)

    def send_close(self, code=1000, reason=""):
        """Our close frame (bytes), or b"" if one was already sent."""
        if self.close_sent is not None:
            return b""
        self.close_sent = code
        if self.close_code is None:
            self.close_code = code
        self.state = CLOSED if self.close_received is not None else CLOSING
        return encode_close(code, reason)

    def data_to_send(self):
        out = self.out
        if not out:
            return b""
        self.out = []
        return b"".join(out)

    def fail(self, code, reason=""):
        self.out.append(self.send_close(code, reason))
        self.state = CLOSED
        raise ProtocolError(code, reason)

    # ------------------------------------------------------------ incoming

    def receive_data(self, data):
        if self.state == CLOSED:
            return []
        events = []
        try:
            buf = self.buf + data if self.buf else data
            self.budget = self.inflate_slice
            if self.inflate_rest is not None:  # finish the message being inflated first
                self.buf = buf
                if not self._inflate(*self.inflate_rest, events):
                    return events
                buf = self.buf
            self._parse(buf, events)
        except ProtocolError as exc:
            exc.events = events  # what arrived intact before the violation
            raise
        return events

    def _parse(self, buf, events):
        end = len(buf)
        pos = 0
        max_size = self.max_size
        unmask = self.unmask
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            n = b1 & 0x7F
            hdr = 2
            if n == 126:
                if end - pos < 4:
                    break
                n = _unpack_H(buf, pos + 2)[0]
                hdr = 4
            elif n == 127:
                if end - pos < 10:
                    break
                n = _unpack_Q(buf, pos + 2)[0]
                hdr = 10
                if n >> 63:
                    self.fail(1002, "invalid frame length")
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            compressed = False
            if b0 & 0x70:
                if (b0 & 0x70) != 0x40 or self.deflate is None or opcode == OP_CONT or opcode > OP_BINARY:
                    self.fail(1002, "reserved bits set")
                compressed = True
            if not b1 & 0x80:
                self.fail(1002, "client frames must be masked")
            if opcode >= OP_CLOSE:
                if opcode > OP_PONG:
                    self.fail(1002, f"unknown opcode {opcode}")
                if n > 125:
                    self.fail(1002, "control frame too long")
                if not fin:
                    self.fail(1002, "fragmented control frame")
            elif opcode > OP_BINARY:
                self.fail(1002, f"unknown opcode {opcode}")
            elif opcode == OP_CONT:
                if self.frag_op is None:
                    self.fail(1002, "continuation frame without a message to continue")
                if self.frag_deflate:
                    compressed = True
                    if n > self.max_wire:
                        self.fail(1009, f"message over {max_size} bytes")
                elif self.frag_size + n > max_size:
                    self.fail(1009, f"message over {max_size} bytes")
            else:
                if self.frag_op is not None:
                    self.fail(1002, "new message while a fragmented one is in progress")
                if n > (self.max_wire if compressed else max_size):
                    self.fail(1009, f"message over {max_size} bytes")
            start = pos + hdr + 4
            stop = start + n
            if stop > end:
                break
            mask = buf[start - 4:start]
            payload = unmask(buf[start:stop], mask) if n else b""
            pos = stop
            if self.close_sent is not None and opcode != OP_CLOSE:
                continue  # after our close frame only the peer's close matters
            if compressed:
                if self.budget <= 0:  # this call inflated a slice already: this frame on the next
                    self.buf = buf[start - 4 - hdr:]
                    self.resume()
                    return
                if opcode != OP_CONT:
                    self._begin(opcode, b"")
                    self.frag_deflate = True
                if not self._inflate(payload, fin, False, events):
                    self.buf = buf[pos:] if pos < end else b""
                    return  # one slice inflated: the rest on the next call
                continue
            if opcode == OP_TEXT:
                if fin:
                    try:
                        events.append((TEXT, self.decode_text(payload)))
                    except UnicodeDecodeError:
                        self.fail(1007, "invalid UTF-8 in text message")
                else:
                    self._begin(OP_TEXT, payload)
            elif opcode == OP_BINARY:
                if fin:
                    events.append((BINARY, payload))
                else:
                    self._begin(OP_BINARY, payload)
            elif opcode == OP_CONT:
                self.frag_size += n
                if self.decoder is not None:
                    try:
                        self.frag_parts.append(self.decoder.decode(payload, bool(fin)))
                    except UnicodeDecodeError:
                        self.fail(1007, "invalid UTF-8 in text message")
                else:
                    self.frag_parts.append(payload)
                if fin:
                    self._end_message(events)
            elif opcode == OP_PING:
                self.out.append(encode_frame(OP_PONG, payload))
                events.append((PING, payload))
            elif opcode == OP_PONG:
                events.append((PONG, payload))
            else:  # OP_CLOSE
                code, reason = self._parse_close(payload)
                self.close_received = code
                if self.close_code is None:
                    self.close_code = code
                if self.close_sent is None:
                    # echo the peer's code (RFC 6455 5.5.1); no code if it sent none
                    self.out.append(self.send_close(None if code == 1005 else code))
                self.state = CLOSED
                events.append((CLOSE, CloseReason(code, reason)))
                self.buf = b""
                return
        self.buf = buf[pos:] if pos < end else b""

    def _inflate(self, data, fin, tail_fed, events):
        """Inflate one compressed frame's payload (then, at the end of the
        message, DEFLATE_TAIL) into the message in progress, at most one
        slice per call; False when it stopped after a slice (``inflate_rest``
        holds what is left)."""
        deflate = self.deflate
        max_size = self.max_size
        step = self.inflate_slice
        self.inflate_rest = None
        while True:
            limit = max_size - self.frag_size
            try:
                out, rest = deflate.inflate(data, min(limit + 1, step))
            except zlib.error:
                self.fail(1007, "invalid compressed data")
            n = len(out)
            if n > limit:
                self.fail(1009, f"message over {max_size} bytes (inflated)")
            self.frag_size += n
            if self.decoder is not None:
                try:
                    self.frag_parts.append(self.decoder.decode(out, False))
                except UnicodeDecodeError:
                    self.fail(1007, "invalid UTF-8 in text message")
            elif n:
                self.frag_parts.append(out)
            self.budget -= n
            if rest or n == step:  # input left, or output pending in zlib
                data = rest
            elif fin and not tail_fed:
                data = DEFLATE_TAIL
                tail_fed = True
            else:
                break
            if self.budget <= 0:
                self.inflate_rest = (data, fin, tail_fed)
                self.resume()
                return False
        if fin:
            if self.frag_op == OP_TEXT:
                try:
                    self.frag_parts.append(self.decoder.decode(b"", True))
                except UnicodeDecodeError:
                    self.fail(1007, "invalid UTF-8 in text message")
            self._end_message(events)
            self.frag_deflate = False
            deflate.end_message()
        return True

    def _end_message(self, events):
        """The fragments gathered so far are a whole message."""
        parts = self.frag_parts
        events.append((TEXT, "".join(parts)) if self.frag_op == OP_TEXT else (BINARY, b"".join(parts)))
        self.frag_op = self.decoder = None
        self.frag_parts = []
        self.frag_size = 0

    def _begin(self, opcode, payload):
        self.frag_op = opcode
        self.frag_size = len(payload)
        if opcode == OP_TEXT:
            self.decoder = _Utf8Decoder()
            try:
                self.frag_parts = [self.decoder.decode(payload, False)]
            except UnicodeDecodeError:
                self.fail(1007, "invalid UTF-8 in text message")
        else:
            self.frag_parts = [payload]

    def _parse_close(self, payload):
        n = len(payload)
        if n == 0:
            return 1005, ""
        if n == 1:
            self.fail(1002, "close frame with a 1-byte payload")
        code = _unpack_H(payload, 0)[0]
        if not valid_close_code(code):
            self.fail(1002, f"invalid close code {code}")
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            self.fail(1007, "invalid UTF-8 in close reason")
        return code, reason
