"""Configuration of `shmchannels serve` / `worker` / `dev`.

Settings are gunicorn ``Setting`` classes: the ones shmchannels adds are
defined here, and a curated subset of gunicorn's own (bind, workers,
timeouts, limits, logging, pidfile ...) is exposed with gunicorn's names,
flags, validators and meaning.  Values are applied in gunicorn's order of
precedence, lowest first:

1. defaults;
2. the config file: ``-c FILE``, else ``./shmchannels.toml``, else
   ``[tool.shmchannels]`` in ``./pyproject.toml`` (TOML; keys are setting
   names, ``-`` or ``_``);
3. environment variables ``SHMCHANNELS_<NAME>`` (lists comma-separated);
4. command-line flags.

An unknown key or an invalid value is an error naming the setting, where it
came from and the rule it breaks (``RULES``); after every source is applied,
``ShmConfig.validate`` checks the rules between settings (a message must fit
in half a ring ...) and builds what the children build from the config (the
layer's engine, the protocol server's config), so a config that loads is one
every child can boot with.

What a process builds from the settings (the protocol server's
``ProtocolConfig``, the layer's ``LayerOptions``) comes from one translation,
``shmchannels.server.config.protocol_config`` / ``layer_options``, which
``options(cfg)`` feeds with ``setting_values(cfg)``; ``python -m
shmchannels.server`` feeds it its command line.
"""

import argparse
import os
import tomllib

from gunicorn import config as gconfig
from gunicorn.config import Setting, validate_bool, validate_pos_int, validate_string
from gunicorn.errors import ConfigError

from shmchannels import names
from shmchannels.options import LayerOptions
from shmchannels.server import config as server_config

ENV_PREFIX = "SHMCHANNELS_"
#: the defaults of the settings that are layer options or protocol-server
#: fields are theirs
_LAYER_DEFAULTS = LayerOptions()
_PROTOCOL_DEFAULTS = server_config.ProtocolConfig()
CONFIG_FILE = "shmchannels.toml"


def validate_float(val):
    if isinstance(val, bool):
        raise TypeError("Not a number: %r" % val)
    try:
        val = float(val)
    except (TypeError, ValueError):
        raise TypeError("Not a number: %r" % val) from None
    if val < 0:
        raise ValueError("Value must be non-negative: %s" % val)
    return val


def validate_optional_string(val):
    return None if val is None or val == "" else validate_string(val)


def _string_list(what):
    """A validator of a list of strings (a comma-separated string from a flag or the environment)."""
    def validate(val):
        if val is None:
            return []
        if isinstance(val, str):
            val = [v.strip() for v in val.split(",")]
        if not isinstance(val, (list, tuple)) or not all(isinstance(v, str) for v in val):
            raise TypeError(f"Not a list of {what}: {val!r}")
        return [v for v in val if v]
    return validate


validate_glob_list = _string_list("channel name globs")
validate_redis_urls = _string_list("Redis URLs")


class ShmSetting:
    """Mixin marking settings that belong to shmchannels (gunicorn's metaclass
    registers every Setting subclass, so the marker cannot be a Setting)."""


class ProtocolServers(ShmSetting, Setting):
    name = "protocol_servers"
    section = "Processes"
    cli = ["--protocol-servers"]
    meta = "INT"
    validator = validate_pos_int
    type = int
    default = 1
    desc = """\
        The number of protocol-server processes (HTTP/WebSocket termination).

        They share the listening sockets; one per core is a good start.
        """


class Wsgi(ShmSetting, Setting):
    name = "wsgi"
    section = "Application"
    cli = ["--wsgi"]
    meta = "MODULE:APP"
    validator = validate_optional_string
    default = None
    desc = """\
        A WSGI application to serve HTTP through the workers, e.g.
        ``mysite.wsgi:application`` (Django) or ``app:app`` (Flask).

        It becomes the default ``http.request`` consumer.
        """


