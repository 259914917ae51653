"""The rings of a bus as one process sees them: opening, creating, caching,
retiring.

A channel's ring key decides its file (``names.ring_key``): an unowned ring
``r<hash>`` for normal and single-reader names, created by whoever uses it
first; an owned ring ``o<owner tag>.<hash>`` for a ``prefix!`` minted by a
process, created by that process and unlinked when it detaches or dies.
Handles are cached per key; a handle of a ring that was retired or whose
owner died is dropped (``forget``, ``drop_dead_owners``) and the name opened
again.
"""

import logging
import os
import threading
import time

from shmchannels import names
from shmchannels.bus import _shm, segments
from shmchannels.exceptions import BusError

logger = logging.getLogger("shmchannels.bus")

#: single-reader (``?``) rings empty and unused this long are retired
RETIRE_IDLE_NS = 120_000_000_000
_RETIRE_SWEEP_EVERY_NS = 10_000_000_000
_CACHE_LIMIT = 4096
#: rings are populated page by page as first written, or (old kernels) allocated whole at creation
_ALLOCATE_RINGS = not _shm.LAZY_POPULATE


def map_ring(base, writer=None):
    """The ring in file ``base``, or None if it is gone or not a valid ring."""
    mapping = segments.open_existing(base)
    if mapping is None:
        return None
    try:
        return _shm.Ring(mapping, writer)
    except ValueError:
        mapping.close()
        return None


def ring_by_id(stem, ring_id):
    """The ring of bus ``stem`` whose header id is ``ring_id`` (an intent names rings by id)."""
    hexid = f"{ring_id:016x}"
    for base, kind, m in segments.files_of_kind(stem, "ring", "owned"):
        if m.group(2 if kind == "owned" else 1) == hexid:
            return map_ring(base)
    return None


def all_rings(stem, writer=None):
    """Every ring of bus ``stem``, freshly mapped (for flush, purge and status)."""
    rings = (map_ring(base, writer) for base, _, _ in segments.files_of_kind(stem, "ring", "owned"))
    return [r for r in rings if r is not None]


def initialiser(ring_size, key, owner_slot, owner_gen):
    def initialise(mapping):
        _shm.ring_init(
            mapping, ring_size, segments.ring_id(key), int.from_bytes(os.urandom(8), "little"),
            owner_slot, owner_gen, key.encode("utf-8"),
        )
    return initialise


