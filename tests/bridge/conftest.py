"""Fixtures of the bridge tests; the helpers are in bridge_hosts.py."""

import os
import shutil

import pytest

from shmchannels import bus as bus_mod
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


@pytest.fixture
def config(prefix, hosts, namespace):
    def make(host, suffix="", **extra):
        extra.setdefault("host_lease", 3)
        return dict(prefix=prefix + suffix, hosts=hosts, host=host, redis_prefix=namespace, **extra)
    return make


@pytest.fixture
def other_buses(prefix):
    """Bus prefixes this test's own process attaches besides ``prefix`` (an
    in-process host B) or that a killed host left behind: flushed and
    detached (their files gone) at the end, after the hosts started later
    (``start_host`` after this in a test's arguments) have closed."""
    extra = []
    yield extra
    for p in extra:
        bus = bus_mod.attached(p) or bus_mod.attach(p)  # attaching collects a killed host's slots
        bus.flush()
        bus.detach()
        assert not [f for f in os.listdir("/dev/shm") if f.startswith(f"shmch-{os.getuid()}-{p}@")]