class Routing(ShmSetting, Setting):
    name = "routing"
    section = "Application"
    cli = ["--routing"]
    meta = "MODULE:ROUTES"
    validator = validate_optional_string
    default = None
    desc = """\
        The channel routing: a dict ``{channel: consumer}`` or a list of
        ``route()`` / ``include()``, e.g. ``myapp.routing:routes``.

        Without ``routing`` and ``wsgi`` the built-in demo is served.
        """


class Asgi(ShmSetting, Setting):
    name = "asgi"
    section = "Application"
    cli = ["--asgi"]
    meta = "MODULE:APP"
    validator = validate_optional_string
    default = None
    desc = """\
        An ASGI 3 application hosted in the workers, e.g. ``mysite.asgi:application``
        (Django Channels) or ``main:app`` (Starlette); also the positional argument of
        ``shmchannels serve``.

        Protocol servers relay each request and WebSocket to a worker; a HUP
        restarts the workers with new code and resumes every WebSocket in a new
        worker (see ``resume``).  Cannot be combined with ``routing`` or ``wsgi``.
        """


class Resume(ShmSetting, Setting):
    name = "resume"
    section = "Application"
    cli = ["--no-resume"]
    validator = validate_bool
    action = "store_false"
    type = bool
    default = True
    desc = """\
        On a HUP (or a worker crash), resume the WebSockets of an ``asgi``
        application in another worker: the new instance runs ``connect()`` again
        and the client sees nothing.  ``--no-resume`` closes them with 1012
        instead, for consumers whose state ``connect()`` cannot rebuild.
        """


class Prefix(ShmSetting, Setting):
    name = "prefix"
    section = "Channel layer"
    cli = ["--prefix"]
    meta = "NAME"
    validator = validate_string
    default = _LAYER_DEFAULTS.prefix
    desc = """\
        The bus prefix: processes with the same prefix share channels and groups.
        """


class RingSize(ShmSetting, Setting):
    name = "ring_size"
    section = "Channel layer"
    cli = ["--ring-size"]
    meta = "BYTES"
    validator = validate_pos_int
    type = int
    default = _LAYER_DEFAULTS.ring_size
    desc = """\
        Bytes of message space per channel ring (a power of two).
        """


class MaxMessageSize(ShmSetting, Setting):
    name = "max_message_size"
    section = "Channel layer"
    cli = ["--max-message-size"]
    meta = "BYTES"
    validator = validate_pos_int
    type = int
    default = _LAYER_DEFAULTS.max_message_size
    desc = """\
        Largest encoded message, bytes (MessageTooLarge above it).

        Your own limit, independent of ``ring_size``: a message too large
        for a ring travels in a blob of its own in /dev/shm.  Unset, it is
        16 MiB plus 64 KiB, or ``ws_max_size`` plus 64 KiB of envelope if
        that is larger; set, it must hold ``ws_max_size`` plus 64 KiB.
        """


class Capacity(ShmSetting, Setting):
    name = "capacity"
    section = "Channel layer"
    cli = ["--capacity"]
    meta = "INT"
    validator = validate_pos_int
    type = int
    default = _LAYER_DEFAULTS.capacity
    desc = """\
        Messages a channel holds before senders get ChannelFull.
        """


class ReplyCapacity(ShmSetting, Setting):
    name = "reply_capacity"
    section = "Channel layer"
    cli = ["--reply-capacity"]
    meta = "INT"
    validator = validate_pos_int
    type = int
    default = server_config.REPLY_CAPACITY
    desc = """\
        Capacity of each protocol server's reply rings (all its connections share one).
        """


class Expiry(ShmSetting, Setting):
    name = "expiry"
    section = "Channel layer"
    cli = ["--expiry"]
    meta = "SECONDS"
    validator = validate_float
    type = float
    default = float(_LAYER_DEFAULTS.expiry)
    desc = """\
        Seconds after which an unread message is dropped.
        """


class GroupExpiry(ShmSetting, Setting):
    name = "group_expiry"
    section = "Channel layer"
    cli = ["--group-expiry"]
    meta = "SECONDS"
    validator = validate_pos_int
    type = int
    default = _LAYER_DEFAULTS.group_expiry
    desc = """\
        Seconds after which a group membership ends.
        """


