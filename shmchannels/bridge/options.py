"""``BridgeOptions``: the settings of the bridge between hosts, validated once.

Built by ``SharedMemoryChannelLayer`` when its ``CONFIG`` has ``hosts``, and
by ``shmchannels.checks`` for ``manage.py check``.  Imports no Redis client:
a layer without ``hosts`` never loads one.

``hosts`` takes channels_redis's forms, one Redis server::

    ["redis://10.0.0.5:6379/0"]          a URL (redis://, rediss://, unix://)
    [("10.0.0.5", 6379)]                 host and port
    [{"address": "redis://...", "password": "..."}]   a URL plus client keywords
    [{"host": "10.0.0.5", "port": 6379, "db": 1}]     client keywords only

Several servers (channels_redis's sharding) and ``sentinels`` are refused:
the bridge's group operation is one script on one server.
"""

import dataclasses
import numbers
import re
import socket

__all__ = ["BridgeOptions", "RedisSpec", "default_host_id"]

HOST_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}\Z")
HOST_ID_RULE = "1-32 ASCII letters, digits, '_' or '-'"
URL_SCHEMES = ("redis://", "rediss://", "unix://")
DEFAULT_HOST_LEASE = 30.0
MIN_HOST_LEASE = 1.0


@dataclasses.dataclass(frozen=True)
class RedisSpec:
    """One Redis server: a URL and/or redis-py client keywords."""

    url: str | None
    kwargs: tuple = ()  # ((name, value), ...), sorted

    def __repr__(self):  # never the password (in the URL or the keywords)
        return f"RedisSpec({self.describe()!r})"

    def describe(self):
        """The server without credentials, for messages and logs."""
        if self.url:
            return re.sub(r"//[^@/]*@", "//***@", self.url)
        kw = dict(self.kwargs)
        return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"


def _spec(entry):
    if isinstance(entry, str):
        if not entry.startswith(URL_SCHEMES):
            raise ValueError(f"hosts entry {entry!r} is not a Redis URL (redis://, rediss:// or unix://)")
        return RedisSpec(entry)
    if isinstance(entry, (tuple, list)):
        if len(entry) != 2 or not isinstance(entry[0], str) or isinstance(entry[1], bool) \
                or not isinstance(entry[1], numbers.Integral):
            raise TypeError(f"hosts entry {entry!r} must be (host, port)")
        return RedisSpec(f"redis://{entry[0]}:{entry[1]}")
    if isinstance(entry, dict):
        kwargs = dict(entry)
        if "sentinels" in kwargs:
            raise ValueError("hosts: Redis Sentinel ('sentinels') is not supported by the bridge; give the "
                             "server's address")
        address = kwargs.pop("address", None)
        if isinstance(address, (tuple, list)):
            address = _spec(address).url
        elif address is not None and not (isinstance(address, str) and address.startswith(URL_SCHEMES)):
            raise ValueError(f"hosts entry's 'address' {address!r} is not a Redis URL")
        bad = [k for k in kwargs if not (isinstance(k, str) and k.isidentifier())]
        if bad:
            raise TypeError(f"hosts entry keys must be redis-py keyword names, not {bad!r}")
        return RedisSpec(address, tuple(sorted(kwargs.items())))
    raise TypeError(f"hosts entry {entry!r} must be a Redis URL, (host, port) or a dict")


def parse_hosts(hosts):
    """channels_redis's ``hosts`` as one ``RedisSpec``."""
    if isinstance(hosts, (str, dict)) or not isinstance(hosts, (list, tuple)):
        raise TypeError(f"hosts must be a list of Redis servers (channels_redis's form), not {hosts!r}")
    if len(hosts) != 1:
        raise ValueError(f"hosts must name exactly one Redis server (got {len(hosts)}): sharding over several, "
                         "as channels_redis does, is not supported by the bridge")
    return _spec(hosts[0])


def default_host_id(hostname=None):
    """This host's identity: its hostname, with characters outside the rule as '_'."""
    hostname = socket.gethostname() if hostname is None else hostname
    host = re.sub(r"[^A-Za-z0-9_-]", "_", hostname)
    if not HOST_ID.match(host):
        raise ValueError(f"the hostname {hostname!r} does not make a host identity ({HOST_ID_RULE}): set 'host'")
    return host


def _keys(value):
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError("symmetric_encryption_keys must be a list of keys (str or bytes)")
    for key in value:
        if not isinstance(key, (str, bytes)) or not key:
            raise TypeError(f"symmetric_encryption_keys entries must be non-empty str or bytes, not {key!r}")
    return tuple(value)


def _globs(value):
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"cross_host_channels must be a list of channel name globs, not {value!r}")
    for pattern in value:
        if not isinstance(pattern, str) or not pattern or "!" in pattern:
            raise ValueError(f"cross_host_channels entries must be globs of named channels (no '!'), not {pattern!r}")
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class BridgeOptions:
    redis: RedisSpec  #: the Redis server every host of the layer reaches
    host: str  #: this host's identity; the tag in its process-specific channel names
    namespace: str  #: the Redis key prefix shared by the layer's hosts
    cross_host_channels: tuple = ()  #: globs of named channels whose receivers are on any host
    host_lease: float = DEFAULT_HOST_LEASE  #: seconds a host's claim and memberships live unrenewed
    symmetric_encryption_keys: tuple = dataclasses.field(default=(), repr=False)  #: Fernet keys; first encrypts

    @classmethod
    def build(cls, prefix, hosts, host=None, cross_host_channels=None, redis_prefix=None,
              host_lease=DEFAULT_HOST_LEASE, symmetric_encryption_keys=None):
        """From a layer's keyword arguments (``prefix`` is the bus prefix)."""
        redis = parse_hosts(hosts)
        if host is None:
            host = default_host_id()
        elif not isinstance(host, str) or not HOST_ID.match(host):
            raise TypeError(f"host must be {HOST_ID_RULE}, not {host!r}")
        if redis_prefix is None:
            redis_prefix = f"shmch:{prefix}"
        elif not isinstance(redis_prefix, str) or not redis_prefix or "{" in redis_prefix:
            raise TypeError(f"redis_prefix must be a non-empty str without '{{', not {redis_prefix!r}")
        if isinstance(host_lease, bool) or not isinstance(host_lease, numbers.Real):
            raise TypeError(f"host_lease must be a number of seconds, not {host_lease!r}")
        if host_lease < MIN_HOST_LEASE:
            raise ValueError(f"host_lease must be at least {MIN_HOST_LEASE} s")
        return cls(redis, host, redis_prefix, _globs(cross_host_channels), float(host_lease),
                   _keys(symmetric_encryption_keys))
