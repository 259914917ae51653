"""Errors of the bridge between hosts."""


class BridgeUnavailable(ConnectionError):
    """Redis cannot be reached: a cross-host send was not made.

    Local traffic is not affected.  The bridge reconnects by itself; a send
    made after Redis is back succeeds."""


class HostIdConflict(RuntimeError):
    """Another live host claims this host's identity (``host``) on the same Redis and prefix."""