class OnlyChannels(ShmSetting, Setting):
    name = "only_channels"
    section = "Processes"
    cli = ["--only-channels"]
    meta = "GLOBS"
    validator = validate_glob_list
    default = []
    desc = """\
        Workers listen only on routed channels matching these globs (comma-separated).
        """


class ExcludeChannels(ShmSetting, Setting):
    name = "exclude_channels"
    section = "Processes"
    cli = ["--exclude-channels"]
    meta = "GLOBS"
    validator = validate_glob_list
    default = []
    desc = """\
        Workers do not listen on routed channels matching these globs.
        """


class ProtocolTimeout(ShmSetting, Setting):
    name = "protocol_timeout"
    section = "Processes"
    cli = ["--protocol-timeout"]
    meta = "SECONDS"
    validator = validate_pos_int
    type = int
    default = 30
    desc = """\
        A protocol server whose event loop has not ticked for this long is
        stuck: it is aborted (SIGABRT, then SIGKILL) and replaced.
        """


class HttpTimeout(ShmSetting, Setting):
    name = "http_timeout"
    section = "HTTP"
    cli = ["--http-timeout"]
    meta = "SECONDS"
    validator = validate_float
    type = float
    default = _PROTOCOL_DEFAULTS.http_timeout
    desc = """\
        Seconds to wait for a worker's response before answering 504.
        """


class LimitRequestBody(ShmSetting, Setting):
    name = "limit_request_body"
    section = "HTTP"
    cli = ["--limit-request-body"]
    meta = "BYTES"
    validator = validate_pos_int
    type = int
    default = _PROTOCOL_DEFAULTS.limit_request_body
    desc = """\
        Largest request body accepted (413 above it); 0 means no limit.
        """


class ProxyHeaders(ShmSetting, Setting):
    name = "proxy_headers"
    section = "HTTP"
    cli = ["--proxy-headers"]
    validator = validate_bool
    action = "store_true"
    type = bool
    default = _PROTOCOL_DEFAULTS.proxy_headers
    desc = """\
        Trust X-Forwarded-For/-Proto/-Host/-Port from ``forwarded_allow_ips``.
        """


class HttpWriteLimit(ShmSetting, Setting):
    name = "http_write_limit"
    section = "HTTP"
    cli = ["--http-write-limit"]
    meta = "BYTES"
    validator = validate_pos_int
    type = int
    default = _PROTOCOL_DEFAULTS.http_write_limit
    desc = """\
        High-water mark of an HTTP connection's write buffer, and the
        response bytes a worker may send ahead of what its client has read:
        past it the worker's sends wait for the client (an ASGI
        application's ``send`` waits too), so a client that does not read
        holds about twice this much of the protocol server's memory.
        """


class HttpWriteTimeout(ShmSetting, Setting):
    name = "http_write_timeout"
    section = "HTTP"
    cli = ["--http-write-timeout"]
    meta = "SECONDS"
    validator = validate_float
    type = float
    default = _PROTOCOL_DEFAULTS.http_write_timeout
    desc = """\
        Seconds an HTTP client may read nothing of a response whose write
        buffer is full before the connection is dropped (and its worker
        stops waiting); 0 waits forever.
        """


class HeaderTimeout(ShmSetting, Setting):
    name = "header_timeout"
    section = "HTTP"
    cli = ["--header-timeout"]
    meta = "SECONDS"
    validator = validate_float
    type = float
    default = _PROTOCOL_DEFAULTS.header_timeout
    desc = """\
        Seconds from the first byte of a request head to its end; a slower
        client gets 408 and is closed (slowloris).  0: no limit.
        """


class BodyTimeout(ShmSetting, Setting):
    name = "body_timeout"
    section = "HTTP"
    cli = ["--body-timeout"]
    meta = "SECONDS"
    validator = validate_float
    type = float
    default = _PROTOCOL_DEFAULTS.body_timeout
    desc = """\
        A request body must move by ``body_min_bytes`` in each period of
        this many seconds (while the server reads it), else 408 and close.
        0: no limit.
        """


