"""Sans-I/O HTTP/1.1, server side, on httptools (llhttp).

``RequestParser.feed(data)`` turns bytes into a list of ``(kind, value)``
events, ``kind`` an ``EventKind``:

* ``EV_REQUEST``, a ``Request``: a request head, validated and limit-checked;
* ``EV_BODY``, bytes: body bytes of the latest request (chunked framing
  already removed);
* ``EV_END``, None: the latest request is complete;
* ``EV_UPGRADE``, bytes: the latest request asked for an upgrade; the bytes
  that followed its head (parsing stops there);
* ``EV_ERROR``, a ``ParseError(status, reason)``: the stream is unusable
  from here: answer ``status`` and close.  400 malformed, 413 body over
  limit, 414 request target over limit, 417 unknown Expect, 431 header
  fields over limits.

The ``EV_*`` and ``MODE_*`` names are module-level aliases of the
``EventKind`` and ``BodyMode`` members: one global lookup on the
per-request path, where ``EventKind.REQUEST`` is an Enum class attribute
lookup (~100 ns in CPython 3.11).  The events themselves stay plain 2-tuples,
unpacked by name where they are read (``for kind, value in events``): a
NamedTuple instance costs ~250 ns more to create and free than a tuple (no
free list, generic heap-type dealloc), 2-3% of a whole request through the
server.  Rare records (``ParseError``) are NamedTuples.

Pipelined requests simply produce several REQUEST/BODY/END runs; the I/O
side answers them one at a time.

``response_head()`` and ``chunk()`` build response bytes: status line,
headers, Content-Length vs chunked vs close-delimited framing, HEAD, and the
Date and Server headers.

Header names are lower-cased, order and duplicates kept.  Names containing
``_`` are dropped (as Daphne, nginx by default and gunicorn >= 22 do):
Channels maps headers to WSGI-style ``HTTP_*`` keys where ``X-Auth_User``
and ``X-Auth-User`` collide, so a client could spoof a header a proxy set
(CVE-2015-0219).
"""

import email.utils
import enum
import http
import re
import time
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

import httptools


class EventKind(enum.IntEnum):
    REQUEST = 0
    BODY = 1
    END = 2
    UPGRADE = 3
    ERROR = 4


EV_REQUEST, EV_BODY, EV_END, EV_UPGRADE, EV_ERROR = EventKind


class BodyMode(enum.IntEnum):
    """How a response body is framed on the wire."""

    LENGTH = 0  # Content-Length: write as is
    CHUNKED = 1  # chunk() each piece, chunk(b"") ends it
    CLOSE = 2  # write as is; closing the connection ends it (HTTP/1.0 streaming)
    NONE = 3  # no body: HEAD, 1xx, 204, 304


MODE_LENGTH, MODE_CHUNKED, MODE_CLOSE, MODE_NONE = BodyMode


class ParseError(NamedTuple):
    """The value of an EV_ERROR event: what to answer before closing."""

    status: int
    reason: str



_END = (EV_END, None)  # one instance serves every request

_SPECIAL = frozenset((b"content-length", b"transfer-encoding", b"expect", b"connection", b"host"))
_OWS = (32, 9)  # SP, HTAB


class Request:
    """One parsed request head."""

    __slots__ = (
        "method", "http_version", "target", "path", "raw_path", "query_string", "headers", "keep_alive",
        "expect_continue", "content_length", "chunked", "upgrade", "connection_tokens",
    )

    def __repr__(self):
        return f"<Request {self.method} {self.target!r} HTTP/{self.http_version}>"


