"""Finding and removing buses that no live process uses.

A bus is *dead* when no process holds a slot lock or the bus lock in its
lock file: its last processes were killed, so nobody ran the last-out
clean-up.  Collecting it means doing what that last process would have done:
attach (which reclaims every dead slot and drops expired messages), then
detach as the last one out, which removes every file unless something is
still worth keeping (an unexpired message, a membership of a named channel).

The first attach of every process collects the dead buses of its user, and
``shmchannels gc`` does it on demand.  Both use this one path, which is the
same attach/detach protocol every process follows, under each bus's own
lock; so collecting a bus that comes back to life meanwhile is harmless.
"""

import dataclasses
import fcntl
import logging
import os
import struct

from shmchannels.bus import _shm, segments
from shmchannels import names
from shmchannels.bus.control import BUS_LOCK_BYTE
from shmchannels.exceptions import BusError

logger = logging.getLogger("shmchannels.gc")

_FLOCK = struct.Struct("hhqqi4x")


@dataclasses.dataclass
class BusReport:
    prefix: str
    files: int
    bytes: int
    live_pid: int = 0
    removed: bool = False
    kept_because: str = ""


def _stem_prefix(stem, uid):
    return stem[len(f"shmch-{uid}-"):]


def holder(stem):
    """A pid holding any slot lock (or the bus lock) of bus ``stem``; 0 if none."""
    try:
        fd = os.open(segments.path(segments.file_name(stem, "lock")), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0
    try:
        for start, length in ((0, _shm.MAX_SLOTS), (BUS_LOCK_BYTE, 1)):
            probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
            kind, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, probe))
            if kind != fcntl.F_UNLCK:
                return pid
        return 0
    finally:
        os.close(fd)


def survey(uid=None, exclude=()):
    """A BusReport for every bus of user ``uid`` (default: ours)."""
    uid = os.getuid() if uid is None else uid
    reports = []
    for stem in segments.all_bus_stems(uid):
        prefix = _stem_prefix(stem, uid)
        if prefix in exclude:
            continue
        files = segments.bus_files(stem)
        size = 0
        for p in files:
            try:
                size += os.stat(p).st_blocks * 512
            except FileNotFoundError:
                pass
        reports.append(BusReport(prefix, len(files), size, live_pid=holder(stem)))
    return reports


def collect(open_bus, dry_run=True, uid=None, exclude=()):
    """Survey the user's buses and remove the dead ones (unless ``dry_run``).

    ``open_bus`` is ``bus.Bus``: attaching reclaims every dead slot and
    detaching as the last one out removes the files (passed in so that this
    module, which ``Bus`` uses at attach, does not import it back)."""
    reports = survey(uid, exclude)
    for report in reports:
        if report.live_pid or dry_run:
            continue
        try:
            names.require_prefix(report.prefix)
        except TypeError:
            report.kept_because = "not a shmchannels prefix"
            continue
        stem = segments.bus_stem(report.prefix)
        try:
            bus = open_bus(report.prefix, kind="cli", label="shmchannels gc", collect_dead=False)
        except BusError as exc:
            report.kept_because = str(exc)
            continue
        bus.detach()
        left = segments.bus_files(stem)
        report.removed = not left
        if left:
            report.kept_because = "it holds unexpired messages or memberships of named channels"
        else:
            logger.info("removed dead bus %r (%d files)", report.prefix, report.files)
    return reports
