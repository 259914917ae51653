"""Which process of a host is its bridge, and what identifies the host.

**Election.**  Every process with a bridged layer keeps a thread blocked in
``flock(LOCK_EX)`` on ``/dev/shm/shmch-<uid>-<prefix>.bridge``; the one
that holds it is the host's bridge.  The kernel releases the lock however
the holder dies, and the next waiter takes over at once, so uvicorn or
daphne processes with no master elect among themselves.  An flock is
taken once per process life, never on the message path.  A holder that
leaves cleanly unlinks the name while it still holds the lock; a waiter that
then gets the lock of the unlinked inode sees that the name now points
elsewhere (or nowhere) and starts over.  The name has no ``@``, so it is no
file of any bus (``bus/segments.py``).

**Host token.**  Two hosts claiming the same identity in Redis are told
apart by a token that every process of one host's bus computes alike and no
other can: the kernel's boot id, the device of /dev/shm (a container or a
test "host" with a private /dev/shm has its own), the uid and the bus
prefix (two buses of one host under one identity would share an inbox).  So a
restarted process, or a new bridge after failover, renews its host's claim
instead of conflicting with it.
"""

import fcntl
import hashlib
import os
import threading
import weakref

SHM_DIR = "/dev/shm"
_elections = weakref.WeakSet()


def _after_fork_in_child():
    for election in list(_elections):
        election.forget_inherited()


os.register_at_fork(after_in_child=_after_fork_in_child)


def host_token(prefix):
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "no-boot-id"
    shm = os.stat(SHM_DIR)
    return hashlib.sha256(f"{boot}:{shm.st_dev}:{os.getuid()}:{prefix}".encode()).hexdigest()[:20]


def lock_path(prefix):
    return os.path.join(SHM_DIR, f"shmch-{os.getuid()}-{prefix}.bridge")


class Election:
    """Wait (on a daemon thread) to become the host's bridge; then call ``on_elected()`` once."""

    def __init__(self, prefix, on_elected):
        self.path = lock_path(prefix)
        self.on_elected = on_elected
        self.elected = False
        self._fd = None
        self._resigned = False
        self._pid = os.getpid()
        _elections.add(self)
        threading.Thread(target=self._wait, name="shmchannels-bridge-election", daemon=True).start()

    def _wait(self):
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._fd = fd
            fcntl.flock(fd, fcntl.LOCK_EX)  # until the holder lets go or dies
            if self._pid != os.getpid():
                return
            if self._resigned:
                self._fd = None
                os.close(fd)
                return
            held = os.fstat(fd)
            try:
                named = os.stat(self.path)
            except FileNotFoundError:
                named = None
            if named is not None and (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino):
                break
            self._fd = None
            os.close(fd)  # the last holder unlinked it as it left: start over
        self.elected = True
        self.on_elected()

    def resign(self):
        """Leave the role (this process is going): unlink the name while holding it, then release it."""
        self._resigned = True
        if not self.elected or self._pid != os.getpid():
            return  # a waiter: its thread closes its descriptor if it ever gets the lock
        fd, self._fd = self._fd, None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.elected = False
        os.close(fd)

    def forget_inherited(self):
        """In a forked child: drop the parent's descriptor (the parent keeps its lock)."""
        fd, self._fd = self._fd, None
        self.elected = False
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