class BodyMinBytes(ShmSetting, Setting):
    name = "body_min_bytes"
    section = "HTTP"
    cli = ["--body-min-bytes"]
    meta = "BYTES"
    validator = validate_pos_int
    type = int
    default = _PROTOCOL_DEFAULTS.body_min_bytes
    desc = """\
        See ``body_timeout``: bytes of a request body that must arrive in
        each of its periods (1: any progress).
        """


class LimitConcurrency(ShmSetting, Setting):
    name = "limit_concurrency"
    section = "HTTP"
    cli = ["--limit-concurrency"]
    meta = "INT"
    validator = validate_pos_int
    type = int
    default = _PROTOCOL_DEFAULTS.limit_concurrency
    desc = """\
        Most HTTP connections plus WebSockets one protocol server holds at
        once; a request on a connection beyond it gets 503 and the
        connection closes (uvicorn's ``--limit-concurrency``).  0: no limit.
        """


class WsMaxSize(ShmSetting, Setting):
    name = "ws_max_size"
    section = "WebSocket"
    cli = ["--ws-max-size"]
    meta = "BYTES"
    validator = validate_pos_int
    type = int
    default = _PROTOCOL_DEFAULTS.ws_max_size
    desc = """\
        Largest WebSocket message; bigger ones close the socket with 1009.
        """


class WsWriteLimit(ShmSetting, Setting):
    name = "ws_write_limit"
    section = "WebSocket"
    cli = ["--ws-write-limit"]
    meta = "BYTES"
    validator = validate_pos_int
    type = int
    default = _PROTOCOL_DEFAULTS.ws_write_limit
    desc = """\
        Unsent bytes a WebSocket client that does not read may hold up in
        the protocol server; past it the socket is closed with 1008.  While
        a client's write buffer is over its high-water mark, reading from
        it pauses, and an ASGI application's ``send`` waits.
        """


class WsPingInterval(ShmSetting, Setting):
    name = "ws_ping_interval"
    section = "WebSocket"
    cli = ["--ws-ping-interval"]
    meta = "SECONDS"
    validator = validate_float
    type = float
    default = _PROTOCOL_DEFAULTS.ws_ping_interval
    desc = """\
        Seconds between keep-alive pings (0 disables them).
        """


class WsPingTimeout(ShmSetting, Setting):
    name = "ws_ping_timeout"
    section = "WebSocket"
    cli = ["--ws-ping-timeout"]
    meta = "SECONDS"
    validator = validate_float
    type = float
    default = _PROTOCOL_DEFAULTS.ws_ping_timeout
    desc = """\
        Seconds to wait for a pong before closing with 1011.
        """


class WsPerMessageDeflate(ShmSetting, Setting):
    name = "ws_per_message_deflate"
    section = "WebSocket"
    cli = ["--ws-per-message-deflate"]
    cli_negated = ["--no-ws-per-message-deflate"]  # add_arguments adds it
    validator = validate_bool
    action = "store_true"
    type = bool
    default = _PROTOCOL_DEFAULTS.ws_per_message_deflate
    desc = """\
        Negotiate permessage-deflate (RFC 7692) with clients that offer it
        (browsers do); ``--no-ws-per-message-deflate`` turns it off.
        """


class WsDeflateServerMaxWindowBits(ShmSetting, Setting):
    name = "ws_deflate_server_max_window_bits"
    section = "WebSocket"
    cli = ["--ws-deflate-server-max-window-bits"]
    meta = "BITS"
    validator = validate_pos_int
    type = int
    default = _PROTOCOL_DEFAULTS.ws_deflate_server_max_window_bits
    desc = """\
        permessage-deflate: the largest LZ77 window (9-15 bits) of the
        messages the server compresses (a client may ask for less).
        """


class WsDeflateClientMaxWindowBits(ShmSetting, Setting):
    name = "ws_deflate_client_max_window_bits"
    section = "WebSocket"
    cli = ["--ws-deflate-client-max-window-bits"]
    meta = "BITS"
    validator = validate_pos_int
    type = int
    default = _PROTOCOL_DEFAULTS.ws_deflate_client_max_window_bits
    desc = """\
        permessage-deflate: the window (8-15 bits) asked of clients that
        offer ``client_max_window_bits``.
        """


