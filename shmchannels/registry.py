"""The per-host group registry.

Memberships live in an SQLite database in /dev/shm (WAL mode); a version
counter per hash bucket of group names lives in the control segment.
``group_send`` reads one counter (one shared-memory load) and, while it is
unchanged and no member can have expired, reuses its cached member list: the
database is read only after a change.  Writers (``group_add`` and friends)
are rare and serialise on SQLite's own locks, which are fcntl locks the
kernel releases when a writer dies; a writer killed mid-transaction is rolled
back by WAL recovery in the next connection.  Readers never wait for writers.

The cached list is already grouped by ring, so a group send writes one record
per destination ring (one per receiving process for process-specific
members), and the receiver fans it out locally.

The decision and its measurements are in docs/decisions.md.
"""

import os
import sqlite3
import threading
import time
import zlib

from . import names

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


def bucket_of(group):
    return zlib.crc32(group.encode("utf-8"))


# Every SQLite call of this process happens under this lock, and fork() waits
# for it: a child forked while another thread was inside SQLite would inherit
# SQLite's internal mutexes locked, with no thread left to unlock them, and
# hang in its first SQLite call (found by the SIGKILL tests, where a consumer
# thread reclaimed a dead process's memberships while the main thread forked).
_sqlite_lock = threading.RLock()


def _reinit_lock_in_child():
    global _sqlite_lock
    _sqlite_lock = threading.RLock()


os.register_at_fork(
    before=lambda: _sqlite_lock.acquire(),
    after_in_parent=lambda: _sqlite_lock.release(),
    after_in_child=_reinit_lock_in_child,
)


class Registry:
    def __init__(self, path, control):
        self.path = path
        self.control = control
        self._conn = None
        self._pid = None
        self._cache = {}

    def initialise(self):
        """Create the database in WAL mode with its schema.

        Called once by whoever attaches to the bus, under the bus lock:
        switching a database to WAL needs an exclusive lock, and two
        processes doing it at once can get SQLITE_BUSY without the busy
        handler being consulted.  WAL mode is persistent, so later opens
        never switch modes.
        """
        # Create the file 0600 ourselves: SQLite would use 0644 & ~umask,
        # and gives its -wal and -shm files the database file's mode.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        with _sqlite_lock:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(_SCHEMA)
            finally:
                conn.close()

    def _db(self):
        # One connection per process: SQLite connections must not cross fork().
        if self._conn is None or self._pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            # Durability across power loss is meaningless for a tmpfs bus;
            # atomicity across a killed writer is what WAL still gives us.
            conn.execute("PRAGMA synchronous=OFF")
            self._conn, self._pid = conn, os.getpid()
            self._cache.clear()
        return self._conn

    def reset_after_fork(self):
        self._conn = None
        self._pid = None
        self._cache = {}

    def close(self):
        with _sqlite_lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    # writes
    def add(self, group, channel):
        key = names.ring_key(channel)
        owner = names.owner_of(key)
        with _sqlite_lock:
            self._db().execute(
                "INSERT OR REPLACE INTO members (grp, channel, ring, owner, added) VALUES (?, ?, ?, ?, ?)",
                (group, channel, key, None if owner is None else "%03x%07x" % owner, time.time()),
            )
        self.control.bump_bucket(bucket_of(group))

    def discard(self, group, channel):
        with _sqlite_lock:
            self._db().execute("DELETE FROM members WHERE grp = ? AND channel = ?", (group, channel))
        self.control.bump_bucket(bucket_of(group))

    def drop_owner(self, slot, gen):
        """Forget every membership of channels owned by a dead process."""
        tag = names.owner_tag(slot, gen)
        with _sqlite_lock:
            db = self._db()
            groups = [g for (g,) in db.execute("SELECT DISTINCT grp FROM members WHERE owner = ?", (tag,))]
            if groups:
                db.execute("DELETE FROM members WHERE owner = ?", (tag,))
        for g in groups:
            self.control.bump_bucket(bucket_of(g))
        return len(groups)

    def flush(self):
        with _sqlite_lock:
            self._db().execute("DELETE FROM members")
            self._cache.clear()
        self.control.bump_all_buckets()

    def expire(self, group_expiry):
        """Delete memberships older than ``group_expiry`` seconds."""
        cutoff = time.time() - group_expiry
        with _sqlite_lock:
            db = self._db()
            groups = [g for (g,) in db.execute("SELECT DISTINCT grp FROM members WHERE added < ?", (cutoff,))]
            if groups:
                db.execute("DELETE FROM members WHERE added < ?", (cutoff,))
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
        with _sqlite_lock:
            rows = self._db().execute(
                "SELECT channel, ring, added FROM members WHERE grp = ? AND added >= ?", (group, cutoff)
            ).fetchall()
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
        with _sqlite_lock:
            rows = self._db().execute(
                "SELECT channel FROM members WHERE grp = ? AND added >= ? ORDER BY added", (group, cutoff)
            ).fetchall()
        return [c for (c,) in rows]

    def counts(self):
        with _sqlite_lock:
            return dict(self._db().execute("SELECT grp, COUNT(*) FROM members GROUP BY grp ORDER BY grp"))

    def is_empty(self):
        with _sqlite_lock:
            return self._db().execute("SELECT 1 FROM members LIMIT 1").fetchone() is None
