"""The bridge between hosts: shared memory inside each host, Redis between them.

With ``hosts`` in a layer's configuration, every host that uses the same
``prefix`` and Redis forms one layer (docs/architecture.md, "Between
hosts").  Without it nothing here is imported, and no Redis client either.

Modules, one job each:

* ``options``: ``BridgeOptions``, the validated bridge settings (channels_redis's
  ``hosts`` forms, the host identity); imports no Redis.
* ``errors``: ``BridgeUnavailable``, ``HostIdConflict``.
* ``wire``: what crosses Redis (an envelope, optionally Fernet-encrypted).
* ``scripts``: the Redis keys and the Lua scripts run on them.
* ``link``: this process's Redis connections on an I/O thread of their own
  (an ordered outbox, blocking reads, reconnecting by itself).
* ``election``: which process of the host is its bridge (an ``flock``).
* ``inbox``: the elected bridge: pulls the host's inbox into local rings,
  keeps the host's claim and group memberships alive in Redis.
* ``bridge``: ``Bridge``, what a layer calls: where a channel lives, and
  send / group_send / group_add / receive across hosts.
"""

from shmchannels.bridge.errors import BridgeUnavailable, HostIdConflict
from shmchannels.bridge.options import BridgeOptions

__all__ = ["BridgeOptions", "BridgeUnavailable", "HostIdConflict"]