class WsDeflateServerNoContextTakeover(ShmSetting, Setting):
    name = "ws_deflate_server_no_context_takeover"
    section = "WebSocket"
    cli = ["--ws-deflate-server-no-context-takeover"]
    validator = validate_bool
    action = "store_true"
    type = bool
    default = _PROTOCOL_DEFAULTS.ws_deflate_server_no_context_takeover
    desc = """\
        permessage-deflate: compress every message on its own (less memory
        per connection, worse ratio).
        """


class WsDeflateClientNoContextTakeover(ShmSetting, Setting):
    name = "ws_deflate_client_no_context_takeover"
    section = "WebSocket"
    cli = ["--ws-deflate-client-no-context-takeover"]
    validator = validate_bool
    action = "store_true"
    type = bool
    default = _PROTOCOL_DEFAULTS.ws_deflate_client_no_context_takeover
    desc = """\
        permessage-deflate: make clients compress every message on its own.
        """


class WebsocketConnectTimeout(ShmSetting, Setting):
    name = "websocket_connect_timeout"
    section = "WebSocket"
    cli = ["--websocket-connect-timeout"]
    meta = "SECONDS"
    validator = validate_float
    type = float
    default = _PROTOCOL_DEFAULTS.websocket_connect_timeout
    desc = """\
        Seconds a consumer has to accept a WebSocket before it is rejected (403).
        """


class Uvloop(ShmSetting, Setting):
    name = "uvloop"
    section = "Processes"
    cli = ["--uvloop"]
    meta = "auto|on|off"
    validator = validate_string
    default = "auto"
    desc = """\
        Use uvloop in protocol servers and in the workers of an ASGI
        application: ``auto`` when it is installed.
        """


class Hosts(ShmSetting, Setting):
    name = "hosts"
    section = "Between hosts"
    cli = ["--bridge"]
    meta = "REDIS_URL"
    validator = validate_redis_urls
    default = []
    desc = """\
        Join the other hosts that use this prefix and this Redis into one
        channel layer (``redis://host:6379/0``; the ``hosts`` key of
        channels_redis and of ``SharedMemoryChannelLayer``).  Unset, there is
        no bridge and no Redis: one host.  Every process of the serve takes
        part; one per host is elected to carry what comes from Redis.  Set the
        same ``hosts`` in the project's ``CHANNEL_LAYERS`` so that its own
        group sends cross too.
        """


class BridgeHost(ShmSetting, Setting):
    name = "host"
    section = "Between hosts"
    cli = ["--host-id"]
    meta = "NAME"
    validator = validate_optional_string
    default = None
    desc = """\
        This host's identity among the hosts of the bridge (default: the
        hostname); two live hosts may not share one.
        """


class RedisPrefix(ShmSetting, Setting):
    name = "redis_prefix"
    section = "Between hosts"
    cli = ["--redis-prefix"]
    meta = "STRING"
    validator = validate_optional_string
    default = None
    desc = """\
        The prefix of the bridge's Redis keys (default ``shmch:<prefix>``):
        hosts meet where their Redis prefixes are the same.
        """


class Metrics(ShmSetting, Setting):
    name = "metrics"
    section = "Processes"
    cli = ["--metrics"]
    meta = "HOST:PORT"
    validator = validate_optional_string
    default = None
    desc = """\
        Serve Prometheus metrics (``/metrics``) and health checks
        (``/healthz``, ``/readyz``) on this address, from a thread of the
        master.  Off by default.  A bare port (``9191``) or ``:9191`` binds to
        127.0.0.1; any other interface must be named (``0.0.0.0:9191``).
        """


