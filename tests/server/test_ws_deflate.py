"""permessage-deflate (RFC 7692) in the sans-I/O codec: negotiation
(``ws_deflate.negotiate``, websockets' rules), the RSV1 rules, fragmented
compressed messages with control frames between them, max_size on the
inflated size (zip bombs), slices, context takeover both ways."""

import os
import time
import zlib

import pytest

from shmchannels.server import websocket as ws
from shmchannels.server import ws_deflate
from shmchannels.server.config import ProtocolConfig
from shmchannels.server.testing import client_frame, close_code_of, parse_server_frames


def sent_close(c):
    (fin, op, payload), = parse_server_frames(c.data_to_send())[0]
    assert op == 0x8
    return close_code_of(payload)


def offer(value):
    return [(b"host", b"x"), (b"sec-websocket-extensions", value.encode())]


def codec(max_size=1 << 20, offer_value="permessage-deflate; client_max_window_bits", resume=None, **config):
    deflate = ws_deflate.negotiate(ProtocolConfig(**config), offer(offer_value))
    assert deflate is not None
    return ws.FrameCodec(max_size, deflate, resume)


class Client:
    """A client's compressor (raw deflate, the tail stripped)."""

    def __init__(self, bits=15, no_context=False):
        self.bits = bits
        self.no_context = no_context
        self.c = zlib.compressobj(wbits=-bits)

    def compress(self, data):
        if self.no_context:
            self.c = zlib.compressobj(wbits=-self.bits)
        out = self.c.compress(data) + self.c.flush(zlib.Z_SYNC_FLUSH)
        assert out.endswith(ws.DEFLATE_TAIL)
        return out[:-4]


def inflater(bits=15):
    return zlib.decompressobj(wbits=-bits)


def server_frames(data):
    """[(rsv1, opcode, payload)] of server frames."""
    frames, rest = parse_server_frames(data)
    assert not rest
    rsv, pos = [], 0
    for fin, op, payload in frames:
        rsv.append(bool(data[pos] & 0x40))
        pos += len(ws.encode_frame(op, payload))
    return [(r, op, p) for r, (fin, op, p) in zip(rsv, frames)]


# ------------------------------------------------------------ negotiation


@pytest.mark.parametrize("value, response", [
    ("permessage-deflate", b"permessage-deflate; server_max_window_bits=12"),
    ("permessage-deflate; client_max_window_bits",
     b"permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"),
    ("permessage-deflate; client_max_window_bits=10",
     b"permessage-deflate; server_max_window_bits=12; client_max_window_bits=10"),
    ("permessage-deflate; server_max_window_bits=10", b"permessage-deflate; server_max_window_bits=10"),
    ("permessage-deflate; server_no_context_takeover; client_no_context_takeover",
     b"permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12"),
    # the first acceptable offer wins; unknown extensions are skipped
    ("x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=8, permessage-deflate",
     b"permessage-deflate; server_max_window_bits=12"),
])
def test_negotiation_answers_the_first_acceptable_offer(value, response):
    deflate = ws_deflate.negotiate(ProtocolConfig(), offer(value))
    assert deflate.response == response
    resp = ws.accept_response(b"dGhlIHNhbXBsZSBub25jZQ==", extensions=deflate.response)
    assert b"\r\nSec-WebSocket-Extensions: " + response + b"\r\n" in resp


@pytest.mark.parametrize("value", [
    "",  # nothing offered
    "x-webkit-deflate-frame",
    "permessage-deflate; server_max_window_bits=8",  # zlib cannot compress with a 256-byte window
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; unknown_param",
    "permessage-deflate; client_no_context_takeover=1",
    "permessage-deflate; ;;",  # malformed header: no extension, the handshake goes on
])
def test_negotiation_declines(value):
    assert ws_deflate.negotiate(ProtocolConfig(), offer(value)) is None


