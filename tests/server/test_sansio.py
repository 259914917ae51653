"""The protocol server's sans-I/O cores: HTTP/1.1 parsing and response
framing, the WebSocket handshake and frame codec, proxy headers, config."""

import pytest

from shmchannels.server import http11, proxy
from shmchannels.server import websocket as ws
from shmchannels.server.config import ProtocolConfig, TrustedHosts
from shmchannels.server.http11 import EV_BODY, EV_END, EV_ERROR, EV_REQUEST, EV_UPGRADE
from shmchannels.server.testing import BAD_FRAMES, BAD_FRAMES_MAX_SIZE, client_frame, close_payload, parse_server_frames


def parse(data, pieces=None, **limits):
    p = http11.RequestParser(**limits)
    events = []
    if pieces:
        for i in range(0, len(data), pieces):
            events += p.feed(data[i:i + pieces])
    else:
        events = p.feed(data)
    return events


# ------------------------------------------------------------------- parser


def test_simple_get_and_pipelined_post():
    ev = parse(b"GET /a%20b?x=1#frag HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\n\r\n"
               b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc")
    kinds = [k for k, _ in ev]
    assert kinds == [EV_REQUEST, EV_END, EV_REQUEST, EV_BODY, EV_END]
    req = ev[0][1]
    assert (req.method, req.http_version, req.path, req.query_string) == ("GET", "1.1", "/a b", b"x=1")
    assert req.headers == [(b"host", b"h"), (b"x-a", b"1"), (b"x-a", b"2")]
    assert req.keep_alive and not req.upgrade and req.content_length is None
    post = ev[2][1]
    assert post.content_length == 3 and ev[3][1] == b"abc"


def test_byte_by_byte_feeding_gives_the_same_events():
    data = (b"POST /x?q HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    ev = parse(data, pieces=1)
    assert [k for k, _ in ev][0] == EV_REQUEST and ev[-1][0] == EV_END
    assert b"".join(v for k, v in ev if k == EV_BODY) == b"abcde"
    req = ev[0][1]
    assert req.chunked and req.expect_continue


def test_absolute_form_and_asterisk_targets():
    ev = parse(b"GET http://example.com/p/q?z=9 HTTP/1.1\r\nHost: example.com\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (ev[0][1].path, ev[0][1].query_string) == ("/p/q", b"z=9")
    assert ev[2][1].path == "*"


def test_http10_expect_is_ignored_and_keep_alive_follows_version():
    ev = parse(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx")
    req = ev[0][1]
    assert not req.expect_continue and not req.keep_alive and req.http_version == "1.0"


@pytest.mark.parametrize("data, status", [
    (b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"A: b\r\n" * 6 + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nA: " + b"b" * 100 + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1001\r\n\r\n", 413),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3e9\r\n" + b"x" * 1001, 413),
    (b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 200-ok\r\n\r\n", 417),
    (b"GET /%c3%28 HTTP/1.1\r\n\r\n", 400),
    (b"\x00\x01\x02 / HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n", 400),
])
def test_limits_and_errors(data, status):
    limits = dict(limit_request_line=50, limit_request_fields=5, limit_request_field_size=50, limit_request_body=1000)
    for pieces in (None, 7):
        ev = parse(data, pieces=pieces, **limits)
        assert ev[-1] == (EV_ERROR, ev[-1][1]) and ev[-1][1][0] == status, (pieces, ev)


def test_a_head_that_never_ends_is_refused_even_fed_slowly():
    p = http11.RequestParser(limit_request_fields=2, limit_request_field_size=100, limit_request_line=100)
    p.feed(b"GET / HTTP/1.1\r\nX-Endless: ")
    events = []
    for _ in range(1000):
        events += p.feed(b"v" * 10)
        if events:
            break
    assert events and events[-1][1][0] == 431
    assert p.feed(b"more") == []  # dead after an error


def test_upgrade_stops_parsing_and_returns_the_rest():
    ev = parse(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x80abcd")
    assert [k for k, _ in ev] == [EV_REQUEST, EV_END, EV_UPGRADE]
    assert ev[0][1].upgrade and ev[2][1] == b"\x81\x80abcd"


# --------------------------------------------------------------- responses


class Req:
    def __init__(self, method="GET", http_version="1.1"):
        self.method = method
        self.http_version = http_version


def head(status=200, headers=(), content=b"", more=False, req=None, keep_alive=True):
    return http11.response_head(status, list(headers), content, more, request=req or Req(),
                                keep_alive=keep_alive, server_header=b"srv", date=False)[:3]


def test_content_length_added_when_the_first_message_is_the_last():
    h, mode, ka = head(content=b"hello")
    assert h == b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nserver: srv\r\n\r\n" and mode == http11.MODE_LENGTH and ka


def test_chunked_for_http11_streams_and_close_delimited_for_http10():
    h, mode, ka = head(more=True)
    assert b"transfer-encoding: chunked\r\n" in h and mode == http11.MODE_CHUNKED and ka
    h, mode, ka = head(more=True, req=Req(http_version="1.0"))
    assert b"transfer-encoding" not in h and b"connection: close\r\n" in h and mode == http11.MODE_CLOSE and not ka
    assert http11.chunk(b"abc") == b"3\r\nabc\r\n" and http11.chunk(b"") == b"0\r\n\r\n"


def test_application_headers_kept_framing_headers_ours():
    h, mode, ka = head(headers=[(b"Content-Length", b"10"), (b"Transfer-Encoding", b"chunked"), (b"Server", b"app"),
                                (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")], content=b"12345", more=True)
    assert b"Transfer-Encoding" not in h and b"content-length: 5" not in h
    assert h.count(b"Set-Cookie") == 2 and b"Server: app\r\n" in h and b"server: srv" not in h
    assert mode == http11.MODE_LENGTH
    h, _, ka = head(headers=[("Connection", "close"), ("X-Str", "ok")])
    assert not ka and b"connection: close\r\n" in h and b"X-Str: ok\r\n" in h


def test_no_body_statuses_and_head():
    h, mode, _ = head(status=204)
    assert mode == http11.MODE_NONE and b"content-length" not in h
    h, mode, _ = head(status=304)
    assert mode == http11.MODE_NONE
    h, mode, _ = head(content=b"hello", req=Req(method="HEAD"))
    assert mode == http11.MODE_NONE and b"content-length: 5\r\n" in h
    h, _, _ = head(status=599)
    assert h.startswith(b"HTTP/1.1 599 \r\n")


@pytest.mark.parametrize("headers, status", [
    ([(b"x", b"a\r\nb: c")], 200),
    ([(b"x", b"a\nb")], 200),
    ([(b"x\r\ny", b"1")], 200),
    ([(b"x", b"a\rb")], 200),
    ([(b"x", b"a\0b")], 200),
    ([(b"x\0", b"1")], 200),
    ([(b"x:y", b"1")], 200),
    ([(b"x y", b"1")], 200),
    ([(b"x ", b"1")], 200),
    ([(b"", b"1")], 200),
    ([("x:y", "1")], 200),
    ([], 99),
    ([], "200"),
    ([(b"x", 5)], 200),
])
def test_bad_responses_are_refused(headers, status):
    with pytest.raises(http11.ResponseError):
        head(status=status, headers=headers)


# ----------------------------------------------------------------- websocket


def test_handshake_validation():
    good = [(b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"WebSocket"), (b"sec-websocket-version", b"13"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="), (b"sec-websocket-protocol", b"a, b"),
            (b"sec-websocket-protocol", b"c")]
    key, protos = ws.validate_handshake("GET", "1.1", good)
    assert protos == ["a", "b", "c"]
    assert ws.accept_key(key) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    for method, version, drop, status in [
        ("POST", "1.1", None, 400), ("GET", "1.0", None, 400), ("GET", "1.1", b"upgrade", 400),
        ("GET", "1.1", b"sec-websocket-key", 400), ("GET", "1.1", b"sec-websocket-version", 426),
    ]:
        headers = [h for h in good if h[0] != drop]
        with pytest.raises(ws.HandshakeError) as info:
            ws.validate_handshake(method, version, headers)
        assert info.value.status == status
    resp = ws.accept_response(key, "b", server_header=b"s")
    assert resp.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and b"Sec-WebSocket-Protocol: b\r\n" in resp


def test_codec_round_trips_and_split_feeds():
    c = ws.FrameCodec(1 << 20)
    data = (client_frame(0x1, "héllo") + client_frame(0x2, b"\x00" * 70000) + client_frame(0x2, b"x" * 300)
            + client_frame(0x1, "frag-", fin=False) + client_frame(0x9, b"p") + client_frame(0x0, "é", fin=True))
    events = []
    for i in range(0, len(data), 997):
        events += c.receive_data(data[i:i + 997])
    assert events == [("text", "héllo"), ("bytes", b"\x00" * 70000), ("bytes", b"x" * 300), ("ping", b"p"),
                      ("text", "frag-é")]
    frames, _ = parse_server_frames(c.data_to_send())
    assert frames == [(True, 0xA, b"p")]
    # a multi-byte character split across fragments is fine
    c2 = ws.FrameCodec()
    assert c2.receive_data(client_frame(0x1, b"\xc3", fin=False) + client_frame(0x0, b"\xa9")) == [("text", "é")]
    # server frames of every length class
    for n in (0, 125, 126, 65535, 65536):
        frame = c.send_binary(b"y" * n)
        assert parse_server_frames(frame)[0] == [(True, 0x2, b"y" * n)]


def test_codec_close_handshake_both_ways():
    c = ws.FrameCodec()
    ev = c.receive_data(client_frame(0x8, close_payload(1001, "bye".encode())))
    assert ev == [("close", (1001, "bye"))]
    assert parse_server_frames(c.data_to_send())[0] == [(True, 0x8, close_payload(1001))]
    assert c.receive_data(client_frame(0x1, "late")) == []  # closed
    c = ws.FrameCodec()
    assert parse_server_frames(c.send_close(4000))[0] == [(True, 0x8, close_payload(4000))]
    assert c.receive_data(client_frame(0x1, "ignored after our close")) == []
    assert c.receive_data(client_frame(0x8, b"")) == [("close", (1005, ""))]
    assert c.data_to_send() == b""  # no second close frame


@pytest.mark.parametrize("name, data, code", BAD_FRAMES, ids=[row[0] for row in BAD_FRAMES])
def test_codec_bad_frame_table(name, data, code):
    for step in (None, 3):
        c = ws.FrameCodec(BAD_FRAMES_MAX_SIZE)
        with pytest.raises(ws.ProtocolError) as info:
            if step is None:
                c.receive_data(data)
            else:
                for i in range(0, len(data), step):
                    c.receive_data(data[i:i + step])
                raise AssertionError("no error")
        assert info.value.code == code
        frames, _ = parse_server_frames(c.data_to_send())
        assert frames[-1][1] == 0x8 and int.from_bytes(frames[-1][2][:2], "big") == code


def test_oversized_frame_is_refused_from_its_header():
    c = ws.FrameCodec(1000)
    with pytest.raises(ws.ProtocolError) as info:
        c.receive_data(client_frame(0x2, b"x" * 2000)[:14])  # header only: no payload buffered first
    assert info.value.code == 1009


def test_messages_before_a_violation_are_kept():
    c = ws.FrameCodec()
    with pytest.raises(ws.ProtocolError) as info:
        c.receive_data(client_frame(0x1, "good") + client_frame(0x1, "bad", masked=False))
    assert info.value.events == [("text", "good")]


# -------------------------------------------------------------------- proxy


def test_forwarded_rules():
    trusted = TrustedHosts(["127.0.0.1", "10.0.0.0/8", "::1"])
    hdrs = [(b"x-forwarded-for", b"1.2.3.4, 10.0.0.2"), (b"x-forwarded-proto", b"https, http"),
            (b"x-forwarded-host", b"example.org:8080")]
    client, server, scheme = proxy.forwarded(trusted, hdrs, ["127.0.0.1", 5000], ["127.0.0.1", 80])
    assert client == ["1.2.3.4", 0] and scheme == "https" and server == ["example.org", 8080]
    assert proxy.forwarded(trusted, hdrs, ["192.168.1.1", 5000], ["127.0.0.1", 80]) is None
    assert proxy.forwarded(trusted, [], ["127.0.0.1", 5000], None) is None
    # Unix-socket peers are trusted; X-Forwarded-Port alone gives the server port
    c, s, sch = proxy.forwarded(trusted, [(b"x-forwarded-port", b"443"), (b"x-forwarded-proto", b"https")], None, None)
    assert s == [None, 443] and sch == "https" and c is None
    # a forged left-most hop does not win; all-trusted chains give the left-most
    c, _, _ = proxy.forwarded(trusted, [(b"x-forwarded-for", b"6.6.6.6, 5.5.5.5")], ["::1", 1], None)
    assert c == ["5.5.5.5", 0]
    c, _, _ = proxy.forwarded(trusted, [(b"x-forwarded-for", b"10.1.1.1, 10.2.2.2")], ["::1", 1], None)
    assert c == ["10.1.1.1", 0]
    c, _, sch = proxy.forwarded(trusted, [(b"x-forwarded-for", b"[2001:db8::1]:443"), (b"x-forwarded-proto", b"ftp")],
                                ["::1", 1], None, websocket=True)
    assert c == ["2001:db8::1", 0] and sch is None
    _, _, sch = proxy.forwarded(trusted, [(b"x-forwarded-proto", b"https")], ["::1", 1], None, websocket=True)
    assert sch == "wss"


def test_trusted_hosts():
    t = TrustedHosts("127.0.0.1, 192.168.0.0/16")
    assert "127.0.0.1" in t and "192.168.4.5" in t and "10.0.0.1" not in t and "garbage" not in t
    assert "::ffff:127.0.0.1" in t
    assert "8.8.8.8" in TrustedHosts("*")
    with pytest.raises(ValueError):
        TrustedHosts(["not-an-ip"])


def test_config_validation():
    cfg = ProtocolConfig(root_path="/api/", bind="127.0.0.1:1")
    assert cfg.root_path == "/api" and cfg.bind == ["127.0.0.1:1"]
    for bad in ({"keepalive": -1}, {"ws_max_size": 0}, {"limit_request_body": -1}):
        with pytest.raises(ValueError):
            ProtocolConfig(**bad)