class RingTable:
    """One process's handles on the rings of its bus."""

    def __init__(self, *, stem, prefix, ring_size, writer, slot, gen, is_alive, wake):
        self.stem = stem
        self.prefix = prefix
        self.ring_size = ring_size
        self.writer = writer
        self.slot = slot
        self.gen = gen
        self.owner_tag = names.owner_tag(slot, gen)
        self._is_alive = is_alive
        self._wake = wake
        self.lock = threading.RLock()
        self._cache = {}  # key -> Ring, every ring this process uses
        self._owned = {}  # key -> Ring, the ``prefix!`` rings this process minted
        self._last_retire_sweep = 0

    def get(self, key):
        """The ring for ``key``, opening (and for unowned keys creating) it.

        None when ``key`` is minted by a process that no longer exists.
        """
        ring = self._cache.get(key)
        if ring is not None:
            return ring
        with self.lock:
            ring = self._cache.get(key)
            if ring is not None:
                return ring
            owner = names.owner_of(key)
            h = segments.ring_hash(key)
            if owner is None:
                suffix = f"r{h}"
                ring = self._open_or_create(key, suffix)
            else:
                suffix = f"o{names.owner_tag(*owner)}.{h}"
                mapping = segments.open_existing(segments.file_name(self.stem, suffix))
                if mapping is None:
                    return None
                try:
                    ring = _shm.Ring(mapping, self.writer)
                except ValueError:
                    mapping.close()
                    logger.error("ring %s of bus %s is damaged (truncated or bad header): dropping messages to it",
                                 suffix, self.prefix)
                    return None
            if ring.key != key:
                raise BusError(f"ring {suffix} holds {ring.key!r}, not {key!r} (hash collision)")
            if len(self._cache) >= _CACHE_LIMIT:
                self._trim()
            self._cache[key] = ring
        if "?" in key:
            now = _shm.monotonic_ns()
            if now - self._last_retire_sweep > _RETIRE_SWEEP_EVERY_NS:
                self._last_retire_sweep = now
                self.retire_idle()
        return ring

    def _open_or_create(self, key, suffix):
        """The unowned ring ``suffix``; a damaged file (truncated, bad
        header) under that name is replaced by a fresh ring, with an error
        logged: its messages are lost, the channel works again."""
        for attempt in (0, 1):
            try:
                mapping, _ = segments.create_published(
                    self.stem, suffix, _shm.HEADER_SIZE + self.ring_size,
                    initialiser(self.ring_size, key, -1, 0), allocate=_ALLOCATE_RINGS,
                )
                try:
                    return _shm.Ring(mapping, self.writer)
                except ValueError:
                    mapping.close()
                    raise segments.DamagedSegment("bad header or size") from None
            except segments.DamagedSegment as exc:
                if attempt:
                    raise
                logger.error("ring %s of bus %s (%s) is damaged: %s; replacing it", suffix, self.prefix, key, exc)
                segments.unlink(segments.file_name(self.stem, suffix))

    def owned(self, key):
        """Create (or return) the ring of a ``prefix!`` minted by this process."""
        ring = self._owned.get(key)
        if ring is not None:
            return ring
        with self.lock:
            ring = self._owned.get(key)
            if ring is None:
                suffix = f"o{self.owner_tag}.{segments.ring_hash(key)}"
                mapping, _ = segments.create_published(
                    self.stem, suffix, _shm.HEADER_SIZE + self.ring_size,
                    initialiser(self.ring_size, key, self.slot, self.gen), allocate=_ALLOCATE_RINGS,
                )
                ring = _shm.Ring(mapping, self.writer)
                self._owned[key] = ring
                self._cache[key] = ring
            return ring

    def owns(self, key):
        return key in self._owned

    def reopen(self, key, ring):
        """A fresh handle for an unowned ring found closed (retired by a janitor).

        The janitor unlinks the name right after closing the ring; if the name
        still maps the closed ring after a short wait, the janitor died in
        between and we unlink it ourselves.
        """
        self.forget(key)
        for attempt in range(200):
            fresh = self.get(key)
            if fresh is None or not fresh.closed:
                return fresh
            self.forget(key)
            if attempt > 20:
                closer = fresh.closer
                if closer is not None and not self._is_alive(closer):
                    segments.unlink(segments.file_name(self.stem, f"r{segments.ring_hash(key)}"))
                    continue
            os.sched_yield() if attempt < 100 else time.sleep(0.001)
        raise BusError(f"ring {key!r} stays closed under its name")

    def retire_idle(self, idle_ns=RETIRE_IDLE_NS):
        """Close and unlink single-reader rings that are empty and unused.

        Their names are minted per request, so without this a long-running
        server would keep one ring per request ever made.
        """
        retired = 0
        for base, _, _ in segments.files_of_kind(self.stem, "ring"):
            ring = map_ring(base)
            if ring is None or "?" not in ring.key:
                continue
            if ring.closed:
                continue  # its closer unlinks it (or reopen() finds it dead)
            if ring.retire(idle_ns, self.slot):
                if ring.fifo_waiters:
                    self._wake(ring)
                segments.unlink(base)
                self.forget(ring.key)
                retired += 1
        return retired

    def forget(self, key):
        with self.lock:
            self._cache.pop(key, None)

    def forget_owner(self, slot, gen):
        """Drop the handles of rings minted by the process (``slot``, ``gen``)."""
        owner = (slot, gen & names.GEN_MASK)
        with self.lock:
            for key in [k for k in self._cache if names.owner_of(k) == owner]:
                del self._cache[key]

    def drop_dead_owners(self):
        """Drop cached handles of rings whose owner is dead (their mappings
        would keep unlinked segments alive).  True if any."""
        with self.lock:
            stale = [k for k, r in self._cache.items() if k not in self._owned and r.owner is not None
                     and not self._is_alive(*r.owner)]
            for k in stale:
                del self._cache[k]
        return bool(stale)

    def _trim(self):
        # Keep our own rings; everything else is reopened on demand.
        for key in list(self._cache):
            if key not in self._owned:
                del self._cache[key]

    def clear(self):
        self._cache = {}
        self._owned = {}
