"""The default ``http.request`` consumer: run a WSGI application.

Django's ``get_wsgi_application()``, Flask, or any PEP 3333 callable serves
HTTP through the workers unchanged:

* the request body arrives inline, and beyond ``body_inline`` bytes from
  the request's ``body_channel``, read as the application reads
  ``wsgi.input`` (never buffered whole);
* the response goes back on the reply channel.  A list or tuple body, or
  one whose ``Content-Length`` fits, leaves as a single message (the
  protocol server adds Content-Length).  An iterator's blocks are each sent
  before the next one is requested, as PEP 3333 requires, so streaming
  responses stream (chunked on the wire).
"""

import io
import logging
import sys
import time

logger = logging.getLogger("shmchannels.wsgi")

CHUNK = 512 * 1024  # largest content per reply message
_STATUS_500 = {
    "status": 500,
    "headers": [[b"content-type", b"text/plain; charset=utf-8"]],
    "content": b"Internal Server Error",
    "more_content": False,
}


class RequestAborted(IOError):
    """The client went away while the application was reading the body."""


class RequestTimeout(IOError):
    """No body chunk arrived within the body timeout."""


class BodyReader(io.RawIOBase):
    """``wsgi.input``: the inline body, then chunks from the body channel."""

    def __init__(self, body, body_channel, layer, timeout=60.0):
        super().__init__()
        self._buf = bytearray(body or b"")
        self._channel = body_channel
        self._layer = layer
        self._timeout = timeout
        self._done = body_channel is None

    def readable(self):
        return True

    def _fill(self):
        deadline = time.monotonic() + self._timeout
        while not self._done:
            channel, msg = self._layer.receive([self._channel], block=True)
            if channel is None:
                if time.monotonic() > deadline:
                    raise RequestTimeout(f"no request body received for {self._timeout:.0f} s")
                continue
            if msg.get("closed"):
                self._done = True
                raise RequestAborted("the client disconnected while sending the body")
            self._buf += msg.get("content", b"")
            self._done = not msg.get("more_content", False)
            return

    def read(self, size=-1):
        if size is None or size < 0:
            while not self._done:
                self._fill()
            data, self._buf = bytes(self._buf), bytearray()
            return data
        while len(self._buf) < size and not self._done:
            self._fill()
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def readinto(self, b):
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def readline(self, size=-1):
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0 or self._done or (size is not None and 0 <= size <= len(self._buf)):
                break
            self._fill()
        end = nl + 1 if nl >= 0 else len(self._buf)
        if size is not None and size >= 0:
            end = min(end, size)
        data = bytes(self._buf[:end])
        del self._buf[:end]
        return data

    def __iter__(self):
        while True:
            line = self.readline()
            if not line:
                return
            yield line


#: raw header name -> its environ key (None: the header is dropped); names
#: repeat from request to request, so each is worked out once
_HEADER_KEYS = {}
_HEADER_KEYS_MAX = 1024
_PROTOCOLS = {"1.1": "HTTP/1.1", "1.0": "HTTP/1.0"}


def _header_key(raw):
    name = raw.decode("latin-1").lower()
    if name == "content-type":
        key = "CONTENT_TYPE"
    elif name == "content-length":
        key = "CONTENT_LENGTH"
    elif "_" in name:
        key = None  # x_forwarded_for would alias x-forwarded-for (CVE-2015-0219)
    else:
        key = "HTTP_" + name.upper().replace("-", "_")
    if len(_HEADER_KEYS) < _HEADER_KEYS_MAX:
        _HEADER_KEYS[raw] = key
    return key


def _native(text):
    """PEP 3333: a native string holding the raw bytes (latin-1 round trip)."""
    return text if text.isascii() else text.encode("utf-8").decode("latin-1")


