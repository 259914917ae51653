"""X-Forwarded-* from trusted proxies (uvicorn's and gunicorn's rules).

Only when ``proxy_headers`` is on and the TCP peer is in
``forwarded_allow_ips`` (IPs, CIDRs, or "*"; a Unix-socket peer counts as
trusted):

* ``X-Forwarded-For``: the client is the right-most address that is not a
  trusted proxy (each proxy appends the address it saw); if every hop is
  trusted, the left-most.  Its port is unknown: 0.
* ``X-Forwarded-Proto``: ``http``/``https`` (``ws``/``wss`` accepted too)
  sets ``scheme``; a comma list counts by its left-most entry, the one the
  edge proxy saw.
* ``X-Forwarded-Host`` / ``X-Forwarded-Port``: the address the client
  connected to, so they set ``server`` (host without port; the port from
  X-Forwarded-Port, else from X-Forwarded-Host, else 443/80 by scheme).
  The ``host`` header itself is left alone.

Any other peer's X-Forwarded-* headers are passed through untouched and
change nothing.
"""

from typing import NamedTuple, Optional


class Forwarded(NamedTuple):
    """What a trusted proxy says about a request, as ASGI 1 fields."""

    client: Optional[list]  # [host, port]
    server: Optional[list]  # [host, port]
    scheme: Optional[str]  # None: the proxy did not say


_NAMES = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port")
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


def forwarded(trusted, headers, client, server, websocket=False):
    """A ``Forwarded`` for a request, or None if nothing applies."""
    if (client[0] if client else None) not in trusted:
        return None
    found = None
    for name, value in headers:
        if name in _NAMES:
            if found is None:
                found = {}
            if name in found:
                found[name] += b"," + value
            else:
                found[name] = value
    if found is None:
        return None
    scheme = None
    proto = found.get(b"x-forwarded-proto")
    if proto is not None:
        token = proto.decode("latin-1").split(",")[0].strip().lower()
        scheme = _SCHEMES.get(token)
        if scheme is not None and websocket:
            scheme = "wss" if scheme == "https" else "ws"
    xff = found.get(b"x-forwarded-for")
    if xff is not None:
        hops = [h.strip() for h in xff.decode("latin-1").split(",") if h.strip()]
        if hops:
            host = hops[0]
            for hop in reversed(hops):
                if hop not in trusted:
                    host = hop
                    break
            client = [_strip_port(host), 0]
    xfh = found.get(b"x-forwarded-host")
    xfp = found.get(b"x-forwarded-port")
    if xfh is not None or xfp is not None:
        host = server[0] if server else None
        port = None
        if xfh is not None:
            raw = xfh.decode("latin-1").split(",")[0].strip()
            host, port = _split_host(raw)
        if xfp is not None:
            try:
                port = int(xfp.decode("latin-1").split(",")[0].strip())
            except ValueError:
                pass
        if port is None:
            secure = (scheme or "http") in ("https", "wss")
            port = 443 if secure else 80
        server = [host, port]
    return Forwarded(client, server, scheme)


def _split_host(raw):
    if raw.startswith("["):  # [v6]:port
        end = raw.find("]")
        host = raw[1:end] if end > 0 else raw
        rest = raw[end + 1:] if end > 0 else ""
        if rest.startswith(":") and rest[1:].isdigit():
            return host, int(rest[1:])
        return host, None
    if raw.count(":") == 1:
        host, _, port = raw.partition(":")
        if port.isdigit():
            return host, int(port)
    return raw, None


def _strip_port(host):
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:  # ipv4:port
        return host.partition(":")[0]
    return host