class _Reject(Exception):
    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class RequestParser:
    """The request side of one HTTP/1.1 connection."""

    def __init__(
        self,
        *,
        limit_request_line=4094,
        limit_request_fields=100,
        limit_request_field_size=8190,
        limit_request_body=0,
    ):
        self.limit_line = limit_request_line
        self.limit_fields = limit_request_fields
        self.limit_field_size = limit_request_field_size
        self.limit_body = limit_request_body
        # a head can never legitimately be longer than this
        self.limit_head = limit_request_line + 16 + limit_request_fields * (limit_request_field_size + 4) + 2
        self._parser = httptools.HttpRequestParser(self)
        self._parser.set_dangerous_leniencies(lenient_version=True)  # checked in _other_version
        self.events = []
        self.dead = False
        self._in_head = False
        self._request = None
        self._reset_message()

    @property
    def in_head(self):
        """A request head has begun and is not complete yet."""
        return self._in_head

    def _reset_message(self):
        self._head_bytes = 0
        self._url = b""
        self._headers = []
        self._nfields = 0
        self._special = None
        self._body_bytes = 0

    # --------------------------------------------------------- httptools callbacks

    def on_message_begin(self):
        self._in_head = True
        self._reset_message()

    def on_url(self, url):
        self._url += url
        if len(self._url) > self.limit_line:
            raise _Reject(414, "request target too long")

    def on_header(self, name, value):
        self._nfields += 1
        if self._nfields > self.limit_fields:
            raise _Reject(431, "too many header fields")
        if len(name) + len(value) > self.limit_field_size:
            raise _Reject(431, "header field too large")
        if not self._in_head:
            # a trailer field (after a chunked body): counted against the
            # limits, never merged into the header list (RFC 9112 7.1.2);
            # llhttp has already refused framing fields there
            return
        if value and value[-1] in _OWS:  # llhttp keeps trailing OWS (RFC 9112 5.1 excludes it)
            value = value.rstrip(b" \t")
        name = name.lower()
        if b"_" in name:
            return
        if name in _SPECIAL:
            if self._special is None:
                self._special = {}
            self._special.setdefault(name, []).append(value)
        self._headers.append((name, value))

    def on_headers_complete(self):
        self._in_head = False
        p = self._parser
        req = Request()
        req.method = p.get_method().decode("ascii")
        version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            version = self._other_version(version)
        req.http_version = version
        req.keep_alive = p.should_keep_alive()
        req.upgrade = p.should_upgrade()
        req.headers = self._headers
        req.target = url = self._url
        req.expect_continue = False
        req.content_length = None
        req.chunked = False
        req.connection_tokens = ()
        special = self._special
        if special is None:
            if version == "1.1":
                raise _Reject(400, "missing Host header (RFC 9112 3.2)")
        else:
            host = special.get(b"host")
            if host is None:
                if version == "1.1":
                    raise _Reject(400, "missing Host header (RFC 9112 3.2)")
            elif len(host) > 1:
                raise _Reject(400, "more than one Host header (RFC 9112 3.2)")
            cl = special.get(b"content-length")
            if cl is not None:
                req.content_length = int(cl[0])  # llhttp has validated it
                if self.limit_body and req.content_length > self.limit_body:
                    raise _Reject(413, "request body too large")
            te = special.get(b"transfer-encoding")
            if te is not None:
                if version == "1.0":
                    # RFC 9112 6.1: faulty framing; the connection must close
                    raise _Reject(400, "Transfer-Encoding in an HTTP/1.0 request")
                # h11's rule: chunked alone (an empty element, ",chunked", or
                # another coding is a framing a proxy may read otherwise)
                if [t.strip(b" \t") for t in b",".join(te).lower().split(b",")] != [b"chunked"]:
                    raise _Reject(501, "Transfer-Encoding other than chunked is not supported")
                req.chunked = True
            expect = special.get(b"expect")
            if expect is not None:
                if len(expect) != 1 or expect[0].strip().lower() != b"100-continue":
                    raise _Reject(417, "unsupported Expect")
                # RFC 9110 10.1.1: ignore 100-continue in an HTTP/1.0 request
                req.expect_continue = req.http_version != "1.0"
            conn = special.get(b"connection")
            if conn is not None:
                req.connection_tokens = tuple(t.strip().lower() for t in b",".join(conn).split(b","))
        # request target -> path, query string
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
            if b"#" in query:
                query = query.partition(b"#")[0]
            elif b"#" in path:
                path = path.partition(b"#")[0]
        elif url == b"*":
            path, query = b"*", b""
        else:  # absolute-form (to a proxy)
            try:
                parsed = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Reject(400, "invalid request target") from None
            path = parsed.path or b"/"
            query = parsed.query or b""
        # raw_path: the bytes as received, kept only when they differ from
        # the decoded path's UTF-8 (a consumer rebuilds them otherwise)
        req.raw_path = None
        if b"%" in path:
            req.raw_path = path
            path = unquote_to_bytes(path)
        try:
            req.path = path.decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(400, "request path is not UTF-8") from None
        req.query_string = query
        self._request = req
        self.events.append((EV_REQUEST, req))

    @staticmethod
    def _other_version(version):
        """llhttp runs with lenient_version (it refuses 1.2 otherwise): the
        version is checked here.  1.x with x > 1 is 1.1 (RFC 9110 2.5); 0.9
        is 400 (also what llhttp reports for a request line without a
        version); another major is 505 (RFC 9110 15.6.6)."""
        major, _, minor = version.partition(".")
        if major == "1":
            return "1.1"
        if major == "0":
            raise _Reject(400, f"HTTP/{version} is not supported (invalid HTTP version)")
        raise _Reject(505, f"HTTP version {version} not supported")

    def on_body(self, body):
        if self.limit_body:
            self._body_bytes += len(body)
            if self._body_bytes > self.limit_body:
                raise _Reject(413, "request body too large")
        self.events.append((EV_BODY, body))

    def on_message_complete(self):
        self.events.append(_END)

    # ------------------------------------------------------------------ API

    def feed(self, data):
        """Parse ``data``; return the events it completed."""
        if self.dead:
            return []
        self.events = events = []
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self.dead = True  # the rest of the stream is not HTTP
            events.append((EV_UPGRADE, data[exc.args[0]:]))
            return events
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            self.dead = True
            if isinstance(cause, _Reject):
                events.append((EV_ERROR, ParseError(cause.status, cause.reason)))
            else:  # pragma: no cover - a bug in a callback
                events.append((EV_ERROR, ParseError(400, f"bad request: {cause!r}")))
            return events
        except httptools.HttpParserError as exc:
            self.dead = True
            reason = str(exc) or "malformed request"
            events.append((EV_ERROR, ParseError(400, reason)))
            return events
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.limit_head:
                self.dead = True
                events.append((EV_ERROR, ParseError(431, "request head too large")))
        return events


