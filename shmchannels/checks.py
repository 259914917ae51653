"""Django system checks for ``SharedMemoryChannelLayer``'s ``CONFIG``.

A project that switches ``BACKEND`` from channels_redis and keeps its
``CONFIG`` must hear about it from ``manage.py check`` (and every command
that runs the checks, ``runserver`` included), not from a 500 on the first
WebSocket: Channels builds the layer lazily.  With ``"shmchannels"`` in
``INSTALLED_APPS`` (``shmchannels.apps``), every ``CHANNEL_LAYERS`` entry on
this backend is checked here, and the layer's constructor applies the same
rules (``config_problems``), so the check and the runtime never disagree.

channels_redis's keys, one by one:

* ``hosts``: refused.  The Redis bridge between hosts (issue 13) is not
  built; one host needs no broker.
* ``symmetric_encryption_keys``: accepted and unused: nothing leaves the
  host; the segments in /dev/shm are mode 0600 and not encrypted.
* ``serializer_format``: ``"msgpack"`` (the default, and what the bus uses)
  or ``"json"`` are accepted and change nothing; anything else is refused.
* ``random_prefix_length``: accepted and unused (process-specific names are
  minted from the process's bus slot).
* ``on_disconnect`` / ``on_reconnect`` (RedisPubSubChannelLayer): accepted
  and never called: there is no connection to lose.
"""

#: channels_redis keys that are accepted and change nothing, and why
IGNORED = {
    "symmetric_encryption_keys": "nothing leaves this host: the layer's segments in /dev/shm are mode 0600 and "
                                 "not encrypted",
    "random_prefix_length": "process-specific channel names are minted from the process's bus slot",
    "on_disconnect": "there is no broker connection to lose, so it is never called",
    "on_reconnect": "there is no broker connection to lose, so it is never called",
    "serializer_format": "the bus encodes messages itself (msgpack)",
}
SERIALIZER_FORMATS = ("msgpack", "json")


class Problem:
    def __init__(self, level, id, msg, hint=None):
        self.level, self.id, self.msg, self.hint = level, id, msg, hint

    def __repr__(self):
        return f"<Problem {self.id} {self.msg!r}>"


def config_problems(config, own):
    """What is wrong with (or ignored in) a ``CONFIG`` for this backend
    (whose own keys are ``own``): ``Problem``s of level "error" or "warning"."""
    problems = []
    if "hosts" in config:
        problems.append(Problem(
            "error", "shmchannels.E001",
            "CONFIG 'hosts' is a channels_redis key: SharedMemoryChannelLayer has no broker, and its bridge "
            "between hosts over Redis is not available yet",
            "Remove 'hosts' to run on one host (every process with the same 'prefix' shares the layer), or keep "
            "channels_redis.core.RedisChannelLayer for several hosts."))
    fmt = config.get("serializer_format", "msgpack")
    if fmt not in SERIALIZER_FORMATS:
        problems.append(Problem("error", "shmchannels.E003",
                                f"CONFIG 'serializer_format' must be one of {SERIALIZER_FORMATS}, not {fmt!r}"))
    for key in config:
        if key in IGNORED and key != "serializer_format":
            problems.append(Problem("warning", "shmchannels.W001", f"CONFIG {key!r} is ignored: {IGNORED[key]}"))
    unknown = [k for k in config if k not in own and k not in IGNORED and k != "hosts"]
    if unknown:
        problems.append(Problem(
            "error", "shmchannels.E002", f"CONFIG has unknown key(s) {', '.join(map(repr, unknown))}",
            f"SharedMemoryChannelLayer takes {', '.join(own)} (and channels_redis's "
            f"{', '.join(sorted(IGNORED))}, which change nothing here)."))
    values = {k: v for k, v in config.items() if k in own}
    try:
        from shmchannels.options import LayerOptions

        LayerOptions(**values)
    except (TypeError, ValueError) as exc:
        problems.append(Problem("error", "shmchannels.E004", f"CONFIG is invalid: {exc}"))
    return problems


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
