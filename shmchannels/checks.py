"""Django system checks for ``SharedMemoryChannelLayer``'s ``CONFIG``.

A project that switches ``BACKEND`` from channels_redis and keeps its
``CONFIG`` must hear about it from ``manage.py check`` (and every command
that runs the checks, ``runserver`` included), not from a 500 on the first
WebSocket: Channels builds the layer lazily.  With ``"shmchannels"`` in
``INSTALLED_APPS`` (``shmchannels.apps``), every ``CHANNEL_LAYERS`` entry on
this backend (or a subclass) is checked here, and the layer's constructor
applies the same rules (``config_problems``), so the check and the runtime
never disagree.

channels_redis's keys, one by one:

* ``hosts``: one Redis server, in any of channels_redis's forms; it turns
  on the bridge between hosts (``shmchannels.bridge``).  Several servers
  (sharding) and Sentinel are refused.
* ``symmetric_encryption_keys``: with ``hosts``, everything that crosses
  Redis is encrypted (Fernet, as channels_redis).  Without it, a warning:
  nothing leaves the host, and the segments in /dev/shm are mode 0600 and
  not encrypted.
* ``serializer_format``: ``"msgpack"`` is what the bus and the bridge use;
  ``"json"`` is accepted with a warning and changes nothing; anything else
  is refused.
* ``random_prefix_length``: accepted and unused (process-specific names are
  minted from the process's bus slot).
* ``on_disconnect`` / ``on_reconnect`` (RedisPubSubChannelLayer): without
  ``hosts`` ignored (no connection to lose); with ``hosts`` refused: the
  bridge reconnects by itself and is never told to call anything.

The bridge's own keys (``host``, ``cross_host_channels``, ``redis_prefix``,
``host_lease``) warn when ``hosts`` is absent, since they then do nothing.
"""

import dataclasses

#: channels_redis keys that are accepted and change nothing, and why
IGNORED = {
    "random_prefix_length": "process-specific channel names are minted from the process's bus slot",
    "on_disconnect": "there is no broker connection to lose, so it is never called",
    "on_reconnect": "there is no broker connection to lose, so it is never called",
    "serializer_format": "messages are msgpack on the bus and across Redis",
}
SERIALIZER_FORMATS = ("msgpack", "json")
#: keys that only mean something with ``hosts``
BRIDGE_KEYS = ("host", "cross_host_channels", "redis_prefix", "host_lease", "symmetric_encryption_keys")
CALLBACKS = ("on_disconnect", "on_reconnect")


class Problem:
    def __init__(self, level, id, msg, hint=None):
        self.level, self.id, self.msg, self.hint = level, id, msg, hint

    def __repr__(self):
        return f"<Problem {self.id} {self.msg!r}>"


def config_problems(config, own, check_values=True):
    """What is wrong with (or ignored in) a ``CONFIG`` for this backend
    (whose own keys, a subclass's included, are ``own``): ``Problem``s of
    level "error" or "warning".  ``check_values``: also build the options
    from the values (the constructor builds them itself)."""
    problems = []
    bridged = config.get("hosts") is not None
    fmt = config.get("serializer_format", "msgpack")
    if fmt not in SERIALIZER_FORMATS:
        problems.append(Problem("error", "shmchannels.E003",
                                f"CONFIG 'serializer_format' must be one of {SERIALIZER_FORMATS}, not {fmt!r}"))
    elif fmt == "json":
        problems.append(Problem("warning", "shmchannels.W001",
                                f"CONFIG 'serializer_format' 'json' is ignored: {IGNORED['serializer_format']}"))
    for key in config:
        if key in CALLBACKS and bridged:
            problems.append(Problem(
                "error", "shmchannels.E005",
                f"CONFIG {key!r} is not supported with 'hosts': the bridge reconnects to Redis by itself and calls "
                "nothing",
                "Remove it; the bridge logs its losses and recoveries of Redis on the 'shmchannels.bridge' logger."))
        elif key in IGNORED and key != "serializer_format":
            problems.append(Problem("warning", "shmchannels.W001", f"CONFIG {key!r} is ignored: {IGNORED[key]}"))
        elif key in BRIDGE_KEYS and not bridged and key in own:
            why = ("nothing leaves this host: the layer's segments in /dev/shm are mode 0600 and not encrypted"
                   if key == "symmetric_encryption_keys" else "it only configures the bridge between hosts")
            problems.append(Problem("warning", "shmchannels.W002", f"CONFIG {key!r} has no effect without 'hosts': {why}"))
    unknown = [k for k in config if k not in own and k not in IGNORED]
    if unknown:
        problems.append(Problem(
            "error", "shmchannels.E002", f"CONFIG has unknown key(s) {', '.join(map(repr, unknown))}",
            f"SharedMemoryChannelLayer takes {', '.join(own)} (and channels_redis's "
            f"{', '.join(sorted(IGNORED))}, which change nothing here)."))
    if check_values:
        problems += _value_problems(config)
    return problems


def _value_problems(config):
    """Build the layer's options (and the bridge's, with ``hosts``) from the
    base layer's keys only: a subclass's own keys are its business."""
    from shmchannels.options import LayerOptions

    fields = {f.name for f in dataclasses.fields(LayerOptions)}
    try:
        LayerOptions(**{k: v for k, v in config.items() if k in fields})
    except (TypeError, ValueError) as exc:
        return [Problem("error", "shmchannels.E004", f"CONFIG is invalid: {exc}")]
    if config.get("hosts") is None:
        return []
    from shmchannels.bridge.options import BridgeOptions

    try:
        BridgeOptions.build(config.get("prefix", "asgi"), config["hosts"],
                            **{k: config[k] for k in BRIDGE_KEYS if k in config})
    except (TypeError, ValueError) as exc:
        return [Problem("error", "shmchannels.E001", f"CONFIG's bridge between hosts is invalid: {exc}",
                        "'hosts' takes channels_redis's forms for one Redis server: "
                        "['redis://10.0.0.5:6379/0'], [('10.0.0.5', 6379)] or [{'address': ..., ...}].")]
    return []


def check_channel_layers(app_configs=None, **kwargs):
    """The Django system check (registered by ``shmchannels.apps``)."""
    from django.conf import settings
    from django.core import checks

    out = []
    for alias, entry in (getattr(settings, "CHANNEL_LAYERS", None) or {}).items():
        cls = _backend(entry.get("BACKEND")) if isinstance(entry, dict) else None
        if cls is None:
            continue
        config = entry.get("CONFIG") or {}
        if not isinstance(config, dict):
            out.append(checks.Error(f"CHANNEL_LAYERS[{alias!r}]['CONFIG'] must be a dict", id="shmchannels.E002"))
            continue
        for p in config_problems(config, cls.config_keys()):
            kind = checks.Error if p.level == "error" else checks.Warning
            out.append(kind(f"CHANNEL_LAYERS[{alias!r}]: {p.msg}", hint=p.hint, id=p.id))
    return out


def _backend(backend):
    """The backend class if it is this one (or a subclass: it has ``config_keys``), else None."""
    if not isinstance(backend, str) or "." not in backend:
        return None
    from django.utils.module_loading import import_string

    try:
        cls = import_string(backend)
    except ImportError:
        return None  # Channels reports its own backends that cannot be imported
    return cls if isinstance(cls, type) and callable(getattr(cls, "config_keys", None)) else None