def test_negotiation_off_and_parameters_from_the_config():
    assert ws_deflate.negotiate(ProtocolConfig(ws_per_message_deflate=False), offer("permessage-deflate")) is None
    d = ws_deflate.negotiate(ProtocolConfig(
        ws_deflate_server_max_window_bits=9, ws_deflate_client_max_window_bits=8,
        ws_deflate_server_no_context_takeover=True, ws_deflate_client_no_context_takeover=True,
    ), offer("permessage-deflate; client_max_window_bits"))
    assert d.response == (b"permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                          b"server_max_window_bits=9; client_max_window_bits=8")
    assert (d.local_bits, d.remote_bits, d.local_no_context, d.remote_no_context) == (9, 8, True, True)
    with pytest.raises(ValueError):
        ProtocolConfig(ws_deflate_server_max_window_bits=8)
    with pytest.raises(ValueError):
        ProtocolConfig(ws_deflate_client_max_window_bits=7)


def test_no_extension_header_without_deflate():
    assert ws.FrameCodec().extension is None
    assert b"Extensions" not in ws.accept_response(b"dGhlIHNhbXBsZSBub25jZQ==")


# ------------------------------------------------------------ RSV1 rules


def test_compressed_messages_in_and_out_with_context_takeover():
    c = codec()
    client = Client()
    text = "héllo " * 50
    events = c.receive_data(client_frame(0x1, client.compress(text.encode()), rsv=4)
                            + client_frame(0x2, client.compress(b"\x00\x01" * 1000), rsv=4)
                            + client_frame(0x1, "plain", rsv=0))  # an uncompressed message is fine too
    assert events == [("text", text), ("bytes", b"\x00\x01" * 1000), ("text", "plain")]
    # the second identical message is smaller: the client's context carries over and we keep ours
    again = client.compress(text.encode())
    assert len(again) < 10
    assert c.receive_data(client_frame(0x1, again, rsv=4)) == [("text", text)]
    # outgoing: RSV1 set, one inflater reads them all (our context carries over)
    d = inflater(12)
    out = c.send_text(text) + c.send_text(text) + c.send_binary(b"")
    frames = server_frames(out)
    assert [(r, op) for r, op, _ in frames] == [(True, 0x1), (True, 0x1), (True, 0x2)]
    assert len(frames[1][2]) < len(frames[0][2]) < len(text)
    assert [d.decompress(p + ws.DEFLATE_TAIL) for _, _, p in frames] == [text.encode(), text.encode(), b""]


@pytest.mark.parametrize("name, frames", [
    ("RSV1 without deflate negotiated", None),
    ("RSV2", [client_frame(0x1, b"x", rsv=2)]),
    ("RSV3", [client_frame(0x1, b"x", rsv=1)]),
    ("RSV1 on a continuation", [client_frame(0x1, Client().compress(b"ab"), rsv=4, fin=False),
                                client_frame(0x0, b"", rsv=4)]),
    ("RSV1 on a ping", [client_frame(0x9, b"", rsv=4)]),
    ("RSV1 on a close", [client_frame(0x8, b"\x03\xe8", rsv=4)]),
    ("RSV1 on an unknown opcode", [client_frame(0x3, b"", rsv=4)]),
])
def test_rsv_rules(name, frames):
    if frames is None:
        c = ws.FrameCodec()
        frames = [client_frame(0x1, Client().compress(b"hello"), rsv=4)]
    else:
        c = codec()
    with pytest.raises(ws.ProtocolError) as info:
        for f in frames:
            c.receive_data(f)
    assert info.value.code == 1002
    assert sent_close(c) == 1002


def test_fragmented_compressed_message_with_control_frames_between():
    c = codec()
    data = ("fragmented ünïcode " * 400).encode()
    z = Client().compress(data)
    cut = [z[:7], z[7:300], z[300:301], z[301:]]
    stream = (client_frame(0x1, cut[0], rsv=4, fin=False) + client_frame(0x9, b"ping")
              + client_frame(0x0, cut[1], fin=False) + client_frame(0xA, b"pong")
              + client_frame(0x0, cut[2], fin=False) + client_frame(0x0, cut[3]))
    events = []
    for i in range(0, len(stream), 5):  # fed in small pieces
        events += c.receive_data(stream[i:i + 5])
    assert events == [("ping", b"ping"), ("pong", b"pong"), ("text", data.decode())]
    # an empty last fragment works too
    z2 = Client().compress(b"tail")
    c2 = codec()
    assert c2.receive_data(client_frame(0x2, z2, rsv=4, fin=False) + client_frame(0x0, b"")) == [("bytes", b"tail")]


def test_invalid_utf8_and_invalid_deflate_in_compressed_messages():
    for payload, code in ((Client().compress(b"ok \xff\xfe"), 1007), (b"\xff\xff\xff\xff", 1007)):
        c = codec()
        with pytest.raises(ws.ProtocolError) as info:
            c.receive_data(client_frame(0x1, payload, rsv=4))
        assert info.value.code == code
    # a truncated multi-byte character at the end of the message
    c = codec()
    with pytest.raises(ws.ProtocolError) as info:
        c.receive_data(client_frame(0x1, Client().compress(b"abc\xc3"), rsv=4))
    assert info.value.code == 1007


# ------------------------------------------------------------ max_size, bombs, slices


def test_inflated_max_size_exact_passes_and_one_more_fails():
    for n, ok in ((4096, True), (4097, False)):
        c = codec(max_size=4096)
        frame = client_frame(0x2, Client().compress(b"a" * n), rsv=4)
        if ok:
            assert c.receive_data(frame) == [("bytes", b"a" * n)]
        else:
            with pytest.raises(ws.ProtocolError) as info:
                c.receive_data(frame)
            assert info.value.code == 1009


def test_zip_bomb_is_refused_with_1009_without_inflating_it():
    z = zlib.compressobj(1, wbits=-15)
    zeros = b"\x00" * (16 << 20)
    bomb = b"".join(z.compress(zeros) for _ in range(16)) + z.flush(zlib.Z_SYNC_FLUSH)[:-4]
    assert len(bomb) < 1200_000  # 256 MiB of zeros in ~1.1 MiB: inflating all of it takes ~0.9 s here
    c = codec(max_size=2 << 20)  # the compressed frame (1.1 MiB) is within max_size
    t0 = time.perf_counter()
    with pytest.raises(ws.ProtocolError) as info:
        c.receive_data(client_frame(0x2, bomb, rsv=4))
        while True:  # one slice per call
            c.receive_data(b"")
    took = time.perf_counter() - t0
    assert info.value.code == 1009
    assert sent_close(c) == 1009
    assert took < 0.3, f"{took:.2f}s: the bomb was inflated"
    # spread over fragments: stopped at the fragment that crosses max_size
    c = codec(max_size=1 << 20)
    zipped = Client().compress(b"\x00" * (4 << 20))
    frames = [client_frame(0x2, zipped[:100], rsv=4, fin=False)] + [
        client_frame(0x0, zipped[i:i + 100], fin=False) for i in range(100, len(zipped), 100)]
    with pytest.raises(ws.ProtocolError) as info:
        for f in frames:
            c.receive_data(f)
            while c.inflate_rest is not None:
                c.receive_data(b"")
    assert info.value.code == 1009


def test_compressed_frame_length_is_bounded_from_the_header():
    c = codec(max_size=1000)
    head = bytes((0xC2, 0x80 | 127)) + (1 << 40).to_bytes(8, "big")
    with pytest.raises(ws.ProtocolError) as info:
        c.receive_data(head)
    assert info.value.code == 1009


def test_large_message_is_inflated_in_slices_with_later_frames_in_order():
    resumes = []
    c = codec(max_size=16 << 20, resume=lambda: resumes.append(1))
    data = os.urandom(1024) * 4096  # 4 MiB that deflates to ~20 KiB
    z = Client().compress(data)
    stream = client_frame(0x2, z, rsv=4) + client_frame(0x9, b"after") + client_frame(0x1, "next")
    events = c.receive_data(stream)
    assert events == [] and resumes == [1]
    calls = 1
    while not events:
        events = c.receive_data(b"")
        calls += 1
    assert calls >= (4 << 20) // c.inflate_slice  # one slice per call
    assert len(resumes) == calls - 1
    assert events == [("bytes", data), ("ping", b"after"), ("text", "next")]
    # many small compressed messages in one read are sliced too
    c = codec(max_size=1 << 20, resume=lambda: None)
    z = Client(no_context=True).compress(b"\x00" * 200_000)
    events = c.receive_data(client_frame(0x2, z, rsv=4) * 10)
    assert len(events) < 10
    while len(events) < 10:
        events += c.receive_data(b"")
    assert events == [("bytes", b"\x00" * 200_000)] * 10


# ------------------------------------------------------------ context takeover


def test_client_no_context_takeover_resets_our_inflater_per_message():
    c = codec(ws_deflate_client_no_context_takeover=True)
    assert c.deflate.remote_no_context
    client = Client(no_context=True)
    for _ in range(3):
        assert c.receive_data(client_frame(0x1, client.compress(b"same again"), rsv=4)) == [("text", "same again")]
        assert c.deflate.inflater is None  # dropped after each message
    # with context takeover on our side, a client that relies on its context is understood
    c = codec()
    client = Client()
    for _ in range(3):
        assert c.receive_data(client_frame(0x1, client.compress(b"same again"), rsv=4)) == [("text", "same again")]


def test_server_no_context_takeover_compresses_each_message_alone():
    c = codec(ws_deflate_server_no_context_takeover=True)
    frames = server_frames(c.send_text("repeat " * 20) + c.send_text("repeat " * 20))
    assert frames[0][2] == frames[1][2]  # no context: the same bytes twice
    for _, _, p in frames:  # each inflates on its own
        assert inflater(12).decompress(p + ws.DEFLATE_TAIL) == ("repeat " * 20).encode()
    assert c.deflate.deflater is None


def test_large_outgoing_messages_go_uncompressed():
    c = codec()
    big = b"z" * (ws_deflate.COMPRESS_MAX + 1)
    (rsv, op, payload), = server_frames(c.send_binary(big))
    assert (rsv, op, payload) == (False, 0x2, big)
    (rsv, op, payload), = server_frames(c.send_binary(big[:ws_deflate.COMPRESS_MAX]))
    assert rsv and len(payload) < 5000