#: gunicorn settings exposed unchanged (name, flags, validation, meaning).
GUNICORN_SETTINGS = [
    "bind", "backlog", "workers", "threads", "timeout", "graceful_timeout", "keepalive",
    "max_requests", "max_requests_jitter", "limit_request_line", "limit_request_fields",
    "limit_request_field_size", "forwarded_allow_ips", "root_path", "pidfile", "umask",
    "user", "group", "loglevel", "accesslog", "errorlog", "access_log_format", "logconfig",
    "capture_output", "proc_name", "reuse_port", "chdir", "pythonpath", "raw_env",
    "preload_app", "worker_tmp_dir",
]

def _prefix_rule(v):
    try:
        names.require_prefix(v)
    except TypeError:
        return f"prefix must be 1-64 ASCII letters, digits, '_', '-' or '.', not starting with '-' or '.' (got {v!r})"


def _ring_size_rule(v):
    if v < 64 << 10 or v > 1 << 30 or v & (v - 1):
        return f"ring_size must be a power of two between 64 KiB and 1 GiB (got {v})"


def _bind_rule(v):
    from gunicorn.util import parse_address

    for address in v:
        try:
            parse_address(address)
        except (RuntimeError, ValueError) as exc:
            return f"bind must be HOST:PORT, [IPV6]:PORT, unix:PATH or fd://FD (got {address!r}: {exc})"


def _at_least(name, low):
    def rule(v):
        if v < low:
            return f"{name} must be at least {low} (got {v!r})"
    return rule


def _positive_seconds(name):
    def rule(v):
        if not v > 0:
            return f"{name} must be a positive number of seconds (got {v!r})"
    return rule


def metrics_address(v):
    """(host, port) of a ``metrics`` / ``--listen`` value; ValueError naming the rule."""
    import ipaddress

    text = str(v).strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number <= 65535:
        raise ValueError(f"metrics must be HOST:PORT with a port from 0 to 65535 (got {v!r})")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"metrics must name an IP address or localhost, not {host!r} (got {v!r})") from None
    return host, number


def _metrics_rule(v):
    if v is None:
        return None
    try:
        metrics_address(v)
    except ValueError as exc:
        return str(exc)


#: per-setting rules beyond the validator's type check: each returns the
#: broken rule as a message naming the setting and the value, or None.
RULES = {
    "prefix": _prefix_rule,
    "ring_size": _ring_size_rule,
    "max_message_size": _at_least("max_message_size", 1024),
    "capacity": _at_least("capacity", 1),
    "reply_capacity": _at_least("reply_capacity", 1),
    "expiry": _positive_seconds("expiry"),
    "group_expiry": _at_least("group_expiry", 1),
    "threads": _at_least("threads", 1),
    "ws_max_size": _at_least("ws_max_size", 1),
    "ws_write_limit": _at_least("ws_write_limit", 1),
    "http_write_limit": _at_least("http_write_limit", 1),
    "body_min_bytes": _at_least("body_min_bytes", 1),
    "uvloop": lambda v: None if v in ("auto", "on", "off") else f"uvloop must be auto, on or off (got {v!r})",
    "bind": _bind_rule,
    "metrics": _metrics_rule,
}

#: bytes of a WebSocket message's envelope (reply channel, path, order ...)
#: on top of its payload, as the layer's default max_message_size assumes
WS_ENVELOPE = 64 << 10
#: the source of a max_message_size derived from ws_max_size
DERIVED = "derived from ws_max_size"


SHM_SETTINGS = [cls.name for cls in gconfig.KNOWN_SETTINGS if issubclass(cls, ShmSetting)]
EXPOSED = SHM_SETTINGS + GUNICORN_SETTINGS


def _key(name):
    return name.replace("-", "_").lower()


def find_config_file(explicit=None, cwd=None):
    """(path, table) of the config file in effect, or (None, {})."""
    cwd = cwd or os.getcwd()
    if explicit:
        with open(explicit, "rb") as f:
            data = tomllib.load(f)
        if os.path.basename(explicit) == "pyproject.toml":
            data = data.get("tool", {}).get("shmchannels", {})
        return explicit, data
    path = os.path.join(cwd, CONFIG_FILE)
    if os.path.exists(path):
        with open(path, "rb") as f:
            return path, tomllib.load(f)
    path = os.path.join(cwd, "pyproject.toml")
    if os.path.exists(path):
        with open(path, "rb") as f:
            data = tomllib.load(f).get("tool", {}).get("shmchannels")
        if data is not None:
            return path, data
    return None, {}


