"""Names and life cycle of the files that make up one bus in /dev/shm.

Every file of a bus starts with ``shmch-<uid>-<prefix>@`` so that two users,
or two prefixes, never collide and one glob finds everything to clean up
(``@`` cannot occur in a prefix, so bus ``a`` never matches bus ``a.b``)::

    @ctl                 control segment: header, process slots, group versions
    @lock                liveness locks: byte i is held by the process in slot i
    @g<epoch>, -wal/-shm group registry (SQLite, WAL) of registry epoch <epoch>
    @r<hash>             ring of a named channel (or an unowned ``prefix!``)
    @o<owner>.<hash>     ring of a ``prefix!`` minted by the process <owner>
    @w<slot>             wake FIFO of slot <slot>
    @s<owner>            statistics of the process <owner> (``stats.py``)
    @b<owner>.<deadline>.<n>  a message too large for a ring, sent by <owner> (``blobs.py``)
    @tmp.*               a segment being initialised (see ``create_published``)

Only ``classify`` decides what a file is, with exact patterns.  Code that
walks a bus's files looking for rings must never open anything else: opening
and closing a descriptor of SQLite's ``-shm`` file drops every POSIX lock the
process holds on it, which once let another process "recover" a live WAL
index under a live reader (SIGBUS in SQLite, lost memberships, a malformed
database).

A sparse segment on a full /dev/shm kills its writer with SIGBUS on the
first touch of a new page.  So every segment's first page is allocated when
it is created (``posix_fallocate``), and the rest either then too (control
segment; rings on kernels before 5.14) or by the C ring as it first writes
there (``MADV_POPULATE_WRITE``, which fails with an error instead): running
out of space is ``BusError`` at create time or ``ChannelFull`` at a send.

Segments are POSIX shared memory created through posix_ipc with mode 0600.
A new segment is built under a temporary name and published with link(2),
which fails if another process published first; so an opener never sees a
half-initialised segment, and no lock is needed to create one.
"""

import errno
import glob
import re
import hashlib
import mmap
import os
import secrets

import posix_ipc

from shmchannels.exceptions import BusError

SHM_DIR = "/dev/shm"


def bus_stem(prefix, uid=None):
    return f"shmch-{os.getuid() if uid is None else uid}-{prefix}"


def ring_hash(key):
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8).hexdigest()


def ring_id(key):
    return int(ring_hash(key), 16)


def path(name):
    return os.path.join(SHM_DIR, name)


def bus_files(stem):
    """Every file of the bus named by ``stem`` that exists now."""
    return sorted(glob.glob(path(glob.escape(stem) + "@*")))


_KINDS = [
    ("ring", re.compile(r"r([0-9a-f]{16})")),
    ("owned", re.compile(r"o([0-9a-f]{10})\.([0-9a-f]{16})")),
    ("fifo", re.compile(r"w([0-9a-f]{3})")),
    ("stats", re.compile(r"s([0-9a-f]{10})")),
    ("registry", re.compile(r"g([0-9a-f]{1,16})(?:-wal|-shm|-journal)?")),
    ("control", re.compile(r"ctl")),
    ("lock", re.compile(r"lock")),
    ("tmp", re.compile(r"tmp\.(\d+)\.[0-9a-f]+")),
    ("blob", re.compile(r"b([0-9a-f]{10})\.([0-9a-f]{16})\.([0-9a-f]{1,16})")),  # blobs.PATTERN
]


def classify(stem, name):
    """(kind, match) of the file ``name`` (a base name) of bus ``stem``; kind
    is None for a file this version does not know (left alone)."""
    suffix = name[len(stem) + 1 :] if name.startswith(stem + "@") else None
    if suffix is not None:
        for kind, pattern in _KINDS:
            m = pattern.fullmatch(suffix)
            if m:
                return kind, m
    return None, None