# ------------------------------------------------------------------ responses

_REASONS = {s.value: s.phrase.encode("ascii") for s in http.HTTPStatus}
_STATUS_LINES = {}


def status_line(status):
    line = _STATUS_LINES.get(status)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))
        if len(_STATUS_LINES) < 1000:
            _STATUS_LINES[status] = line
    return line


_date = [0, b""]


def date_value():
    now = int(time.time())
    if now != _date[0]:
        _date[0] = now
        _date[1] = email.utils.formatdate(now, usegmt=True).encode("ascii")
    return _date[1]


class ResponseError(ValueError):
    """The application's response cannot be sent (bad status or headers)."""


def response_head(status, headers, content, more_content, *, request, keep_alive, server_header, date=True):
    """Serialise a response head.

    Returns ``(head, mode, keep_alive, length)`` (a tuple, not a record: it
    is unpacked at once, once per response); ``mode``, a ``BodyMode``, says
    how the body is framed.  ``length`` is the
    application's own ``Content-Length`` (an int), or None when it gave none:
    the caller holds the body to it.

    Raises ResponseError for anything that cannot be sent as given: a status
    that is not an int in 100-999, headers that are not a list of
    ``[name, value]`` pairs of bytes or latin-1 str, a CR, LF or NUL in them,
    a name that is not a token (empty, or with ``:``, a space...), a
    ``Content-Length`` that is not a decimal number (or two that differ).
    """
    if type(status) is not int or not 100 <= status <= 999:
        raise ResponseError(f"invalid status {status!r}")
    if type(headers) is not list and type(headers) is not tuple:
        raise ResponseError(f"headers must be a list of [name, value] pairs, not {type(headers).__name__}")
    parts = [status_line(status)]
    has_length = has_date = has_server = False
    length = None
    for pair in headers:
        if (type(pair) is not list and type(pair) is not tuple) or len(pair) != 2:
            raise ResponseError(f"a header must be a [name, value] pair, not {pair!r:.80}")
        name, value = pair
        if type(name) is not bytes or type(value) is not bytes:
            name, value = _to_bytes(name), _to_bytes(value)
        if name not in _GOOD_NAMES:
            _check_name(name)
        lname = name.lower()
        if lname == b"content-length":
            value = value.strip()
            if not value.isdigit() or (length is not None and int(value) != length):
                raise ResponseError(f"invalid content-length {value!r:.80}")
            length = int(value)
            has_length = True
        elif lname == b"transfer-encoding":
            continue  # framing is ours to decide
        elif lname == b"connection":
            if b"close" in value.lower():
                keep_alive = False
            continue
        elif lname == b"date":
            has_date = True
        elif lname == b"server":
            has_server = True
        parts += (name, b": ", value, b"\r\n")
    nlines = len(parts) // 4
    no_body = request.method == "HEAD" or status < 200 or status == 204 or status == 304
    if no_body:
        mode = MODE_NONE
        if not has_length and not more_content and content and status >= 200 and status not in (204, 304):
            parts.append(b"content-length: %d\r\n" % len(content))
            nlines += 1
    elif has_length:
        mode = MODE_LENGTH
    elif not more_content:
        mode = MODE_LENGTH
        parts.append(b"content-length: %d\r\n" % len(content))
        nlines += 1
    elif request.http_version == "1.1":
        mode = MODE_CHUNKED
        parts.append(b"transfer-encoding: chunked\r\n")
        nlines += 1
    else:
        mode = MODE_CLOSE
        keep_alive = False
    if not keep_alive:
        parts.append(b"connection: close\r\n")
        nlines += 1
    elif request.http_version == "1.0":
        parts.append(b"connection: keep-alive\r\n")
        nlines += 1
    if server_header and not has_server:
        parts += (b"server: ", server_header, b"\r\n")
        nlines += 1
    if date and not has_date:
        parts += (b"date: ", date_value(), b"\r\n")
        nlines += 1
    parts.append(b"\r\n")
    head = b"".join(parts)
    # one scan each: a CR or LF inside a name or value would split the response
    if head.count(b"\n") != nlines + 2 or head.count(b"\r") != nlines + 2:
        raise ResponseError("header name or value contains CR or LF")
    if b"\0" in head:  # the status line and our own headers have none
        raise ResponseError("header name or value contains NUL")
    return head, mode, keep_alive, length


