"""Every knob of a protocol server, with its default, and the one
translation from settings to what the processes build.

``ProtocolConfig`` is a plain dataclass so the serve master (or a test) can
build one without argparse.  ``channel_capacity()`` gives the layer
capacities the protocol server relies on (body chunks, reply rings).

``protocol_config(settings)`` and ``layer_options(settings)`` turn a plain
mapping of setting name -> value into the protocol server's
``ProtocolConfig`` and the channel layer's ``LayerOptions``.  Every entry
point goes through them: ``shmchannels serve`` (its protocol servers and
workers, and the config check before anything forks), ``shmchannels
worker``, ``shmchannels dev`` (their gunicorn-style settings, see
``shmchannels.runtime.config.setting_values``) and ``python -m
shmchannels.server`` (its command line), so for the same settings they run
with the same limits.
"""

import dataclasses
import ipaddress
import re
from typing import Callable, List, Optional, Union

from shmchannels.options import DEFAULT_PREFIX, LayerOptions

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: layer capacities a protocol server expects; pass them (merged with your
#: own) as ``ChannelLayer(channel_capacity=...)``
REPLY_CAPACITY = 10_000
BODY_CAPACITY = 8
#: the ``shmchannels.taken?`` channel of a protocol server: one marker per
#: request or WebSocket message, drained every few tens of milliseconds
TAKEN_CAPACITY = 50_000


@dataclasses.dataclass
class ProtocolConfig:
    # --- where and what
    prefix: str = "shmchannels"  #: bus prefix (the layer's ``prefix``)
    bind: List[str] = dataclasses.field(default_factory=list)  #: "host:port", "[::1]:port" or "unix:/path"; only when no sockets are given
    backlog: int = 2048
    root_path: str = ""  #: ASGI ``root_path`` of every request (a mount point such as "/api")
    server_header: Optional[str] = "shmchannels"  #: value of the Server header; None or "" sends none
    date_header: bool = True

    # --- proxies
    proxy_headers: bool = False  #: honour X-Forwarded-For/-Proto/-Host/-Port from trusted peers
    #: trusted proxies: IPs and CIDRs, or "*" for every peer (Unix-socket peers are always trusted)
    forwarded_allow_ips: Union[str, List[str]] = dataclasses.field(default_factory=lambda: ["127.0.0.1", "::1"])

    # --- HTTP/1.1
    keepalive: float = 5.0  #: idle seconds before a keep-alive connection is closed (0: no keep-alive)
    limit_request_line: int = 4094  #: longest request target, bytes -> 414
    limit_request_fields: int = 100  #: most header fields -> 431
    limit_request_field_size: int = 8190  #: longest "name: value", bytes -> 431
    limit_request_body: int = 1 * GiB  #: largest body, bytes (0: unlimited) -> 413
    body_inline: int = 64 * KiB  #: body bytes carried in http.request; the rest streams through body_channel, in chunks of this size
    http_timeout: float = 60.0  #: seconds to wait for the first response message -> 504 (0: wait forever)
    max_pipelined: int = 16  #: parsed requests waiting behind the current one before reading pauses
    #: high-water mark of a connection's write buffer, bytes; also the response
    #: bytes a worker may send ahead of what the client read (its window)
    http_write_limit: int = 1 * MiB
    #: seconds a client may stop reading its response (write buffer full, not
    #: draining) before the connection is dropped (0: wait forever); nginx's send_timeout
    http_write_timeout: float = 60.0
    #: seconds from a request head's first byte to its end -> 408 (0: no limit); nginx's client_header_timeout
    header_timeout: float = 60.0
    #: seconds in which a request body must move by body_min_bytes -> 408 (0: no limit)
    body_timeout: float = 60.0
    body_min_bytes: int = 1  #: see body_timeout (1: any progress, nginx's client_body_timeout)
    #: most HTTP connections + WebSockets at once per protocol server; beyond
    #: it a request gets 503 and the connection closes (0: no limit); uvicorn's --limit-concurrency
    limit_concurrency: int = 0

    # --- WebSocket
    ws_max_size: int = 1 * MiB  #: largest message (and frame) -> close 1009
    ws_max_queue: int = 32  #: frames waiting for their turn before reading pauses
    ws_write_limit: int = 4 * MiB  #: unsent bytes a client that does not read may hold up -> close 1008
    ws_ping_interval: float = 20.0  #: seconds between keep-alive pings (0: off)
    ws_ping_timeout: float = 20.0  #: seconds to wait for the pong -> close 1011
    websocket_connect_timeout: float = 5.0  #: seconds for the application to answer a connect -> 403
    ack_timeout: float = 35.0  #: seconds to wait for a worker's {"__ack__": n} before moving on
    ws_close_timeout: float = 5.0  #: after our close frame, seconds to wait for the peer's before dropping TCP
    ws_per_message_deflate: bool = True  #: negotiate permessage-deflate (RFC 7692) when the client offers it
    ws_deflate_server_max_window_bits: int = 12  #: largest LZ77 window of what we compress, 9-15 bits
    ws_deflate_client_max_window_bits: int = 12  #: window asked of a client that accepts a limit, 8-15 bits
    ws_deflate_server_no_context_takeover: bool = False  #: compress each message on its own
    ws_deflate_client_no_context_takeover: bool = False  #: ask clients to compress each message on its own

    # --- lifecycle
    graceful_timeout: float = 30.0  #: seconds in-flight HTTP responses get after begin_shutdown()
    access_log: Optional[Callable[[str], None]] = None  #: None: lines go to logger "shmchannels.access" at INFO; a callable gets each line instead

    def __post_init__(self):
        for name in (
            "keepalive", "http_timeout", "ws_ping_interval", "ws_ping_timeout", "websocket_connect_timeout",
            "ack_timeout", "graceful_timeout", "ws_close_timeout", "http_write_timeout", "header_timeout",
            "body_timeout", "limit_concurrency",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in (
            "limit_request_line", "limit_request_fields", "limit_request_field_size", "body_inline",
            "ws_max_size", "ws_max_queue", "ws_write_limit", "max_pipelined", "http_write_limit", "body_min_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 9 <= self.ws_deflate_server_max_window_bits <= 15:
            raise ValueError("ws_deflate_server_max_window_bits must be between 9 and 15 (zlib cannot compress with 8)")
        if not 8 <= self.ws_deflate_client_max_window_bits <= 15:
            raise ValueError("ws_deflate_client_max_window_bits must be between 8 and 15")
        if self.limit_request_body < 0:
            raise ValueError("limit_request_body must be >= 0 (0: unlimited)")
        if self.root_path.endswith("/"):
            self.root_path = self.root_path.rstrip("/")
        if isinstance(self.bind, str):
            self.bind = [self.bind]
        self.trusted = TrustedHosts(self.forwarded_allow_ips)


def channel_capacity(reply_capacity=REPLY_CAPACITY, body_capacity=BODY_CAPACITY):
    """``channel_capacity`` entries for the layer of a protocol server.

    Reply rings (``http.response.*``, ``websocket.send.*``) carry every
    connection of one protocol server, so they are large; a body channel
    holds ``body_capacity`` chunks, which is what bounds the memory of an
    upload in flight.  The ``shmchannels.taken?`` channel, where workers say
    which of them took a message, gets ``TAKEN_CAPACITY``.  A worker hosting
    an ASGI application receives its instances' events on ``asgi.conn.*``:
    every connection of that worker, each flow-controlled by its protocol
    server's window, so it is as large as a reply ring.
    """
    return {
        "http.response.*": reply_capacity,
        "websocket.send.*": reply_capacity,
        "asgi.conn.*": reply_capacity,
        re.compile(r"^http\.request\.body\?"): body_capacity,
        re.compile(r"^shmchannels\.taken\?"): TAKEN_CAPACITY,
    }


#: what a limit of 0 ("no limit", gunicorn's meaning) becomes for the parser
UNLIMITED = {
    "limit_request_line": 1 << 20,
    "limit_request_fields": 32768,
    "limit_request_field_size": 1 << 20,
}
#: seconds a protocol server waits for a worker's ack beyond the worker timeout
ACK_MARGIN = 5

_PROTOCOL_FIELDS = tuple(f.name for f in dataclasses.fields(ProtocolConfig) if f.name != "access_log")
_LAYER_FIELDS = tuple(f.name for f in dataclasses.fields(LayerOptions) if f.name != "channel_capacity")

#: the setting names the translation reads (any other name in the mapping is
#: ignored): ProtocolConfig's fields, LayerOptions' fields, ``timeout`` (a
#: worker's timeout; ``ack_timeout`` is it plus ACK_MARGIN unless given), and
#: ``reply_capacity`` / ``body_capacity`` (``channel_capacity()``)
SETTING_NAMES = frozenset(_PROTOCOL_FIELDS + _LAYER_FIELDS + ("timeout", "reply_capacity", "body_capacity"))


def _addresses(value):
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def protocol_config(settings):
    """The ``ProtocolConfig`` for ``settings`` (setting name -> value).

    Missing names keep ProtocolConfig's defaults, except ``prefix`` (the
    layer's, so the two agree).  A limit of 0 means no limit; ``bind`` and
    ``forwarded_allow_ips`` may be comma-separated strings.  Raises
    ValueError/TypeError naming the field for an invalid value.
    """
    kwargs = {name: settings[name] for name in _PROTOCOL_FIELDS if name in settings}
    kwargs["prefix"] = settings.get("prefix", DEFAULT_PREFIX)
    for name, unlimited in UNLIMITED.items():
        if name in kwargs and not kwargs[name]:
            kwargs[name] = unlimited
    for name in ("bind", "forwarded_allow_ips"):
        if name in kwargs:
            kwargs[name] = _addresses(kwargs[name])
    if "ack_timeout" not in kwargs and "timeout" in settings:
        kwargs["ack_timeout"] = settings["timeout"] + ACK_MARGIN
    return ProtocolConfig(**kwargs)


def layer_options(settings):
    """The channel layer's ``LayerOptions`` for ``settings`` (setting name ->
    value): the layer of every process of a deployment (protocol servers and
    workers alike), with the capacities ``channel_capacity()`` gives for
    ``reply_capacity`` and ``body_capacity``.  Missing names keep
    LayerOptions' defaults.  Raises ValueError/TypeError stating the rule."""
    kwargs = {name: settings[name] for name in _LAYER_FIELDS if name in settings}
    kwargs["channel_capacity"] = channel_capacity(
        settings.get("reply_capacity", REPLY_CAPACITY), settings.get("body_capacity", BODY_CAPACITY)
    )
    return LayerOptions(**kwargs)


class TrustedHosts:
    """Which peers may set X-Forwarded-*: IPs and networks, or everyone ("*")."""

    def __init__(self, spec):
        if isinstance(spec, str):
            spec = [s.strip() for s in spec.split(",") if s.strip()]
        self.always = "*" in spec
        self.networks = []
        self.hosts = set()
        for item in spec:
            if item == "*":
                continue
            if "/" in item:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            else:
                self.hosts.add(str(ipaddress.ip_address(item)))
        self._cache = {}

    def __contains__(self, host):
        if self.always:
            return True
        if host is None:  # Unix socket: whoever can open it is as trusted as the operator made it
            return True
        hit = self._cache.get(host)
        if hit is None:
            hit = self._check(host)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[host] = hit
        return hit

    def _check(self, host):
        if host in self.hosts:
            return True
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return False
        if str(ip) in self.hosts:
            return True
        if ip.version == 6 and ip.ipv4_mapped is not None and str(ip.ipv4_mapped) in self.hosts:
            return True
        return any(ip in net for net in self.networks)
