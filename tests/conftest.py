import glob
import itertools
import multiprocessing
import os

import pytest

from shmchannels import bus as bus_mod

_counter = itertools.count()


def bus_files_of(prefix):
    return sorted(glob.glob(f"/dev/shm/shmch-{os.getuid()}-{prefix}@*"))


def all_test_files():
    return sorted(glob.glob(f"/dev/shm/shmch-{os.getuid()}-t{os.getpid()}x*"))


@pytest.fixture
def prefix():
    """A bus prefix of this test alone; its files must be gone afterwards."""
    p = f"t{os.getpid()}x{next(_counter)}"
    yield p
    bus = bus_mod.attached(p)
    if bus is not None:
        bus.detach()
    leftover = bus_files_of(p)
    for f in leftover:
        os.unlink(f)
    assert not leftover, f"test left shared memory behind: {leftover}"


@pytest.fixture
def small_bus(prefix):
    """A Bus of its own (64 KiB rings) for unit tests of the parts built on it."""
    b = bus_mod.Bus(prefix, ring_size=1 << 16, collect_dead=False)
    yield b
    b.flush()  # pending records would keep the bus's files alive after the last detach
    b.detach()


@pytest.fixture(autouse=True)
def no_child_process_left_behind():
    """A test's forked children must be gone when it ends.

    A hung child would otherwise outlive the test and, at interpreter exit,
    multiprocessing joins every non-daemon child: the whole run would hang
    after its last test.  So leftovers are killed, and the test fails.
    """
    yield
    leftover = multiprocessing.active_children()
    for p in leftover:
        p.kill()
        p.join(10)
    assert not leftover, f"test left child processes running: {leftover}"


@pytest.fixture(scope="session", autouse=True)
def no_shared_memory_left_behind():
    yield
    bus_mod.detach_all()
    leftover = all_test_files()
    for f in leftover:
        os.unlink(f)
    assert not leftover, f"the test session left shared memory behind: {leftover}"


@pytest.fixture(scope="session")
def django_settings():
    """Django's settings, minimally configured if nothing configured them yet.

    Enough for ``channels.layers.channel_layers`` / ``get_channel_layer()``
    and consumers driven by ``channels.testing`` communicators; tests set
    ``CHANNEL_LAYERS`` themselves with ``django.test.override_settings``.
    """
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="shmchannels-tests",
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
            CHANNEL_LAYERS={},
        )
        django.setup()
    return settings
