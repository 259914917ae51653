"""permessage-deflate (RFC 7692): negotiation, and the zlib state of one connection.

* **Negotiation** is websockets' (``ServerPerMessageDeflateFactory.
  process_request_params`` and its header parser/serialiser): the offers in
  ``Sec-WebSocket-Extensions`` are tried in order, the first acceptable one
  wins, and the 101 carries websockets' answer.  A malformed header means no
  extension (the handshake goes on uncompressed).  docs/decisions.md
  ("permessage-deflate") says why its negotiation and not its frame code.
* **Inflate** (``Deflate.inflate``) is bounded twice: by the message's
  remaining ``max_size`` (``decompressobj.decompress(max_length=...)``: a zip
  bomb is refused with 1009 after at most ``max_size + 1`` bytes came out)
  and by ``FrameCodec.inflate_slice`` bytes of output per ``receive_data``,
  so the codec stops after a slice, the connection stops reading and
  resumes on the next loop turn (``Resumer``): one large message never
  holds the event loop for more than about one slice (~1 ms of zlib).
* **Deflate** (``Deflate.compress``): messages up to ``COMPRESS_MAX`` (1 MiB)
  are compressed; larger ones go uncompressed (RSV1 clear, which RFC 7692
  section 6 allows per message), because deflating costs ~19 us per KiB: a
  1 MiB message holds the loop ~19 ms, a 16 MiB one would ~300 ms.  (Not
  lower: Autobahn's case 12 code fails on an uncompressed text message in a
  compressed session, docs/decisions.md.)
* zlib objects are created on first use and dropped after each message when
  the context is not taken over, so an idle connection holds none.
"""

import functools
import zlib

from websockets.exceptions import InvalidHeader, NegotiationError
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.headers import build_extension, parse_extension

from .websocket import FrameCodec

NAME = "permessage-deflate"
#: largest outgoing message that is compressed (bytes of payload)
COMPRESS_MAX = 1024 * 1024
#: zlib memLevel of the compressor (websockets' default: 5, 32 KiB per connection at 12 window bits)
MEM_LEVEL = 5
#: why reading from a client is paused: an inflate was cut in slices (a ws_protocol.PAUSE_* bit)
PAUSE_INFLATE = 4


class Deflate:
    """The zlib state of one connection (negotiated parameters included)."""

    __slots__ = ("response", "remote_no_context", "local_no_context", "remote_bits", "local_bits",
                 "inflater", "deflater")

    def __init__(self, response, remote_no_context=False, local_no_context=False, remote_bits=15, local_bits=15):
        self.response = response  #: the Sec-WebSocket-Extensions value of the 101
        self.remote_no_context = remote_no_context  # client_no_context_takeover
        self.local_no_context = local_no_context  # server_no_context_takeover
        self.remote_bits = remote_bits  # client_max_window_bits
        self.local_bits = local_bits  # server_max_window_bits
        self.inflater = None
        self.deflater = None

    def inflate(self, data, most):
        """At most ``most`` (>= 1) bytes of ``data`` inflated: (out, rest),
        rest being the input not consumed yet.  Raises zlib.error for data
        that is not deflate."""
        d = self.inflater
        if d is None:
            d = self.inflater = zlib.decompressobj(wbits=-self.remote_bits)
        out = d.decompress(data, most)
        return out, d.unconsumed_tail

    def end_message(self):
        if self.remote_no_context:
            self.inflater = None

    def compress(self, payload):
        """The compressed payload, or None when it goes uncompressed."""
        if len(payload) > COMPRESS_MAX:
            return None
        c = self.deflater
        if c is None:
            c = zlib.compressobj(wbits=-self.local_bits, memLevel=MEM_LEVEL)
            if not self.local_no_context:
                self.deflater = c
        data = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
        return data[:-4]  # the sync flush ends with websocket.DEFLATE_TAIL (RFC 7692 7.2.1)


@functools.lru_cache(maxsize=8)
def _factory(server_bits, client_bits, server_no_context, client_no_context):
    return ServerPerMessageDeflateFactory(
        server_no_context_takeover=server_no_context,
        client_no_context_takeover=client_no_context,
        server_max_window_bits=server_bits,
        client_max_window_bits=client_bits,
    )


def negotiate(config, headers):
    """A ``Deflate`` for the offers in ``headers`` ((lower-case name, value)
    byte pairs), or None: deflate off, nothing offered or nothing acceptable."""
    if not config.ws_per_message_deflate:
        return None
    offers = []
    for name, value in headers:
        if name == b"sec-websocket-extensions":
            try:
                offers += parse_extension(value.decode("latin-1"))
            except InvalidHeader:
                return None
    factory = None
    for name, params in offers:
        if name != NAME:
            continue
        if factory is None:
            factory = _factory(config.ws_deflate_server_max_window_bits, config.ws_deflate_client_max_window_bits,
                               config.ws_deflate_server_no_context_takeover,
                               config.ws_deflate_client_no_context_takeover)
        try:
            response, ext = factory.process_request_params(params, [])
        except NegotiationError:
            continue
        return Deflate(build_extension([(NAME, response)]).encode("latin-1"), ext.remote_no_context_takeover,
                       ext.local_no_context_takeover, ext.remote_max_window_bits, ext.local_max_window_bits)
    return None


class Resumer:
    """Continues a connection's inflate cut in slices on the next loop turn,
    with reading paused meanwhile (so a client cannot pile up input while
    its message is being inflated)."""

    __slots__ = ("protocol",)

    def __init__(self, protocol):
        self.protocol = protocol

    def __call__(self):  # the codec stopped after a slice
        self.protocol.pause_reading(PAUSE_INFLATE)
        self.protocol.loop.call_soon(self.resume)

    def resume(self):
        protocol = self.protocol
        protocol.resume_reading(PAUSE_INFLATE)
        protocol.data_received(b"")


def server_codec(protocol, headers):
    """The ``FrameCodec`` of a WebSocketProtocol, with permessage-deflate
    when the client offered it and the config allows it."""
    config = protocol.config
    return FrameCodec(config.ws_max_size, negotiate(config, headers), Resumer(protocol))
