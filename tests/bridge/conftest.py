"""Fixtures of the bridge tests; the helpers are in bridge_hosts.py."""

import shutil

import pytest

from bridge_hosts import REDIS_SERVER, Host, RedisServer


@pytest.fixture(scope="session")
def redis_server():
    if REDIS_SERVER is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server; .ci/run does it)", pytrace=False)
    server = RedisServer().start()
    yield server
    server.stop()
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def namespace(prefix):
    """A Redis key prefix of this test alone."""
    return f"shmch-test:{prefix}"


@pytest.fixture
def hosts(redis_server):
    return [redis_server.url]


@pytest.fixture
def start_host():
    """start_host(config, namespace_hostname=None, join=None) -> a started Host; all closed at the end."""
    started = []

    def start(config, namespace_hostname=None, join=None):
        host = Host(config, namespace_hostname, join)
        started.append(host)
        return host

    yield start
    for host in started:
        host.close()