def env_values(environ=None):
    environ = os.environ if environ is None else environ
    values = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        name = _key(key[len(ENV_PREFIX):])
        if name in EXPOSED:
            values[name] = raw
    return values


class ShmConfig:
    """A gunicorn Config plus where each value came from."""

    def __init__(self):
        self.cfg = gconfig.Config(prog="shmchannels")
        self.sources = {}
        # False for a standalone `worker`: no protocol server of this config
        # runs, so its limits (ws_max_size) constrain nothing here
        self.runs_protocol_servers = True
        self.config_file = None
        # shmchannels' own defaults for gunicorn settings
        self.cfg.set("keepalive", int(_PROTOCOL_DEFAULTS.keepalive))
        self.cfg.set("proc_name", "shmchannels")
        self.cfg.set("worker_class", "sync")  # unused: the arbiter picks the classes
        # gunicorn's control socket drives its single pool; ours is the bus
        # (`shmchannels status`) and the signals.
        self.cfg.set("control_socket_disable", True)

    def set(self, name, value, source, where=None):
        """Apply one value; ``source`` is recorded for --print-config, errors
        name ``where`` (default: the source)."""
        name = _key(name)
        where = where or source
        if name not in EXPOSED:
            raise ConfigError(
                f"unknown setting {name!r} (from {source}); known settings: {', '.join(sorted(EXPOSED))}"
            )
        setting = self.cfg.settings[name]
        if isinstance(value, str) and name in ("bind", "raw_env", "forwarded_allow_ips"):
            value = [v.strip() for v in value.split(",") if v.strip()] if name != "forwarded_allow_ips" else value
        if setting.validator is validate_bool and not isinstance(value, bool):
            value = str(value).strip().lower() in ("1", "true", "yes", "on")
        try:
            self.cfg.set(name, value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: invalid value {value!r} for {name}: {exc}") from None
        rule = RULES.get(name)
        broken = rule(self.cfg.settings[name].get()) if rule else None
        if broken:
            raise ConfigError(f"{where}: {broken}")
        self.sources[name] = source

    def load(self, config_file=None, environ=None, cli=None):
        path, table = find_config_file(config_file)
        self.config_file = path
        for key, value in table.items():
            self.set(key, value, f"config file {path}")
        for key, value in env_values(environ).items():
            self.set(key, value, f"environment {ENV_PREFIX}{key.upper()}")
        for key, value in (cli or {}).items():
            self.set(key, value, "command line", where=f"command line --{_key(key).replace('_', '-')}")
        self.validate()
        return self

    def source(self, name):
        return self.sources.get(name, "default")

    def validate(self):
        """The rules between settings, then what the children will build from
        the config: a ConfigError naming the settings, else None."""
        cfg = self.cfg
        mms = cfg.max_message_size
        if self.runs_protocol_servers and cfg.protocol_servers and cfg.ws_max_size + WS_ENVELOPE > mms:
            if self.source("max_message_size") in ("default", DERIVED):
                # A WebSocket message travels with its envelope: the layer's
                # limit follows ws_max_size unless the user set one.
                cfg.set("max_message_size", cfg.ws_max_size + WS_ENVELOPE)
                self.sources["max_message_size"] = DERIVED
            else:
                raise ConfigError(
                    f"ws_max_size {cfg.ws_max_size} ({self.source('ws_max_size')}) needs max_message_size of at "
                    f"least {cfg.ws_max_size + WS_ENVELOPE} (the message plus 64 KiB of envelope), got {mms} "
                    f"({self.source('max_message_size')}): raise max_message_size, or leave it unset"
                )
        if cfg.uvloop == "on":
            import importlib.util

            if importlib.util.find_spec("uvloop") is None:
                raise ConfigError(f"uvloop = on ({self.source('uvloop')}) but uvloop is not installed "
                                  "(pip install 'shmchannels[uvloop]', or uvloop = auto)")
        if cfg.asgi and (cfg.routing or cfg.wsgi):
            other = "routing" if cfg.routing else "wsgi"
            raise ConfigError(
                f"asgi ({self.source('asgi')}) cannot be combined with {other} ({self.source(other)}): "
                "an ASGI application routes its own requests and WebSockets"
            )
        if cfg.protocol_servers == 0 and cfg.workers == 0:
            raise ConfigError("protocol_servers and workers are both 0: there would be nothing to run")
        # What the children build from the config, through the same
        # translation they use.
        values = setting_values(cfg)
        try:
            server_config.layer_options(values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"the channel layer rejects this config: {exc}") from None
        try:
            server_config.protocol_config(values)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"the protocol server rejects this config: {exc}") from None
        try:
            bridge_options(cfg)
        except (TypeError, ValueError, ImportError) as exc:
            raise ConfigError(f"the bridge between hosts rejects this config ({self.source('hosts')}): {exc}") from None

    def __getattr__(self, name):
        return getattr(self.cfg, name)

    def describe(self):
        """Lines of ``name = value  (source)`` for --print-config."""
        lines = []
        width = max(len(n) for n in EXPOSED)
        for name in EXPOSED:
            value = self.cfg.settings[name].get()
            lines.append(f"{name:{width}} = {value!r}  ({self.sources.get(name, 'default')})")
        return "\n".join(lines)