def build_environ(content, layer, multithread):
    path = content["path"]
    root_path = content.get("root_path") or ""
    path_info = path[len(root_path):] if root_path and path.startswith(root_path) else path
    client = content.get("client")
    server = content.get("server")
    version = content.get("http_version", "1.1")
    body_channel = content.get("body_channel")
    body = content.get("body", b"")
    environ = {
        "REQUEST_METHOD": content["method"],
        "SCRIPT_NAME": _native(root_path),
        "PATH_INFO": _native(path_info),
        "QUERY_STRING": (content.get("query_string") or b"").decode("latin-1"),
        "SERVER_PROTOCOL": _PROTOCOLS.get(version) or "HTTP/" + version,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": content.get("scheme") or "http",
        # the whole body is here: a plain in-memory stream; else read from the body channel
        "wsgi.input": io.BytesIO(body or b"") if body_channel is None else BodyReader(body, body_channel, layer),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if client:
        environ["REMOTE_ADDR"] = str(client[0])
        environ["REMOTE_PORT"] = str(client[1])
    keys = _HEADER_KEYS
    host = None
    for name, value in content.get("headers", ()):
        key = keys.get(name, False)
        if key is False:
            key = _header_key(name)
        if key is None:
            continue
        value = value.decode("latin-1")
        if key in environ and key[0] == "H":  # a repeated field: joined (CONTENT_* are replaced)
            environ[key] += ("; " if key == "HTTP_COOKIE" else ",") + value
        else:
            environ[key] = value
        if key == "HTTP_HOST":
            host = value
    if server:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = str(server[0]), str(server[1])
    elif host:
        name, _, port = host.rpartition(":") if host.rpartition(":")[2].isdigit() else (host, "", "")
        environ["SERVER_NAME"] = name or host
        environ["SERVER_PORT"] = port or ("443" if environ["wsgi.url_scheme"] == "https" else "80")
    else:
        environ["SERVER_NAME"], environ["SERVER_PORT"] = "localhost", "80"
    return environ


def send_reply(layer, channel, message):
    """Send on a reply channel, waiting out a full ring (the protocol server
    is behind) instead of dropping part of a response."""
    return layer.send_waiting(channel, message, timeout=60.0)


class _Waiting:
    """Replies sent with ``send_reply`` (a protocol server without a window)."""

    __slots__ = ("layer",)
    gone = False

    def __init__(self, layer):
        self.layer = layer

    def send(self, channel, message):
        return send_reply(self.layer, channel, message)


class WsgiConsumer:
    """``http.request`` consumer around a WSGI application."""

    def __init__(self, application, multithread=False):
        self.application = application
        self.multithread = multithread

    def __call__(self, message):
        content = message.content
        reply = content["reply_channel"]
        layer = message.channel_layer
        environ = build_environ(content, layer, self.multithread)
        out = getattr(message, "reply_flow", None)
        if out is None:
            out = _Waiting(layer)
        state = {"status": None, "headers": None, "sent": False}
        written = []

        def start_response(status, headers, exc_info=None):
            if exc_info is not None:
                try:
                    if state["sent"]:
                        raise exc_info[1].with_traceback(exc_info[2])
                finally:
                    exc_info = None
            elif state["status"] is not None:
                raise AssertionError("start_response() called twice without exc_info")
            state["status"] = int(status.split(" ", 1)[0])
            state["headers"] = [[k.encode("latin-1"), v.encode("latin-1")] for k, v in headers]
            return written.append  # the legacy write() callable

        try:
            result = self.application(environ, start_response)
        except Exception:
            logger.exception("WSGI application raised for %s %s", content["method"], content["path"])
            out.send(reply, _STATUS_500)
            return
        try:
            self._respond(out, reply, result, state, written)
        except Exception:
            logger.exception("WSGI response failed for %s %s", content["method"], content["path"])
            if not state["sent"]:
                out.send(reply, _STATUS_500)
            else:
                out.send(reply, {"content": b"", "more_content": False})
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _first(self, state, content, more):
        state["sent"] = True
        return {"status": state["status"], "headers": state["headers"], "content": content, "more_content": more}

    def _respond(self, out, reply, result, state, written):
        length = None
        if isinstance(result, (list, tuple)):
            if len(result) == 1 and not written and type(result[0]) is bytes and len(result[0]) <= CHUNK:
                # the common case, one block: one message
                self._check_started(state)
                out.send(reply, self._first(state, result[0], False))
                return
            body = b"".join(written) + b"".join(result)
            self._check_started(state)
            for i in range(0, max(len(body), 1), CHUNK):
                part = body[i : i + CHUNK]
                more = i + CHUNK < len(body)
                out.send(reply, self._first(state, part, more) if i == 0 else {"content": part, "more_content": more})
                if out.gone:
                    return
            return
        iterator = iter(result)
        pending = bytearray(b"".join(written))
        for name, value in state["headers"] or ():
            if name.lower() == b"content-length" and value.isdigit():
                length = int(value)
        for chunk in iterator:
            if not chunk:
                continue
            self._check_started(state)
            if out.gone:
                return  # the client left: stop producing (the iterator is closed)
            if length is not None and length <= CHUNK:
                pending += chunk  # known small size: gather it into one message
                continue
            pending += chunk
            while len(pending) >= CHUNK:
                part, pending = bytes(pending[:CHUNK]), pending[CHUNK:]
                self._send_part(out, reply, state, part, True)
            if pending:
                self._send_part(out, reply, state, bytes(pending), True)
                pending = bytearray()
        self._check_started(state)
        self._send_part(out, reply, state, bytes(pending), False)

    def _send_part(self, out, reply, state, part, more):
        out.send(reply, {"content": part, "more_content": more} if state["sent"] else self._first(state, part, more))

    @staticmethod
    def _check_started(state):
        if state["status"] is None:
            raise RuntimeError("the WSGI application returned a body without calling start_response()")