#: RFC 9110 5.6.2 token (what a field name must be)
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
#: names already checked (a dict lookup per header instead of a regex match);
#: bounded so an application that makes up names cannot grow it
_GOOD_NAMES = set()


def _check_name(name):
    """A response header name must be a token: no ``:``, space, CR, LF,
    NUL or other delimiter, and not empty (RFC 9110 5.1)."""
    if _TOKEN.fullmatch(name) is None:
        raise ResponseError(f"invalid header name {name!r:.80}")
    if len(_GOOD_NAMES) < 1000:
        _GOOD_NAMES.add(name)


def checked_headers(headers):
    """Extra headers an application adds to a response we frame (a
    WebSocket accept): [(name, value)] as bytes, or ResponseError."""
    checked = []
    for pair in headers:
        if (type(pair) is not list and type(pair) is not tuple) or len(pair) != 2:
            raise ResponseError(f"a header must be a [name, value] pair, not {pair!r:.80}")
        name, value = _to_bytes(pair[0]), _to_bytes(pair[1])
        if not name or any(c in name for c in b"\r\n\0: ") or any(c in value for c in b"\r\n\0"):
            raise ResponseError(f"invalid header {name!r:.80}: {value!r:.80}")
        checked.append((name, value))
    return checked


def _to_bytes(value):
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise ResponseError(f"header {value!r:.80} is not latin-1; send bytes") from None
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    raise ResponseError(f"header names and values must be bytes, not {type(value).__name__}")


def chunk(data):
    """One chunk of a chunked body (``chunk(b"")`` ends the body)."""
    if not data:
        return b"0\r\n\r\n"
    return b"%x\r\n%b\r\n" % (len(data), data)


def simple_response(status, body=b"", *, keep_alive=False, server_header=None, extra=()):
    """A complete small response the server makes itself (errors, 100)."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    parts = [status_line(status)]
    for name, value in extra:
        parts += (name, b": ", value, b"\r\n")
    if body or status >= 200:
        parts.append(b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n" % len(body))
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    if server_header:
        parts += (b"server: ", server_header, b"\r\n")
    parts += (b"date: ", date_value(), b"\r\n\r\n", body)
    return b"".join(parts)
