"""On sys.path of a `shmchannels serve` under test (tests/runtime/test_serve.py): with
SHMCHANNELS_TEST_FAIL_CHILD_ATTACH set, every child of the master fails to
attach the bus, as a child would on a bus it cannot open."""

import os

if os.environ.get("SHMCHANNELS_TEST_FAIL_CHILD_ATTACH"):
    from shmchannels import bus as _bus
    from shmchannels.exceptions import BusError

    _master = os.getpid()
    _attach = _bus.Bus.__init__

    def _failing_attach(self, *args, **kwargs):
        if os.getpid() != _master:
            raise BusError("cannot attach the bus (refused on purpose by the test)")
        _attach(self, *args, **kwargs)

    _bus.Bus.__init__ = _failing_attach
