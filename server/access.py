"""Access log: one line per request, in gunicorn's default format.

    %(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"
    127.0.0.1 - - [24/Nov/2025:23:31:07 +0000] "GET /a?b=1 HTTP/1.1" 200 12 "-" "curl/7.88.1"

Lines go to the logger ``shmchannels.access`` at INFO (the serve master
attaches handlers), or to ``ProtocolConfig.access_log`` when that is a
callable.  Nothing is formatted unless someone listens.
"""

import logging
import time

logger = logging.getLogger("shmchannels.access")

_t = [0, ""]


def _now():
    now = int(time.time())
    if now != _t[0]:
        _t[0] = now
        _t[1] = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))
    return _t[1]


class AccessLog:
    def __init__(self, sink=None):
        self.sink = sink

    @property
    def enabled(self):
        return self.sink is not None or logger.isEnabledFor(logging.INFO)

    def line(self, client, request, status, length):
        """Format one line (``request`` is an http11.Request, or None)."""
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
        return f'{host} - - {_now()} "{req}" {status} {size} "{referer}" "{agent}"'

    def log(self, client, request, status, length):
        if self.sink is not None:
            self.sink(self.line(client, request, status, length))
        elif logger.isEnabledFor(logging.INFO):
            logger.info(self.line(client, request, status, length))
