"""conftest.py for channels_redis's published ``tests/test_core.py``, run against shmchannels.

This file is ours (a template kept in shmchannels' repository); the runner
``tests/peer/run_channels_redis.py`` copies it as ``conftest.py`` next to the
``test_core.py`` it extracts from the channels_redis sdist.

It rebinds ``channels_redis.core.RedisChannelLayer`` (and the name the test
module imported) to a thin subclass of ``SharedMemoryChannelLayer`` that
accepts and ignores the Redis-only arguments.  Every layer built during the
run gets the same bus prefix (``$SHMCH_PEER_PREFIX``), so two instances in one
test share one bus as two ``RedisChannelLayer`` instances share one Redis
server, and the fixture's ``flush()`` clears what the test's own instances
left, as it does on Redis.

It also records every test's exact outcome (JUnit XML cannot tell a
non-strict xpass from a pass) and the deselected tests into the JSON file
named by ``$SHMCH_PEER_REPORT``.
"""

import itertools
import json
import os

import channels_redis.core
import pytest

from shmchannels.layers import SharedMemoryChannelLayer

PREFIX = os.environ["SHMCH_PEER_PREFIX"]
REPORT = os.environ.get("SHMCH_PEER_REPORT")
#: a Redis URL: run with the bridge on, every layer instance a host of its
#: own (bus ``PREFIX + "i<n>"``, host id ``h<n>``) on one Redis namespace,
#: and every named channel cross-host, so two instances of a test talk only
#: through Redis, as two RedisChannelLayer instances do
BRIDGE = os.environ.get("SHMCH_PEER_BRIDGE")
_instances = itertools.count()


class RedisCompatibleSharedMemoryChannelLayer(SharedMemoryChannelLayer):
    """``RedisChannelLayer``'s signature over the shared-memory bus.

    ``hosts``, ``symmetric_encryption_keys``, ``random_prefix_length`` and
    ``serializer_format`` configure Redis connections and channels_redis's
    own wire format; they have no meaning here and are ignored.  ``prefix``
    is replaced by the run's unique bus prefix (kept as ``requested_prefix``).
    Anything else goes to ``SharedMemoryChannelLayer`` unchanged, so an
    argument neither layer knows still raises TypeError.
    """

    def __init__(
        self,
        hosts=None,
        prefix="asgi",
        expiry=60,
        group_expiry=86400,
        capacity=100,
        channel_capacity=None,
        symmetric_encryption_keys=None,
        random_prefix_length=12,
        serializer_format="msgpack",
        **kwargs,
    ):
        self.requested_prefix = prefix
        bus_prefix = PREFIX
        if BRIDGE:
            n = next(_instances)
            bus_prefix = f"{PREFIX}i{n}"
            kwargs.update(hosts=[BRIDGE], host=f"h{n}", redis_prefix=f"shmch-peer:{PREFIX}",
                          cross_host_channels=["*"], symmetric_encryption_keys=symmetric_encryption_keys)
        super().__init__(
            prefix=bus_prefix,
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
            **kwargs,
        )


channels_redis.core.RedisChannelLayer = RedisCompatibleSharedMemoryChannelLayer


def pytest_collection_modifyitems(session, config, items):
    # test_core.py did ``from channels_redis.core import RedisChannelLayer``
    # after this module ran, so it already holds our class; make sure of it.
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and hasattr(module, "RedisChannelLayer"):
            module.RedisChannelLayer = RedisCompatibleSharedMemoryChannelLayer


_REPORT = {"prefix": PREFIX, "outcomes": {}, "deselected": []}


def pytest_deselected(items):
    _REPORT["deselected"] += [item.name for item in items]


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    # Fold the setup, call and teardown reports of one test into one outcome.
    name = report.nodeid.split("::", 1)[-1]
    entry = _REPORT["outcomes"].setdefault(name, {"outcome": None, "message": "", "xfail_reason": "", "duration": 0.0})
    entry["duration"] += report.duration
    wasxfail = hasattr(report, "wasxfail")
    if report.when == "call":
        outcome = ("xpassed" if report.passed else "xfailed") if wasxfail else report.outcome
    elif report.failed:
        outcome = "error"
    elif report.skipped:
        outcome = "xfailed" if wasxfail else "skipped"
    else:
        return  # a passing setup or teardown changes nothing
    if entry["outcome"] in ("failed", "error"):
        return  # keep the first hard failure
    entry["outcome"] = outcome
    if wasxfail:
        entry["xfail_reason"] = " ".join(report.wasxfail.removeprefix("reason: ").split())
    if report.failed or report.skipped:
        entry["message"] = str(report.longrepr)[-3000:] if report.longrepr else ""


def pytest_sessionfinish(session, exitstatus):
    cls = channels_redis.core.RedisChannelLayer
    _REPORT["layer_class"] = f"{cls.__module__}.{cls.__qualname__}"
    _REPORT["layer_mro"] = [f"{c.__module__}.{c.__qualname__}" for c in cls.__mro__]
    _REPORT["exitstatus"] = int(exitstatus)
    if REPORT:
        with open(REPORT, "w") as fh:
            json.dump(_REPORT, fh, indent=1, sort_keys=True)
