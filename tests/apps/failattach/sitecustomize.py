"""On sys.path of a `shmchannels serve` under test (tests/runtime/test_serve.py): with
SHMCHANNELS_TEST_FAIL_CHILD_ATTACH set, children of the master fail to
attach the bus, as a child would on a bus it cannot open (a full /dev/shm,
a lock held by a stopped process): every child when the value is "1", and
while the file it names exists otherwise."""

import os

_when = os.environ.get("SHMCHANNELS_TEST_FAIL_CHILD_ATTACH")
if _when:
    from shmchannels import bus as _bus
    from shmchannels.exceptions import BusError

    _master = os.getpid()
    _attach = _bus.Bus.__init__

    def _failing_attach(self, *args, **kwargs):
        if os.getpid() != _master and (_when == "1" or os.path.exists(_when)):
            raise BusError("cannot attach the bus (refused on purpose by the test)")
        _attach(self, *args, **kwargs)

    _bus.Bus.__init__ = _failing_attach
