"""A data-driven corpus for the sans-I/O HTTP/1.1 request parser
(shmchannels.server.http11), in the manner of gunicorn's tests/requests.

Each case is a pair of files in http_requests/valid/ or http_requests/invalid/:

* ``NAME.http``: the bytes on the wire, written as ASCII text.  Line breaks
  in the file are only layout and are dropped; ``\\r``, ``\\n``, ``\\t``,
  ``\\0``, ``\\\\`` and ``\\xHH`` stand for those bytes.  So a file shows every
  CR and LF a request really has (and an LF-only request is visible as such).
* ``NAME.py``: what the parser must make of it.
    valid:   ``requests = [dict(method, path, query_string, version, headers,
             body, keep_alive, [target, content_length, chunked,
             expect_continue, upgrade])]`` in order (pipelining), and
             ``upgrade_rest = b"..."`` for an upgrade.
    invalid: ``error = (status, reason substring)``.
    either:  ``limits = {...}``: ProtocolConfig fields (the parser is built
             from a ProtocolConfig as the protocol server builds it);
             ``xfail = "why"``: the parser does not do what RFC 9112 asks yet.

Every case is fed three ways: in one piece, byte by byte, and in pieces of 7
bytes; all must give the same events (body bytes joined) and match the file.
"""

import pathlib
import re
import runpy

import pytest

from shmchannels.server import http11
from shmchannels.server.config import ProtocolConfig
from shmchannels.server.http11 import EV_BODY, EV_END, EV_ERROR, EV_REQUEST, EV_UPGRADE

HERE = pathlib.Path(__file__).parent / "http_requests"
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[rnt0\\])")
_SIMPLE = {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}
REQUEST_FIELDS = ("method", "path", "query_string", "version", "headers", "body", "keep_alive")
OPTIONAL_FIELDS = ("target", "content_length", "chunked", "expect_continue", "upgrade")


def load_http(path):
    raw = path.read_bytes()
    raw.decode("ascii")  # the files show every byte as text
    raw = raw.replace(b"\n", b"")

    def unescape(m):
        code = m.group(1)
        return bytes([int(code[1:], 16)]) if code[:1] == b"x" else _SIMPLE[code]

    return _ESCAPE.sub(unescape, raw)


def make_parser(limits):
    config = ProtocolConfig(**(limits or {}))
    return http11.RequestParser(
        limit_request_line=config.limit_request_line,
        limit_request_fields=config.limit_request_fields,
        limit_request_field_size=config.limit_request_field_size,
        limit_request_body=config.limit_request_body,
    )


def summarise(events):
    """Events as comparable data; consecutive body pieces joined."""
    out = []
    for kind, value in events:
        if kind == EV_REQUEST:
            out.append(["request", {
                "method": value.method, "path": value.path, "query_string": value.query_string,
                "version": value.http_version, "headers": list(value.headers), "keep_alive": value.keep_alive,
                "target": value.target, "content_length": value.content_length, "chunked": value.chunked,
                "expect_continue": value.expect_continue, "upgrade": value.upgrade,
            }])
        elif kind == EV_BODY:
            if out and out[-1][0] == "body":
                out[-1][1] += value
            else:
                out.append(["body", bytes(value)])
        elif kind == EV_END:
            out.append(["end", None])
        elif kind == EV_UPGRADE:
            out.append(["upgrade", bytes(value)])
        elif kind == EV_ERROR:
            out.append(["error", value])
        else:  # pragma: no cover
            raise AssertionError(f"unknown event {kind}")
    return out


def parse(data, limits, step):
    parser = make_parser(limits)
    events = []
    if step is None:
        events += parser.feed(data)
    else:
        for i in range(0, len(data), step):
            events += parser.feed(data[i:i + step])
            if events and events[-1][0] == EV_UPGRADE:
                # the I/O side hands whatever follows to the upgraded protocol
                events[-1] = (EV_UPGRADE, events[-1][1] + data[i + step:])
                break
    return parser, summarise(events)


