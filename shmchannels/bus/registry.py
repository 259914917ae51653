"""The per-host group registry.

Memberships live in an SQLite database in /dev/shm (WAL mode); a version
counter per hash bucket of group names lives in the control segment.
``group_send`` reads one counter (one shared-memory load) and, while it is
unchanged and no member can have expired, reuses its cached member list: the
database is read only after a change.  Writers (``group_add`` and friends)
are rare and serialise on SQLite's own locks, which are fcntl locks the
kernel releases when a writer dies; a writer killed mid-transaction is rolled
back by WAL recovery in the next connection.  Readers never wait for writers.

A writer that has stopped (SIGSTOP, a debugger) holds the lock until it goes
on or dies.  Sync callers wait for it up to SQLite's busy timeout (30 s,
then BusError).  An event loop must not: its writes pass ``until=NOW`` (one
try that waits a few ms at most, else ``Locked`` with nothing written) and
finish off the loop with ``until=<deadline>`` (short tries, the fork lock let
go between them, so this process's readers keep going meanwhile;
``engine.groups.registry_write``).

The cached list is already grouped by ring, so a group send writes one record
per destination ring (one per receiving process for process-specific
members), and the receiver fans it out locally.

Damage.  The database is rebuilt, never left broken: a process that finds
it unreadable (``database disk image is malformed``, a missing table) takes
the bus lock, copies every row it can still read into a fresh database under
the next *registry epoch* (a new file name, ``g<epoch>``), bumps the epoch in
the control segment and unlinks the old files.  No file SQLite has open is
ever truncated or re-created under it: old connections keep their (unlinked)
inode until their process sees the new epoch, at its next registry call, and
re-opens.  Every process then re-adds the memberships it wrote itself, so
whatever the damaged file lost is restored by the live processes that made it.

The decision and its measurements are in docs/decisions.md.
"""

import logging
import os
import sqlite3
import threading
import time
import zlib

from shmchannels import names
from shmchannels.bus import segments
from shmchannels.exceptions import BusError, ChannelFull