def files_of_kind(stem, *kinds):
    """[(base name, kind, match)] of the bus's files of the given kinds."""
    found = []
    for p in bus_files(stem):
        base = os.path.basename(p)
        kind, m = classify(stem, base)
        if kind in kinds:
            found.append((base, kind, m))
    return found


def registry_name(stem, epoch):
    return file_name(stem, f"g{epoch:x}")


def all_bus_stems(uid=None):
    """The stems of every bus of user ``uid`` that has files now."""
    lead = f"shmch-{os.getuid() if uid is None else uid}-"
    stems = set()
    for p in glob.glob(path(glob.escape(lead) + "*@*")):
        stems.add(os.path.basename(p).split("@", 1)[0])
    return sorted(stems)


def file_name(stem, suffix):
    return f"{stem}@{suffix}"


class DamagedSegment(BusError):
    """A published segment is not what its name says (truncated, empty)."""


def _map(shm):
    try:
        return mmap.mmap(shm.fd, shm.size)
    finally:
        shm.close_fd()


def open_existing(name):
    """Map an existing segment; None if it does not exist."""
    try:
        shm = posix_ipc.SharedMemory("/" + name)
    except posix_ipc.ExistentialError:
        return None
    if shm.size == 0:  # a truncated segment: callers treat it as damaged
        shm.close_fd()
        return None
    return _map(shm)


def create_published(stem, suffix, size, initialise, allocate=True):
    """Return (mapping, created): the segment ``stem@suffix``, creating it if absent.

    ``initialise(mapping)`` runs on a private temporary segment; the
    segment is then linked under ``name``.  With ``allocate`` its memory is
    reserved first, so that a full /dev/shm is an error here rather than a
    SIGBUS later; rings pass False where the C core populates their pages
    as they are first written (``_shm.LAZY_POPULATE``).  If another process won the race
    its segment is returned instead and ours is discarded.
    """
    name = file_name(stem, suffix)
    existing = open_existing(name)
    if existing is not None:
        return existing, False
    tmp = file_name(stem, f"tmp.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        shm = posix_ipc.SharedMemory("/" + tmp, posix_ipc.O_CREX, mode=0o600, size=size)
    except OSError as exc:  # ENOSPC on a small /dev/shm, EMFILE ...
        raise BusError(f"cannot create shared memory segment {tmp!r} of {size} bytes: {exc}") from exc
    try:
        try:
            os.posix_fallocate(shm.fd, 0, size if allocate else min(size, mmap.PAGESIZE))
        except OSError as exc:
            shm.close_fd()
            raise BusError(
                f"no room in {SHM_DIR} for a {size >> 10} KiB segment of bus {stem.split('-', 2)[-1]!r} "
                f"({exc.strerror}): free space there, lower ring_size, or stop idle processes"
            ) from None
        mapping = _map(shm)
        initialise(mapping)
        try:
            os.link(path(tmp), path(name))
            created = True
        except FileExistsError:
            mapping.close()
            mapping = open_existing(name)
            if mapping is None:
                if os.path.exists(path(name)):  # there, but empty: truncated
                    raise DamagedSegment(f"segment {name!r} is empty") from None
                raise BusError(f"segment {name!r} vanished while being opened; retry") from None
            created = False
        return mapping, created
    finally:
        unlink(tmp)


def unlink(name):
    try:
        os.unlink(path(name))
    except FileNotFoundError:
        pass


def make_fifo(name, fresh=False):
    """Create the FIFO ``name``; with ``fresh``, replace one left behind."""
    p = path(name)
    if fresh:
        unlink(name)
    try:
        os.mkfifo(p, 0o600)
    except FileExistsError:
        pass
    return p


def open_lock_file(stem):
    fd = os.open(path(file_name(stem, "lock")), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    st = os.fstat(fd)
    if st.st_uid != os.getuid():  # pragma: no cover - needs a second user
        os.close(fd)
        raise BusError(f"{path(file_name(stem, 'lock'))} belongs to uid {st.st_uid}, not to us")
    return fd


def is_missing_error(exc):
    return isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ENXIO)