def setting_values(cfg):
    """{setting name: value} of every exposed setting of ``cfg`` (a gunicorn
    Config or a ShmConfig): the input of the translation to the protocol
    server's and the layer's options."""
    settings = cfg.settings
    return {name: settings[name].get() for name in EXPOSED}


def options(cfg):
    """(ProtocolConfig, LayerOptions) of a process run with ``cfg``: what
    every child of `serve`, `worker` and `dev` build, and what
    ``ShmConfig.validate`` checks before anything starts."""
    values = setting_values(cfg)
    return server_config.protocol_config(values), server_config.layer_options(values)


def bridge_options(cfg):
    """The ``BridgeOptions`` of a process run with ``cfg``, or None without
    ``hosts`` (then no Redis client is imported)."""
    if not cfg.hosts:
        return None
    from shmchannels.bridge.options import BridgeOptions

    return BridgeOptions.build(cfg.prefix, cfg.hosts, host=cfg.host, redis_prefix=cfg.redis_prefix)


def add_arguments(parser, names=None):
    """Add the flags of the exposed settings to an argparse parser.

    Values are collected as strings/booleans into ``args.settings`` and are
    validated when applied (so a bad flag reports the setting it belongs to).
    """
    group_by_section = {}
    for name in names or EXPOSED:
        setting = gconfig.KNOWN_SETTINGS[[s.name for s in gconfig.KNOWN_SETTINGS].index(name)]
        if not setting.cli:
            continue
        section = setting.section or "Other"
        group = group_by_section.get(section)
        if group is None:
            group = group_by_section[section] = parser.add_argument_group(section)
        kwargs = {"dest": "setting__" + name, "default": argparse.SUPPRESS, "help": setting.short}
        if setting.action in ("store_true", "store_const"):
            kwargs["action"] = "store_const"
            kwargs["const"] = True
        elif setting.action == "store_false":
            kwargs["action"] = "store_const"
            kwargs["const"] = False
        elif setting.action == "append" or name in ("bind", "raw_env"):
            kwargs["action"] = "append"
            kwargs["metavar"] = setting.meta
        else:
            kwargs["metavar"] = setting.meta
        group.add_argument(*setting.cli, **kwargs)
        if getattr(setting, "cli_negated", None):
            group.add_argument(*setting.cli_negated, dest=kwargs["dest"], default=argparse.SUPPRESS, action="store_const",
                               const=False, help=f"turn {setting.cli[0]} off")


def cli_values(args):
    return {k[len("setting__"):]: v for k, v in vars(args).items() if k.startswith("setting__")}