logger = logging.getLogger("shmchannels.registry")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS members (
    grp     TEXT NOT NULL,
    channel TEXT NOT NULL,
    ring    TEXT NOT NULL,
    owner   TEXT,
    added   REAL NOT NULL,
    PRIMARY KEY (grp, channel)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_owner ON members (owner) WHERE owner IS NOT NULL;
"""


def is_damage(exc):
    """Is this SQLite error a damaged database (rebuild) rather than a
    transient condition (busy, full disk) that the caller should see?"""
    if isinstance(exc, sqlite3.OperationalError):
        return "no such table" in str(exc)
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(
        exc, (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)
    )


#: how long a registry write waits for SQLite's write lock: SQLite's busy timeout
BUSY_TIMEOUT_S = 30
#: how long one short try waits for SQLite's lock, and for this process's fork lock
HURRY_S = 0.005
#: ``until`` for one short try (an event loop's thread): ``Locked`` if it would wait
NOW = 0.0


class Locked(Exception):
    """A registry write with ``until=NOW`` found the lock held (or needs a
    restore or rebuild, which may wait): nothing was written; finish it off
    the event loop with a deadline."""


def _is_locked(exc):
    text = str(exc)
    return "locked" in text or "busy" in text


def _locked_error(stem, text):
    return BusError(f"the group registry of {stem} stayed locked by another process for {BUSY_TIMEOUT_S:g} s "
                    f"(one stopped with SIGSTOP or in a debugger?): {text}")


def _passing(exc, stem):
    """A transient SQLite error as the layer's own: a full /dev/shm is
    ChannelFull (as for a ring), a lock held past the busy timeout a BusError
    that says why; anything else as it is."""
    text = str(exc)
    if "full" in text:
        return ChannelFull(f"no room in /dev/shm for the group registry of {stem} ({text})")
    if _is_locked(exc):
        return _locked_error(stem, text)
    return exc


#: memberships a process remembers for a rebuild; the oldest tenth is
#: forgotten past this (another process may have discarded them long ago)
MAX_REMEMBERED = 100_000


def bucket_of(group):
    return zlib.crc32(group.encode("utf-8"))


# Every SQLite call of this process happens under this lock, and fork() waits
# for it: a child forked while another thread was inside SQLite would inherit
# SQLite's internal mutexes locked, with no thread left to unlock them, and
# hang in its first SQLite call (found by the SIGKILL tests, where a consumer
# thread reclaimed a dead process's memberships while the main thread forked).
_sqlite_lock = threading.RLock()


# Connections a forked child inherited.  They are kept referenced, never
# closed: closing one would run SQLite's close path (checkpoint, unlink of the
# WAL, release of locks) in a process that never opened it.
_inherited_connections = []


def _reinit_lock_in_child():
    global _sqlite_lock
    _sqlite_lock = threading.RLock()


os.register_at_fork(
    before=lambda: _sqlite_lock.acquire(),
    after_in_parent=lambda: _sqlite_lock.release(),
    after_in_child=_reinit_lock_in_child,
)


def _insert_missing(conn, rows):
    """Insert membership rows (grp, channel, ring, owner, added) that are not there yet, in one transaction."""
    conn.execute("BEGIN")
    conn.executemany("INSERT OR IGNORE INTO members (grp, channel, ring, owner, added) VALUES (?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")


class Registry:
    """Group memberships of one bus.

    ``locked`` is the bus's lock as a context manager factory: a rebuild runs
    under it, so two processes that find damage at once rebuild it once.
    """

    def __init__(self, stem, control, locked):
        self.stem = stem
        self.control = control
        self._locked = locked
        self._conn = None
        self._pid = None
        self._epoch = None
        self._busy_ms = None  # the connection's busy timeout now
        self._cache = {}
        # What this process wrote, to restore after a rebuild: (group, channel) -> added
        self._mine = {}

    @property
    def path(self):
        return segments.path(segments.registry_name(self.stem, self.control.registry_epoch))

    def initialise(self):
        """Create the current epoch's database in WAL mode with its schema.

        Called by whoever attaches to the bus, under the bus lock: switching
        a database to WAL needs an exclusive lock, and two processes doing it
        at once can get SQLITE_BUSY without the busy handler being
        consulted.  WAL mode is persistent, so later opens never switch modes.
        """
        try:
            self._create(self.path)
        except sqlite3.DatabaseError as exc:
            if not is_damage(exc):
                raise
            self._rebuild_locked(self.control.registry_epoch, exc)

    @staticmethod
    def _create(path):
        # Create the file 0600 ourselves: SQLite would use 0644 & ~umask,
        # and gives its -wal and -shm files the database file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        with _sqlite_lock:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
            finally:
                conn.close()

    def _db(self):
        # One connection per process: SQLite connections must not cross fork().
        epoch = self.control.registry_epoch
        if self._conn is None or self._pid != os.getpid() or self._epoch != epoch:
            restore = self._conn is not None and self._pid == os.getpid() and self._epoch != epoch
            if restore:
                self._conn.close()
            conn = sqlite3.connect(
                segments.path(segments.registry_name(self.stem, epoch)),
                timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False,
            )
            self._busy_ms = None
            # Durability across power loss is meaningless for a tmpfs bus;
            # atomicity across a killed writer is what WAL still gives us.
            conn.execute("PRAGMA synchronous=OFF")
            self._conn, self._pid, self._epoch = conn, os.getpid(), epoch
            self._cache.clear()
            if restore and self._mine:
                self._restore_mine(conn)
        return self._conn

    def refresh(self):
        """After a rebuild elsewhere: reconnect and restore this process's
        memberships now (parked receivers call this at their watchdog, so an
        idle process restores within one park timeout)."""
        if self._conn is not None and self._epoch != self.control.registry_epoch:
            with _sqlite_lock:
                self._db()

    def _restore_mine(self, conn):
        """After a rebuild: put back what this process wrote."""
        rows = [(g, c, key, tag, added) for (g, c), (key, tag, added) in self._mine.items()]
        _insert_missing(conn, rows)
        for group in {r[0] for r in rows}:
            self.control.bump_bucket(bucket_of(group))
        logger.warning("registry of %s rebuilt elsewhere: restored this process's %d memberships", self.stem, len(rows))

    def _restore_due(self):
        """Would ``_db()`` reconnect to a rebuilt database and restore (a write that may wait)?"""
        return self._conn is not None and self._pid == os.getpid() and self._epoch != self.control.registry_epoch

    def _busy(self, db, ms):
        if self._busy_ms != ms:
            db.execute(f"PRAGMA busy_timeout = {int(ms)}")
            self._busy_ms = ms

    def _call(self, fn, until=None):
        """Run ``fn(db)`` under the fork lock; rebuild the database once if it is damaged.

        ``until``: None waits for SQLite's lock up to its busy timeout, under
        the fork lock.  ``NOW``: one short try (``HURRY_S``), else ``Locked``.
        A ``time.monotonic()`` deadline: short tries until then, the fork lock
        let go between them, then the BusError of a lock held too long."""
        if until is not None:
            return self._call_until(fn, until)
        for attempt in (0, 1):
            with _sqlite_lock:
                epoch = self.control.registry_epoch
                try:
                    db = self._db()
                    self._busy(db, BUSY_TIMEOUT_S * 1000)
                    return fn(db)
                except sqlite3.DatabaseError as exc:
                    if attempt or not is_damage(exc):
                        self._raise_passing(exc)
                    damage = exc
            self._rebuild(epoch, damage)

    def _raise_passing(self, exc):
        """Raise ``exc`` (being handled) as the layer's own error where it is one (``_passing``)."""
        passing = _passing(exc, self.stem)
        if passing is exc:
            raise exc
        raise passing from exc

    def _call_until(self, fn, until):
        hurried = until == NOW
        pause = 0.001
        while True:
            done, value = self._try(fn, hurried)
            if done:
                return value
            if hurried:
                raise Locked(self.stem)
            if time.monotonic() >= until:
                raise _locked_error(self.stem, str(value) if value is not None else "its lock was busy")
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    def _try(self, fn, hurried):
        """One short try of ``fn(db)``: (True, its value), or (False, the
        SQLite error or None) where a lock was held past ``HURRY_S``."""
        if not _sqlite_lock.acquire(timeout=HURRY_S):
            return False, None
        try:
            if hurried and self._restore_due():
                return False, None
            try:
                db = self._db()
                self._busy(db, HURRY_S * 1000)
                return True, fn(db)
            except sqlite3.DatabaseError as exc:
                if not is_damage(exc):
                    if _is_locked(exc):
                        return False, exc
                    self._raise_passing(exc)
        finally:
            _sqlite_lock.release()
        if hurried:  # damaged: the rebuild waits for the bus lock
            return False, None
        return True, self._call(fn)

    def _rebuild(self, epoch, exc):
        with self._locked():
            self._rebuild_locked(epoch, exc)

    def _rebuild_locked(self, epoch, exc):
        """Salvage what is readable into epoch + 1.  Caller holds the bus lock."""
        if self.control.registry_epoch != epoch:
            return  # somebody rebuilt it already
        old = segments.registry_name(self.stem, epoch)
        rows = []
        with _sqlite_lock:
            try:
                conn = sqlite3.connect(segments.path(old), timeout=5, isolation_level=None)
                try:
                    rows = conn.execute("SELECT grp, channel, ring, owner, added FROM members").fetchall()
                finally:
                    conn.close()
            except sqlite3.DatabaseError:
                pass
            new = segments.registry_name(self.stem, epoch + 1)
            for suffix in ("", "-wal", "-shm", "-journal"):
                segments.unlink(new + suffix)
            self._create(segments.path(new))
            conn = sqlite3.connect(segments.path(new), timeout=30, isolation_level=None)
            try:
                _insert_missing(conn, rows)
            finally:
                conn.close()
            self.control.bump_registry_epoch()
            self.control.bump_all_buckets()
            for suffix in ("", "-wal", "-shm", "-journal"):
                segments.unlink(old + suffix)
        logger.error(
            "group registry of %s was damaged (%s): rebuilt as epoch %d with the %d memberships still readable; "
            "live processes restore their own", self.stem, exc, epoch + 1, len(rows),
        )

    def reset_after_fork(self):
        if self._conn is not None:
            _inherited_connections.append(self._conn)
        self._conn = None
        self._pid = None
        self._epoch = None
        self._cache = {}
        self._mine = {}

    def close(self):
        with _sqlite_lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # writes
    def add(self, group, channel, until=None):
        """Add a membership; ``until`` as for ``_call`` (None: wait up to the busy timeout)."""
        key = names.ring_key(channel)
        owner = names.member_owner(channel)
        tag = None if owner is None else names.owner_tag(*owner)
        added = time.time()
        mine = self._mine
        mine.pop((group, channel), None)
        mine[group, channel] = (key, tag, added)
        if len(mine) > MAX_REMEMBERED:
            # Other processes may have discarded what we added; forget the oldest.
            for k in list(mine)[: MAX_REMEMBERED // 10]:
                del mine[k]
        self._call(lambda db: db.execute(
            "INSERT OR REPLACE INTO members (grp, channel, ring, owner, added) VALUES (?, ?, ?, ?, ?)",
            (group, channel, key, tag, added),
        ), until)
        self.control.bump_bucket(bucket_of(group))

    def discard(self, group, channel, until=None):
        """Remove a membership; ``until`` as for ``add``."""
        self._mine.pop((group, channel), None)
        self._call(lambda db: db.execute("DELETE FROM members WHERE grp = ? AND channel = ?", (group, channel)), until)
        self.control.bump_bucket(bucket_of(group))

    def drop_owner(self, slot, gen, until=None):
        """Forget every membership of channels owned by a dead process;
        ``until`` as for ``add``."""
        tag = names.owner_tag(slot, gen)

        def drop(db):
            groups = [g for (g,) in db.execute("SELECT DISTINCT grp FROM members WHERE owner = ?", (tag,))]
            if groups:
                db.execute("DELETE FROM members WHERE owner = ?", (tag,))
            return groups

        groups = self._call(drop, until)
        for g in groups:
            self.control.bump_bucket(bucket_of(g))
        return len(groups)

    def drop_owners_except(self, live_tags):
        """Forget memberships whose owner is not among ``live_tags`` (the
        owners of live slots): rows of processes that died on an older
        incarnation of their slot, whoever missed reclaiming them."""
        live = set(live_tags)

        def stale(db):
            return [t for (t,) in db.execute("SELECT DISTINCT owner FROM members WHERE owner IS NOT NULL")
                    if t not in live]

        dropped = 0
        for tag in self._call(stale):
            dropped += self.drop_owner(int(tag[:3], 16), int(tag[3:], 16))
        return dropped

    def flush(self):
        self._mine.clear()

        def flush(db):
            db.execute("DELETE FROM members")
            self._cache.clear()

        self._call(flush)
        self.control.bump_all_buckets()

    def expire(self, group_expiry):
        """Delete memberships older than ``group_expiry`` seconds."""
        cutoff = time.time() - group_expiry

        def expire(db):
            groups = [g for (g,) in db.execute("SELECT DISTINCT grp FROM members WHERE added < ?", (cutoff,))]
            if groups:
                db.execute("DELETE FROM members WHERE added < ?", (cutoff,))
            return groups

        groups = self._call(expire)
        for g in groups:
            self.control.bump_bucket(bucket_of(g))
        return len(groups)

    # reads
    def targets(self, group, group_expiry):
        """{ring key: ([member channel, ...], meta)} for the live members of
        ``group``, where meta is the encoded record meta naming them (their
        local parts, for a ``prefix!`` ring) or None for a named channel."""
        bucket = bucket_of(group)
        version = self.control.bucket_version(bucket)
        now = time.time()
        hit = self._cache.get(group)
        if hit is not None and hit[0] == version and hit[1] == group_expiry and now < hit[2]:
            return hit[3]
        cutoff = now - group_expiry
        rows = self._call(lambda db: db.execute(
            "SELECT channel, ring, added FROM members WHERE grp = ? AND added >= ?", (group, cutoff)
        ).fetchall())
        members = {}
        oldest = now
        for channel, ring, added in rows:
            members.setdefault(ring, []).append(channel)
            oldest = min(oldest, added)
        by_ring = {
            ring: (chans, "\n".join(c[len(ring):] for c in chans).encode("utf-8") if ring.endswith("!") else None)
            for ring, chans in members.items()
        }
        if len(self._cache) > 4096:
            self._cache.clear()
        # Valid until the bucket changes or the oldest member expires.
        self._cache[group] = (version, group_expiry, oldest + group_expiry, by_ring)
        return by_ring

    def channels(self, group, group_expiry):
        cutoff = time.time() - group_expiry
        rows = self._call(lambda db: db.execute(
            "SELECT channel FROM members WHERE grp = ? AND added >= ? ORDER BY added", (group, cutoff)
        ).fetchall())
        return [c for (c,) in rows]

    def counts(self):
        return self._call(lambda db: dict(db.execute("SELECT grp, COUNT(*) FROM members GROUP BY grp ORDER BY grp")))

    def is_empty(self):
        return self._call(lambda db: db.execute("SELECT 1 FROM members LIMIT 1").fetchone() is None)