def parse_all_ways(data, limits, bodies=True):
    """(parser, events) fed in one piece; asserts the split feeds agree.

    ``bodies=False``: body bytes handed out before an error may differ (a
    body limit trips at a different piece), everything else may not."""
    parser, whole = parse(data, limits, None)
    for step in (1, 7):
        _, split = parse(data, limits, step)
        if not bodies:
            split, whole_ = ([e for e in evs if e[0] != "body"] for evs in (split, whole))
        else:
            whole_ = whole
        assert split == whole_, f"fed in pieces of {step} bytes, the parser says otherwise"
    return parser, whole


def expected_events(spec):
    out = []
    for req in spec["requests"]:
        missing = [f for f in REQUEST_FIELDS if f not in req]
        assert not missing, f"expected request lacks {missing}"
        fields = {k: v for k, v in req.items() if k != "body"}
        unknown = set(fields) - set(REQUEST_FIELDS) - set(OPTIONAL_FIELDS)
        assert not unknown, f"unknown expected fields {unknown}"
        out.append(["request", fields])
        if req["body"]:
            out.append(["body", req["body"]])
        out.append(["end", None])
    if "upgrade_rest" in spec:
        out.append(["upgrade", spec["upgrade_rest"]])
    return out


def cases(kind):
    params = []
    for http in sorted((HERE / kind).glob("*.http")):
        spec_path = http.with_suffix(".py")
        spec = runpy.run_path(str(spec_path))
        marks = [pytest.mark.xfail(strict=True, reason=spec["xfail"])] if "xfail" in spec else []
        params.append(pytest.param(http, spec, id=http.stem, marks=marks))
    return params


VALID = cases("valid")
INVALID = cases("invalid")


@pytest.mark.parametrize("http, spec", VALID)
def test_valid_request(http, spec):
    data = load_http(http)
    parser, events = parse_all_ways(data, spec.get("limits"))
    expected = expected_events(spec)
    # compare only the fields each expectation names
    got = []
    for (kind, value), want in zip(events, expected + [None] * len(events)):
        if kind == "request" and want is not None and want[0] == "request":
            value = {k: value[k] for k in want[1]}
        got.append([kind, value])
    assert got == expected
    if "upgrade_rest" in spec:
        assert parser.dead  # the rest of the stream is not HTTP
    else:
        assert not parser.dead


@pytest.mark.parametrize("http, spec", INVALID)
def test_invalid_request(http, spec):
    data = load_http(http)
    parser, events = parse_all_ways(data, spec.get("limits"), bodies=False)
    status, reason = spec["error"]
    assert events, "no events at all"
    kind, value = events[-1]
    assert kind == "error", f"accepted: {events}"
    assert value[0] == status, value
    assert reason.lower() in value[1].lower(), value
    assert [k for k, _ in events].count("error") == 1
    assert parser.dead
    assert parser.feed(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n") == []  # nothing after an error


def test_the_corpus_is_complete():
    for kind in ("valid", "invalid"):
        https = {p.stem for p in (HERE / kind).glob("*.http")}
        pys = {p.stem for p in (HERE / kind).glob("*.py")}
        assert https == pys, f"{kind}: unpaired files {https ^ pys}"
        assert len(https) >= 25, kind


@pytest.mark.parametrize("text, data", [
    ("GET / HTTP/1.1\\r\\n\n\\r\\n\n", b"GET / HTTP/1.1\r\n\r\n"),
    ("a\\tb\\0c\\\\d\\x00\\xff\\xAb\n", b"a\tb\0c\\d\x00\xff\xab"),
    ("no line end", b"no line end"),
    ("\\\\r stays a backslash and r\n", b"\\r stays a backslash and r"),
])
def test_the_http_file_notation(tmp_path, text, data):
    path = tmp_path / "case.http"
    path.write_text(text, encoding="ascii")
    assert load_http(path) == data
