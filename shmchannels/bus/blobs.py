"""Blobs: a message too large for a ring rides in a file of its own.

A record larger than ``inline_max(ring_size)`` (256 KiB with the default
8 MiB rings) is written into a *blob*, a plain file in /dev/shm named by the
bus's scheme, and the ring record (flag ``BLOB``) carries only the blob's
name.  So ring use stays bounded whatever ``max_message_size`` is: a ring
never holds more than a 50-byte reference for a large message.

Name: ``@b<owner>.<deadline>.<seq>``

* ``owner`` (slot, generation: ``names.owner_tag``) is the sender;
* ``deadline`` is the message's expiry (CLOCK_MONOTONIC ns, hex), after
  which no receiver can take its record any more;
* the file's mode says who owns it: 0600 while the sender still owns it
  (written, records being put), 0400 once its records are published.

Life cycle.  The sender creates the file (``O_EXCL``), writes the message,
puts one record per destination (a group send hard-links one name per
destination ring to the same inode: the message is in /dev/shm once),
unlinks the names whose put failed and marks the blob published
(``fchmod`` 0400).  The receiver that takes a record opens the name and
unlinks it at once, then reads the message out of its descriptor; the kernel
frees the memory when the last name and descriptor are gone.

Reclaim (``sweep``, run by every attach, the serve master's janitor, a
dead-slot reclaim and, at most once a second, a sender of blobs):

* an unpublished blob whose owner is dead: its sender died before its
  records were all put; unlinked at once;
* any blob ``GRACE_NS`` past its deadline: its record expired or was purged
  unread, or its receiver died between taking the record and unlinking the
  name (a live receiver unlinks within microseconds of its take, which is
  before the deadline).

No lock is taken anywhere: each name has one reference, taken by exactly one
ring record or one sender, and ``unlink`` is atomic.
"""

import errno
import itertools
import logging
import mmap
import os
import stat
import re

from shmchannels.bus import _shm, segments
from shmchannels.exceptions import BusError, ChannelFull

logger = logging.getLogger("shmchannels.bus")

#: record flag: the body is a blob's name; the blob holds the msgpack message
BLOB = 2
#: largest record kept in the ring itself (further bounded by ring_size / 16)
INLINE_MAX = 256 << 10
#: a blob is garbage this long after its deadline, whoever holds it
GRACE_NS = 10_000_000_000
_PUBLISHED = 0o400
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)

PATTERN = re.compile(r"b([0-9a-f]{10})\.([0-9a-f]{16})\.([0-9a-f]{1,16})")

#: tests: ``_fault(point)`` is called at "written" (sender: blob written, no
#: record put), "put" (sender: records put, blob not yet published) and
#: "taken" (receiver: record taken, name not yet unlinked)
_fault = None

_seq = itertools.count(1)


def inline_max(ring_size):
    """Largest record body kept in a ring of ``ring_size`` bytes."""
    return min(INLINE_MAX, ring_size // 16)


def _no_room(where, size, exc):
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.ENOMEM):
        return ChannelFull(f"{where}: no memory left in /dev/shm for a {size} byte message (free space there)")
    return BusError(f"{where}: cannot write a {size} byte message to /dev/shm: {exc}")


class Blob:
    """The sender's handle on one blob while its records are being put."""

    __slots__ = ("stem", "owner", "deadline", "fd", "base", "_names", "_sent")

    def __init__(self, stem, owner, deadline_ns, body, where):
        self.stem, self.owner, self.deadline = stem, owner, deadline_ns
        self._sent = set()
        while True:
            self.base = self._suffix()
            self._names = [self.base]
            try:
                self.fd = os.open(self._path(self.base), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                break
            except FileExistsError:  # left by an earlier process of our slot generation: next number
                continue
            except OSError as exc:
                raise _no_room(where, len(body), exc) from None
        try:
            view = memoryview(body)
            done = 0
            while done < len(view):
                done += os.write(self.fd, view[done:])
        except OSError as exc:
            self.discard()
            raise _no_room(where, len(body), exc) from None
        if _fault:
            _fault("written")

    def _suffix(self):
        return f"b{self.owner}.{self.deadline:016x}.{next(_seq):x}"

    def _path(self, suffix):
        return segments.path(segments.file_name(self.stem, suffix))

    def refs(self, n):
        """``n`` names of this blob, one per record about to be put (the
        first is the file's own; the others are hard links to it).  All are
        made before any record is put: a receiver may unlink its name as soon
        as its record is in a ring."""
        made = [self.base]
        while len(made) < n:
            suffix = self._suffix()
            try:
                os.link(self._path(self.base), self._path(suffix))
            except FileExistsError:
                continue
            made.append(suffix)
        self._names = made
        return [m.encode("ascii") for m in made]

    def sent(self, ref):
        """The record naming ``ref`` is in its ring: that name is the record's now."""
        self._sent.add(ref.decode("ascii"))

    def publish(self):
        """Hand the blob to its records: unlink the names no record took,
        mark it published."""
        if _fault:
            _fault("put")
        for suffix in self._names:
            if suffix not in self._sent:
                segments.unlink(segments.file_name(self.stem, suffix))
        if self._sent:
            os.fchmod(self.fd, _PUBLISHED)
        os.close(self.fd)
        self.fd = -1

    def discard(self):
        for suffix in self._names:
            segments.unlink(segments.file_name(self.stem, suffix))
        os.close(self.fd)
        self.fd = -1


def take(stem, ref):
    """The message of the blob ``ref`` names (a read-only buffer: an mmap),
    which is unlinked at once; None if it is gone (reclaimed after its
    deadline)."""
    if _fault:
        _fault("taken")
    try:
        suffix = ref.decode("ascii")
    except UnicodeDecodeError:
        suffix = ""
    if not PATTERN.fullmatch(suffix):
        logger.error("a ring record names %r, which is not a blob of bus %s: dropped", ref[:80], stem)
        return None
    path = segments.path(segments.file_name(stem, suffix))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        logger.warning("blob %s of bus %s is gone (past its deadline): its message is lost", suffix, stem)
        return None
    try:
        segments.unlink(segments.file_name(stem, suffix))
        size = os.fstat(fd).st_size
        if not size:
            return b""
        # Mapped with its pages populated, the message is copied once, by the
        # decoder (a read() into bytes and then the decoder copy twice: 16
        # MiB measured 3.1 ms against 17.6 ms).  The mapping lives as long
        # as the returned object.
        return mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def sweep(stem, is_alive, now=None):
    """Unlink the bus's garbage blobs (see the module's rules); returns how many."""
    now = _shm.monotonic_ns() if now is None else now
    removed = 0
    for base, _, m in segments.files_of_kind(stem, "blob"):
        tag, deadline = m.group(1), int(m.group(2), 16)
        if now <= deadline + GRACE_NS:
            try:
                mode = os.stat(segments.path(base)).st_mode
            except FileNotFoundError:
                continue
            if stat.S_IMODE(mode) == _PUBLISHED or is_alive(int(tag[:3], 16), int(tag[3:], 16)):
                continue
        segments.unlink(base)
        removed += 1
    if removed:
        logger.info("unlinked %d unreferenced blob(s) of bus %s", removed, stem)
    return removed
