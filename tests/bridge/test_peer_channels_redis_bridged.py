"""channels_redis 4.3's own tests/test_core.py with the bridge on: every
layer instance is a host of its own (its own bus and host id) on one real
Redis, and every named channel is cross-host, so a test's two instances
reach each other only through Redis, like two RedisChannelLayer instances.
The expected outcomes are those of the bridge-off run
(tests/layers/test_peer_channels_redis.py)."""

import pytest

from peer.common import PeerSetupError
from peer.run_channels_redis import run_suite
from layers.test_peer_channels_redis import EXPECTED_PASSED, EXPECTED_XFAIL_MARKED

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def suite(redis_server):
    try:
        result = run_suite(bridge_url=redis_server.url)
    except PeerSetupError as exc:
        pytest.fail(f"could not run channels_redis's test suite:\n{exc}", pytrace=False)
    print()
    print(result.summary())
    return result


def test_the_suite_passes_with_the_bridge_on(suite):
    bad = {n: o for n, o in suite.outcomes.items() if o["outcome"] in ("failed", "error")}
    assert not bad, "\n\n".join(f"{n}: {o['outcome']}\n{o['message']}" for n, o in bad.items()) + suite.output[-4000:]
    assert suite.names("passed") == EXPECTED_PASSED
    assert {n: suite.outcomes[n]["outcome"] for n in EXPECTED_XFAIL_MARKED} == EXPECTED_XFAIL_MARKED


def test_nothing_is_left_in_dev_shm(suite):
    assert suite.shm_left == []
