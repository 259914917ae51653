"""Names and life cycle of the files that make up one bus in /dev/shm.

Every file of a bus starts with ``shmch-<uid>-<prefix>@`` so that two users,
or two prefixes, never collide and one glob finds everything to clean up
(``@`` cannot occur in a prefix, so bus ``a`` never matches bus ``a.b``)::

    @ctl                 control segment: header, process slots, group versions
    @lock                liveness locks: byte i is held by the process in slot i
    @reg, @reg-wal/-shm  group registry (SQLite, WAL)
    @r<hash>             ring of a named channel (or an unowned ``prefix!``)
    @o<owner>.<hash>     ring of a ``prefix!`` minted by the process <owner>
    @w<slot>             wake FIFO of slot <slot>
    @tmp.*               a segment being initialised (see ``create_published``)

Segments are POSIX shared memory created through posix_ipc with mode 0600.
A new segment is built under a temporary name and published with link(2),
which fails if another process published first; so an opener never sees a
half-initialised segment, and no lock is needed to create one.
"""

import errno
import glob
import hashlib
import mmap
import os
import secrets

import posix_ipc

from .exceptions import BusError

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


def file_name(stem, suffix):
    return f"{stem}@{suffix}"


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
    if shm.size == 0:  # pragma: no cover - only a foreign file could be empty
        shm.close_fd()
        return None
    return _map(shm)


def create_published(stem, suffix, size, initialise):
    """Return (mapping, created): the segment ``stem@suffix``, creating it if absent.

    ``initialise(mapping)`` runs on a private temporary segment; the
    segment is then linked under ``name``.  If another process won the race
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
        mapping = _map(shm)
        initialise(mapping)
        try:
            os.link(path(tmp), path(name))
            created = True
        except FileExistsError:
            mapping.close()
            mapping = open_existing(name)
            if mapping is None:  # published and removed again in between
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


def make_fifo(name):
    p = path(name)
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
