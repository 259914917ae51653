"""Access log: one line per request, in gunicorn's format.

    %(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"
    127.0.0.1 - - [24/Nov/2025:23:31:07 +0000] "GET /a?b=1 HTTP/1.1" 200 12 "-" "curl/7.88.1"

A request only appends a record (``log``: about 0.2 us); the lines are
formatted and written in batches (``flush``), at most ``FLUSH_DELAY`` after
the first record of a batch or once ``BATCH`` wait, with one write per
handler stream: through ``logging`` a line cost 11 us, most of a hello-world
request (docs/decisions.md).  Records still waiting are written by
``flush()`` when the server stops, and at interpreter exit.

Lines go to ``logger`` at INFO (``shmchannels.access`` unless told; the serve
master attaches handlers, or gunicorn's ``gunicorn.access`` with
``--access-logfile``), or to ``sink`` when it is a callable.  ``fmt`` is a
gunicorn ``access_log_format``; its atoms are gunicorn's, request headers
as ``{name}i``; ``T``, ``D``, ``M`` and ``L`` (request time) are ``-``.
Nothing is recorded unless someone listens.
"""

import asyncio
import atexit
import logging
import os
import time

logger = logging.getLogger("shmchannels.access")

DEFAULT_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
#: seconds a record may wait for its batch to be written
FLUSH_DELAY = 0.05
#: records that make a batch be written at once
BATCH = 256

_t = [0, ""]


def _now(now):
    if now != _t[0]:
        _t[0] = now
        _t[1] = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))
    return _t[1]


class _Atoms(dict):
    """gunicorn's SafeAtoms: a missing atom is ``-``; header atoms ignore case."""

    def __getitem__(self, key):
        if key.startswith("{"):
            key = key.lower()
        return super().__getitem__(key) if key in self else "-"


class AccessLog:
    def __init__(self, sink=None, logger=logger, fmt=DEFAULT_FORMAT, always=False):
        self.sink = sink
        self.logger = logger
        self.fmt = fmt
        self.always = always  # a log file was asked for: write whatever the level
        self.pending = []  # (second, client, request, status, length)
        self._timer = None
        self._exit_hook = False

    @property
    def enabled(self):
        return self.sink is not None or self.always or self.logger.isEnabledFor(logging.INFO)

    def log(self, client, request, status, length):
        pending = self.pending
        pending.append((int(time.time()), client, request, status, length))
        if len(pending) == 1:
            self._schedule(FLUSH_DELAY)
        elif len(pending) >= BATCH and self._timer is not None:
            self._timer.cancel()
            self._schedule(0)

    def _schedule(self, delay):
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test, a thread): write now
            self._timer = None
            self.flush()
            return
        self._timer = loop.call_later(delay, self.flush)
        if not self._exit_hook:
            self._exit_hook = True
            atexit.register(self.flush)

    # ------------------------------------------------------------- writing

    def line(self, client, request, status, length, second=None):
        """Format one line (``request`` is an http11.Request, or None)."""
        second = int(time.time()) if second is None else second
        if self.fmt != DEFAULT_FORMAT:
            return self.fmt % self.atoms(client, request, status, length, second)
        if request is not None:
            target = request.target.decode("latin-1")
            req = f"{request.method} {target} HTTP/{request.http_version}"
            referer = agent = "-"
            for name, value in request.headers:
                if name == b"referer":
                    referer = value.decode("latin-1")
                elif name == b"user-agent":
                    agent = value.decode("latin-1")
        else:
            req, referer, agent = "-", "-", "-"
        host = client[0] if client else "-"
        size = str(length) if length else "-"
        return f'{host} - - {_now(second)} "{req}" {status} {size} "{referer}" "{agent}"'

    @staticmethod
    def atoms(client, request, status, length, second):
        atoms = _Atoms(h=client[0] if client else "-", l="-", u="-", t=_now(second), s=status,
                       b=str(length) if length else "-", B=length, p=f"<{os.getpid()}>", f="-", a="-")
        if request is not None:
            version = f"HTTP/{request.http_version}"
            atoms.update(r=f"{request.method} {request.target.decode('latin-1')} {version}", m=request.method,
                         U=request.path, q=request.query_string.decode("latin-1"), H=version)
            for name, value in request.headers:
                atoms["{%s}i" % name.decode("latin-1")] = value.decode("latin-1")
            atoms["f"] = atoms["{referer}i"]
            atoms["a"] = atoms["{user-agent}i"]
        else:
            atoms["r"] = "-"
        return atoms

    def flush(self):
        """Write every waiting record."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self.pending = self.pending, []
        if not batch:
            return
        try:
            lines = [self.line(client, request, status, length, second)
                     for second, client, request, status, length in batch]
        except (ValueError, TypeError, KeyError) as exc:  # "%(h)s %", "%(h)d": found only when a line is made
            logging.getLogger("shmchannels.server").error(
                "access_log_format %r cannot format a line (%s: %s); using the default format", self.fmt,
                type(exc).__name__, exc)
            self.fmt = DEFAULT_FORMAT
            lines = [self.line(client, request, status, length, second)
                     for second, client, request, status, length in batch]
        if self.sink is not None:
            for text in lines:
                self.sink(text)
            return
        try:
            _write(self.logger, lines)
        except Exception:  # a full disk, a closed stream: like logging, never fail the server
            logging.getLogger("shmchannels.server").exception("writing %d access log lines failed", len(lines))


def _handlers(log):
    while log is not None:
        yield from log.handlers
        if not log.propagate:
            return
        log = log.parent


def _write(log, lines):
    """``lines`` to every handler of ``log`` at INFO: one formatted record
    gives each handler its prefix and suffix (the same for a whole batch: the
    line carries its own time), and a stream handler gets the batch in one
    write; any other handler gets a record per line."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, "\0", None, None)
    for handler in _handlers(log):
        if record.levelno < handler.level:
            continue
        if type(handler) in (logging.StreamHandler, logging.FileHandler) and handler.stream is not None:
            before, _, after = handler.format(record).partition("\0")
            text = "".join(f"{before}{line}{after}{handler.terminator}" for line in lines)
            handler.acquire()
            try:
                handler.stream.write(text)
                handler.flush()
            finally:
                handler.release()
        else:
            for line in lines:
                handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, line, None, None))
