"""The bridge between real hosts: each host is its own mount and UTS
namespace (``unshare --mount --uts``) with a private tmpfs on /dev/shm and
its own hostname, which is its default host identity.  Every host uses the
same prefix and reaches one redis-server on 127.0.0.1."""

import time

import pytest

from bridge_hosts import AgentError, namespaces_work

pytestmark = pytest.mark.skipif(not namespaces_work(), reason="needs root for unshare --mount --uts (CI runs as root)")

PREFIX = "nsbridge"


@pytest.fixture
def config(hosts, namespace):
    def make(**extra):
        return dict(prefix=PREFIX, hosts=hosts, redis_prefix=namespace, **extra)
    return make


def test_two_hosts_share_channels_and_groups(config, start_host):
    a1 = start_host(config(), namespace_hostname="host-a")
    a2 = start_host(config(), join=a1)  # a second process of host-a
    b = start_host(config(), namespace_hostname="host-b")
    assert a1.call("hostname") == a2.call("hostname") == "host-a" and b.call("hostname") == "host-b"
    assert sorted([a1.call("bridge"), a2.call("bridge")]) == [False, True]  # one bridge per host
    on_a1, on_a2, on_b = a1.call("new_channel"), a2.call("new_channel"), b.call("new_channel")
    assert ".at-host-a." in on_a1 and ".at-host-b." in on_b
    # one process to another on the same host: the bus; across hosts: the bridge
    a1.call("send", on_a2, {"type": "local"})
    assert a2.call("receive", on_a2, 10) == {"type": "local"}
    b.call("send", on_a1, {"type": "from b"})
    assert a1.call("receive", on_a1, 10) == {"type": "from b"}
    a2.call("send", on_b, {"type": "from a2"})
    assert b.call("receive", on_b, 10) == {"type": "from a2"}
    for host, channel in ((a1, on_a1), (a2, on_a2), (b, on_b)):
        host.call("group_add", "chat", channel)
    b.call("group_send", "chat", {"type": "chat.message", "text": "hi all"})
    for host, channel in ((a1, on_a1), (a2, on_a2), (b, on_b)):
        assert host.call("receive", channel, 10) == {"type": "chat.message", "text": "hi all"}


def test_a_killed_hosts_memberships_expire_and_senders_never_block(config, start_host, redis_server, namespace):
    a = start_host(config(host_lease=2), namespace_hostname="host-a")
    b1 = start_host(config(host_lease=2), namespace_hostname="host-b")
    b2 = start_host(config(host_lease=2), join=b1)
    on_a, on_b1, on_b2 = a.call("new_channel"), b1.call("new_channel"), b2.call("new_channel")
    for host, channel in ((a, on_a), (b1, on_b1), (b2, on_b2)):
        host.call("group_add", "room", channel)
    assert redis_server.command("ZSCORE", f"{namespace}:group:room", "host-b") is not None
    b1.kill()
    b2.kill()  # every process of host-b: power off
    deadline = time.monotonic() + 10
    while redis_server.command("ZRANGEBYSCORE", f"{namespace}:group:room", int(time.time() * 1000) - 2000, "+inf") \
            != [b"host-a"]:
        assert time.monotonic() < deadline, ("host-b outlived its lease", redis_server.command("ZRANGE", f"{namespace}:group:room", 0, -1, "WITHSCORES"), redis_server.command("TIME"), int(time.time() * 1000))
        time.sleep(0.2)
    before = redis_server.command("LLEN", f"{namespace}:inbox:host-b")
    a.call("group_send", "room", {"type": "after"})
    assert a.call("receive", on_a, 10) == {"type": "after"}
    a.call("send", on_b1, {"type": "to the dead"})  # dropped quietly, as for a dead owner
    assert redis_server.command("LLEN", f"{namespace}:inbox:host-b") == before


def test_two_live_hosts_with_one_hostname_is_an_error(config, start_host):
    start_host(config(), namespace_hostname="twin")
    with pytest.raises(AgentError, match="HostIdConflict: host identity 'twin' is already claimed"):
        second = start_host(config(), namespace_hostname="twin")
        if "error" in second.started:
            raise AgentError(second.started["error"])
