"""A process's attachment to the bus of one prefix.

All layer objects with the same prefix in one process share one ``Bus``: one
process slot, one wake FIFO, one cache of mapped rings, one registry
connection.  The bus itself (the files in /dev/shm) is shared by every process
on the host that uses the prefix; there is no daemon and no broker.

Life cycle
  attach   take the bus lock, open or create the control segment, reclaim
           slots of dead processes, claim a free slot (a kernel byte lock),
           release the bus lock.
  detach   close the rings this process owns, drop their memberships, free
           the slot; if no other process is attached and nothing is pending,
           remove every file of the bus.
  reclaim  what any survivor does for a dead process: resolve its in-flight
           ring claim, close and unlink the rings it owned, forget their
           group memberships, free its slot.
"""

import atexit
import contextlib
import logging
import multiprocessing.util
import os
import random
import sys
import threading
import time
import weakref

from shmchannels.bus import _shm, segments
from shmchannels import names
from shmchannels.bus.control import H_BOOT, STATE_ACTIVE, Control, Liveness, segment_size
from shmchannels.exceptions import BusError, ChannelFull, MessageTooLarge
from shmchannels.bus.registry import Registry

logger = logging.getLogger("shmchannels.bus")

DEFAULT_RING_SIZE = 8 << 20
DEFAULT_SLOTS = 256
#: how long a ring head may stay unready before we look for a dead writer
STUCK_AFTER_NS = 20_000_000
#: an unready head that no live claim explains is dropped after this long
STUCK_RESET_NS = 2_000_000_000
#: single-reader (``?``) rings empty and unused this long are retired
RETIRE_IDLE_NS = 120_000_000_000
_RETIRE_SWEEP_EVERY_NS = 10_000_000_000

PUT_OK, PUT_WAKE, PUT_FULL, PUT_NOSPACE = _shm.PUT_OK, _shm.PUT_WAKE, _shm.PUT_FULL, _shm.PUT_NOSPACE
PUT_TOO_BIG, PUT_CLOSED, PUT_FORKED = _shm.PUT_TOO_BIG, _shm.PUT_CLOSED, _shm.PUT_FORKED
PUT_NOMEM = _shm.PUT_NOMEM
#: rings are populated page by page as first written, or (old kernels) allocated whole at creation
_ALLOCATE_RINGS = not _shm.LAZY_POPULATE

_buses = {}
_buses_lock = threading.Lock()


def attach(prefix="asgi", *, ring_size=DEFAULT_RING_SIZE, slots=DEFAULT_SLOTS, kind="process", label=None):
    """The process's Bus for ``prefix``, attaching on first use."""
    bus = _buses.get(prefix)
    if bus is not None and bus.usable:
        return bus
    with _buses_lock:
        bus = _buses.get(prefix)
        if bus is None or not bus.usable:
            bus = Bus(prefix, ring_size=ring_size, slots=slots, kind=kind, label=label)
            _buses[prefix] = bus
        return bus


def attached(prefix=None):
    """The buses this process is attached to (or its bus of ``prefix``, or None)."""
    if prefix is not None:
        bus = _buses.get(prefix)
        return bus if bus is not None and bus.usable else None
    return [b for b in _buses.values() if b.usable]


def detach_all():
    """Detach every bus of this process (atexit does this too)."""
    with _buses_lock:
        buses = list(_buses.values())
        _buses.clear()
    for bus in buses:
        bus.detach()


def _after_fork_in_child():
    # The child has no slot locks (POSIX locks are not inherited) and must
    # never act under its parent's identity: forget every bus; the next use
    # attaches afresh with a slot of its own.
    global _buses_lock
    _buses_lock = threading.Lock()
    for bus in _buses.values():
        bus._forget_after_fork()
    _buses.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def head_unready(ring):
    """Records are committed in ``ring`` but its head one is not ready to
    take (a writer mid-copy, or dead): ``Bus.unstick`` territory."""
    return ring.pending and not ring.has_data()


def _default_label():
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    return f"{argv0}[{os.getpid()}]"


_collected_in_pid = None


def _collect_dead_buses(prefix):
    """Once per process, at its first attach: remove the user's dead buses."""
    global _collected_in_pid
    if _collected_in_pid == os.getpid():
        return
    _collected_in_pid = os.getpid()
    from shmchannels.bus import gc

    try:
        gc.collect(dry_run=False, exclude={prefix})
    except Exception:  # never fail an attach over somebody else's debris
        logger.exception("collecting dead buses")


class Bus:
    def __init__(self, prefix, *, ring_size=DEFAULT_RING_SIZE, slots=DEFAULT_SLOTS, kind="process", label=None,
                 collect_dead=True):
        names.require_prefix(prefix)
        if ring_size < 64 * 1024 or ring_size & (ring_size - 1) or ring_size > 1 << 30:
            raise ValueError("ring_size must be a power of two between 64 KiB and 1 GiB")
        if not 1 <= slots <= _shm.MAX_SLOTS:
            raise ValueError(f"slots must be between 1 and {_shm.MAX_SLOTS}")
        self.prefix = prefix
        self.stem = segments.bus_stem(prefix)
        self.ring_size = ring_size
        self.pid = os.getpid()
        self.usable = False
        self._lock = threading.RLock()
        self._rings = {}
        self._owned = {}
        self._fifo_fds = {}
        self._stuck = {}
        self._last_retire_sweep = 0
        self._reclaims_seen = 0
        self._cache_listeners = []  # weak methods called when cached rings of dead processes were dropped
        self._bus_lock_depth = 0
        self._bus_rlock = threading.RLock()
        self.slot = None
        self.registry = None
        self.lock_fd = segments.open_lock_file(self.stem)
        self.liveness = Liveness(self.lock_fd)
        try:
            with self._locked_bus():
                self.control = self._open_control(slots, ring_size)
                self.registry = Registry(self.stem, self.control, self._locked_bus)
                self.registry.initialise()
                self._reclaim_dead()
                self.slot = self._claim_slot()
                self.gen = self.control.activate_slot(self.slot, kind, label or _default_label())
                self.owner_tag = names.owner_tag(self.slot, self.gen)
                self.writer = _shm.Writer(self.control.mapping, self.control.intent_offset(self.slot), self.slot, self.gen)
                self._sweep_at_attach()
        except BaseException:
            os.close(self.lock_fd)
            raise
        self.fifo_path = segments.make_fifo(segments.file_name(self.stem, f"w{self.slot:03x}"), fresh=True)
        # O_RDWR keeps the FIFO open for writing too, so it never reports EOF.
        self.fifo_fd = os.open(self.fifo_path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        self.drain_fifo()
        self.flush_epoch = self.control.flush_epoch
        self.usable = True
        self._hub = None
        self._demux = None
        atexit.register(self.detach)
        # multiprocessing children leave through os._exit(), skipping atexit,
        # but they do run multiprocessing's own exit finalizers.
        self._mp_finalizer = multiprocessing.util.Finalize(self, Bus.detach, args=(self,), exitpriority=0)
        if collect_dead:
            _collect_dead_buses(prefix)

    def __repr__(self):
        return f"<Bus {self.prefix!r} slot={getattr(self, 'slot', None)} gen={getattr(self, 'gen', None)}>"

    # ------------------------------------------------------------------ setup

    @contextlib.contextmanager
    def _locked_bus(self):
        """Hold the bus lock on the lock file that is currently published.

        The last process out unlinks the lock file while holding its bus
        lock.  Whoever was blocked on that lock then holds it on an unlinked
        inode, so after locking we check that the file at the path is still
        ours, and otherwise start over on the new one.
        """
        with self._bus_rlock:
            if self._bus_lock_depth:
                # Re-entered by this thread (a registry rebuild during attach):
                # POSIX locks are per process, so locking again would be a
                # no-op and the inner unlock would release the outer hold.
                self._bus_lock_depth += 1
                try:
                    yield
                finally:
                    self._bus_lock_depth -= 1
                return
            while True:
                with self.liveness.bus_lock():
                    try:
                        current = os.stat(segments.path(segments.file_name(self.stem, "lock"))).st_ino
                    except FileNotFoundError:
                        current = None
                    if current == os.fstat(self.lock_fd).st_ino:
                        self._bus_lock_depth = 1
                        try:
                            yield
                        finally:
                            self._bus_lock_depth = 0
                        return
                os.close(self.lock_fd)
                self.lock_fd = segments.open_lock_file(self.stem)
                self.liveness = Liveness(self.lock_fd)

    def _open_control(self, slots, ring_size):
        size = segment_size(slots)
        mapping, created = segments.create_published(
            self.stem, "ctl", size, lambda m: Control.initialise(m, slots, ring_size)
        )
        try:
            return Control(mapping)
        except BusError:
            mapping.close()
            if any(self.liveness.holder(i) for i in range(_shm.MAX_SLOTS)):
                raise
            # Left behind by dead processes of another version: start afresh.
            logger.warning("removing stale incompatible bus %s", self.stem)
            self._remove_files()
            mapping, _ = segments.create_published(
                self.stem, "ctl", size, lambda m: Control.initialise(m, slots, ring_size)
            )
            return Control(mapping)

    def _sweep_at_attach(self):
        """What every attach does for the bus (under the bus lock): forget
        memberships whose owner is gone and drop expired messages, so that
        nothing dead or stale outlives its processes."""
        live = [names.owner_tag(i, self.control.slot_gen(i)) for i in self.live_slots()]
        dropped = self.registry.drop_owners_except(live)
        if dropped:
            logger.info("dropped memberships of dead owners in %d group(s) of bus %s", dropped, self.prefix)
        self.purge_expired()

    def purge_expired(self):
        """Consume expired records at the head of every ring; repair damaged
        ones.  Returns how many head moves that took."""
        moved = 0
        for ring in self.all_rings():
            self.check_damage(ring)
            moved += ring.purge()
        return moved

    def check_damage(self, ring):
        """Repair ``ring`` if its header words are inconsistent.  True if it was damaged."""
        damage = ring.damage()
        if damage is None:
            return False
        logger.error("ring %s of bus %s is damaged (%s): dropping its pending records and repairing it",
                     ring.key, self.prefix, damage)
        ring.repair()
        self._stuck.pop(ring.ring_id, None)
        return True

    def on_stale_caches(self, method):
        """Call ``method()`` (held weakly) whenever ``maintain`` dropped rings of dead processes."""
        self._cache_listeners.append(weakref.WeakMethod(method))

    def maintain(self):
        """Let go of what dead processes left in this process's caches.

        Any process's reclaim bumps a counter in the control segment; when
        it moved, the rings cached here whose owner is dead are dropped
        (their mappings would keep the unlinked segments' memory and
        descriptors alive for as long as this process lives), and so are
        the wake FIFOs of slots whose process is gone.  One shared-memory
        load when nothing changed; callers run it now and then (parked
        receivers' watchdogs, every 1024th send, group sends).  It also
        picks up a registry rebuilt elsewhere (``Registry.refresh``)."""
        self.registry.refresh()
        reclaims = self.control.reclaims
        if reclaims == self._reclaims_seen or not self.usable:
            return False
        self._reclaims_seen = reclaims
        with self._lock:
            stale = [k for k, r in self._rings.items() if k not in self._owned and r.owner is not None
                     and not self.is_alive(*r.owner)]
            for k in stale:
                del self._rings[k]
            gone = [slot for slot in self._fifo_fds if not self.is_alive(slot)]
            for slot in gone:
                self._forget_fifo(slot)
        listeners = []
        for ref in self._cache_listeners:
            method = ref()
            if method is not None:
                listeners.append(ref)
                method()
        self._cache_listeners = listeners
        return bool(stale or gone)

    def janitor(self):
        """A supervisor's periodic pass: reclaim dead slots, purge expired
        messages, retire idle single-reader rings."""
        reclaimed = self.reclaim_dead()
        self.purge_expired()
        self.retire_idle()
        return reclaimed

    def _claim_slot(self):
        n = self.control.nslots
        start = random.randrange(n)
        for k in range(n):
            i = (start + k) % n
            if self.liveness.try_hold(i):
                old = self.control.read_slot(i)
                if old.state == STATE_ACTIVE:  # its process died without detaching
                    self._reclaim_locked(i, old.gen)
                return i
        raise BusError(f"all {n} process slots of bus {self.prefix!r} are taken; raise `slots` when creating it")

    # --------------------------------------------------------------- liveness

    def is_alive(self, slot, gen=None):
        """Is the process in ``slot`` (of generation ``gen``, if given) alive?"""
        if slot == self.slot:
            return gen is None or names.owner_tag(slot, gen) == self.owner_tag
        if slot >= self.control.nslots or not self.liveness.holder(slot):
            return False
        if gen is None:
            return True
        cur = self.control.read_slot(slot).gen
        return (cur & names.GEN_MASK) == (gen & names.GEN_MASK)

    def live_slots(self):
        return [s for s in range(self.control.nslots) if s == self.slot or self.liveness.holder(s)]

    def reclaim(self, index):
        """Reclaim slot ``index`` if its process is dead.  True if something was reclaimed."""
        if index == self.slot:
            return False
        with self._lock:
            if not self.liveness.try_hold(index):
                return False
            try:
                old = self.control.read_slot(index)
                if old.state != STATE_ACTIVE:
                    return False
                self._reclaim_locked(index, old.gen)
                self.control.free_slot(index)
                return True
            finally:
                self.liveness.release(index)

    def reclaim_dead_owners(self, keys):
        """Reclaim the dead owners of these ring keys (a group's targets).
        A slot that already has a new process only loses the old
        generation's memberships.  True if anything was dropped."""
        dropped = False
        for key in keys:
            owner = names.owner_of(key)
            if owner is None or self.is_alive(*owner):
                continue
            if not self.reclaim(owner[0]):
                self.registry.drop_owner(*owner)
            self.forget_ring(key)
            dropped = True
        return dropped

    def reclaim_dead(self):
        """Janitor pass: reclaim every slot whose process has died."""
        reclaimed = 0
        for i in range(self.control.nslots):
            if self.control.read_slot(i).state == STATE_ACTIVE and not self.liveness.holder(i):
                reclaimed += self.reclaim(i)
        return reclaimed

    _reclaim_dead = reclaim_dead

    def _reclaim_locked(self, index, gen):
        """Clean up after the dead process that held ``index`` (we hold its lock)."""
        slot = self.control.read_slot(index)
        logger.info("reclaiming slot %d (pid %d, %s) of bus %s", index, slot.pid, slot.label or slot.kind, self.prefix)
        intent = self.control.intent(index)
        if intent is not None:
            ring = self._ring_by_id(intent.ring_id)
            if ring is not None and not ring.recover(intent.pos, intent.total):
                logger.warning("could not resolve dead claim at %d in ring %s; resetting it", intent.pos, ring.key)
                ring.reset()
        tag = names.owner_tag(index, gen)
        for base, kind, m in segments.files_of_kind(self.stem, "ring", "owned"):
            if kind == "owned":
                if m.group(1) != tag:
                    continue
                mapping = segments.open_existing(base)
                if mapping is not None:
                    try:
                        _shm.Ring(mapping).close(index)
                    except ValueError:
                        pass
                segments.unlink(base)
            else:
                ring = self._map_ring(base)
                if ring is not None:
                    ring.fifo_remove(index)
        self.registry.drop_owner(index, gen)
        self.control.bump_reclaims()
        # The next process in this slot makes a fresh FIFO: stale wake-ups
        # and writers holding the old one cannot reach it.
        segments.unlink(segments.file_name(self.stem, f"w{index:03x}"))
        with self._lock:
            self._forget_fifo(index)
            for key in [k for k in self._rings if names.owner_of(k) == (index, gen & names.GEN_MASK)]:
                del self._rings[key]

    def _map_ring(self, base, writer=None):
        """The ring in file ``base``, or None if it is gone or not a valid ring."""
        mapping = segments.open_existing(base)
        if mapping is None:
            return None
        try:
            return _shm.Ring(mapping, writer)
        except ValueError:
            mapping.close()
            return None

    def _ring_by_id(self, ring_id):
        hexid = f"{ring_id:016x}"
        for base, kind, m in segments.files_of_kind(self.stem, "ring", "owned"):
            if m.group(2 if kind == "owned" else 1) == hexid:
                return self._map_ring(base)
        return None

    # ------------------------------------------------------------------ rings

    def ring(self, key):
        """The ring for ``key``, opening (and for unowned keys creating) it.

        None when ``key`` is minted by a process that no longer exists.
        """
        ring = self._rings.get(key)
        if ring is not None:
            return ring
        with self._lock:
            ring = self._rings.get(key)
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
            if len(self._rings) >= 4096:
                self._trim_ring_cache()
            self._rings[key] = ring
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
                    self.stem, suffix, _shm.HEADER_SIZE + self.ring_size, self._initialiser(key, -1, 0),
                    allocate=_ALLOCATE_RINGS,
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

    def reopen(self, key, ring):
        """A fresh handle for an unowned ring found closed (retired by a janitor).

        The janitor unlinks the name right after closing the ring; if the name
        still maps the closed ring after a short wait, the janitor died in
        between and we unlink it ourselves.
        """
        self.forget_ring(key)
        for attempt in range(200):
            fresh = self.ring(key)
            if fresh is None or not fresh.closed:
                return fresh
            self.forget_ring(key)
            if attempt > 20:
                closer = fresh.closer
                if closer is not None and not self.is_alive(closer):
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
            ring = self._map_ring(base)
            if ring is None or "?" not in ring.key:
                continue
            if ring.closed:
                continue  # its closer unlinks it (or reopen() finds it dead)
            if ring.retire(idle_ns, self.slot):
                if ring.fifo_waiters:
                    self.wake(ring)
                segments.unlink(base)
                self.forget_ring(ring.key)
                retired += 1
        return retired

    def owned_ring(self, key):
        """Create (or return) the ring of a ``prefix!`` minted by this process."""
        ring = self._owned.get(key)
        if ring is not None:
            return ring
        with self._lock:
            ring = self._owned.get(key)
            if ring is None:
                suffix = f"o{self.owner_tag}.{segments.ring_hash(key)}"
                mapping, _ = segments.create_published(
                    self.stem, suffix, _shm.HEADER_SIZE + self.ring_size,
                    self._initialiser(key, self.slot, self.gen), allocate=_ALLOCATE_RINGS,
                )
                ring = _shm.Ring(mapping, self.writer)
                self._owned[key] = ring
                self._rings[key] = ring
            return ring

    def owns(self, key):
        return key in self._owned

    def _initialiser(self, key, owner_slot, owner_gen):
        def initialise(mapping):
            _shm.ring_init(
                mapping, self.ring_size, segments.ring_id(key), int.from_bytes(os.urandom(8), "little"),
                owner_slot, owner_gen, key.encode("utf-8"),
            )
        return initialise

    def _trim_ring_cache(self):
        # Keep our own rings; everything else is reopened on demand.
        for key in list(self._rings):
            if key not in self._owned:
                del self._rings[key]

    def forget_ring(self, key):
        with self._lock:
            self._rings.pop(key, None)

    def all_rings(self):
        """Every ring of the bus (opened read/write), for flush and status."""
        rings = (self._map_ring(base, self.writer) for base, _, _ in segments.files_of_kind(self.stem, "ring", "owned"))
        return [r for r in rings if r is not None]

    # ------------------------------------------------------------------ send

    def put(self, ring, key, body, meta, expiry_ns, capacity, flags):
        """Store one record; raises ChannelFull / MessageTooLarge.  False if dropped."""
        status = ring.put(body, meta, expiry_ns, capacity, flags)
        return status == PUT_OK or self.settle_put(status, ring, key, body, meta, expiry_ns, capacity, flags)

    def settle_put(self, status, ring, key, body, meta, expiry_ns, capacity, flags):
        """Everything after a put that did not simply succeed: wake parked
        processes, recover a dead writer's claim, or raise.  False if the
        message was dropped because its channel's owner is gone."""
        if status == PUT_OK:
            return True
        if status == PUT_WAKE:
            self.wake(ring)
            return True
        if status in (PUT_FULL, PUT_NOSPACE):
            if self.reclaim_dead_owners((key,)):
                return False  # replies to a process that died: reclaimed now, dropped quietly
            if self.check_damage(ring) or (
                ring.head_state()[1] in ("writing", "unwritten") and self.unstick(ring, grace=False)
            ):
                # The ring was held up by a dead writer's claim; it is free now.
                status = ring.put(body, meta, expiry_ns, capacity, flags)
                if status in (PUT_OK, PUT_WAKE):
                    if status == PUT_WAKE:
                        self.wake(ring)
                    return True
            if status == PUT_FULL:
                raise ChannelFull(key)
            raise ChannelFull(f"{key} (ring out of space)")
        if status == PUT_CLOSED:
            if ring.owner is None and (ring := self.reopen(key, ring)) is not None:
                return self.put(ring, key, body, meta, expiry_ns, capacity, flags)
            self.forget_ring(key)
            return False
        if status == PUT_NOMEM:
            raise ChannelFull(f"{key}: no memory left in /dev/shm for this ring's pages (free space there)")
        if status == PUT_TOO_BIG:
            raise MessageTooLarge(f"{len(body)} byte message does not fit the {ring.data_size} byte ring of {key}")
        if status == PUT_FORKED:
            raise BusError("this bus handle belongs to the parent process; the child must re-attach")
        raise BusError(f"unexpected ring status {status}")

    def wake(self, ring):
        """Write one byte to the wake FIFO of every process parked on ``ring``.

        Open FIFOs are cached per slot together with the slot's generation:
        a slot's next process makes a new FIFO, and a byte written to the
        old one would wake nobody.
        """
        slot_gen = self.control.slot_gen
        for slot in ring.fifo_slots():
            gen = slot_gen(slot)
            cached = self._fifo_fds.get(slot)
            if cached is not None and cached[0] != gen:
                self._forget_fifo(slot)
                cached = None
            if cached is None:
                try:
                    fd = os.open(
                        segments.path(segments.file_name(self.stem, f"w{slot:03x}")),
                        os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC,
                    )
                except OSError:  # no FIFO or no reader: that slot's process is gone
                    ring.fifo_remove(slot)
                    continue
                cached = self._fifo_fds[slot] = (gen, fd)
            try:
                os.write(cached[1], b"\0")
            except BlockingIOError:
                pass  # the FIFO is full, so a wake-up is already pending
            except OSError:
                self._forget_fifo(slot)

    def _forget_fifo(self, slot):
        cached = self._fifo_fds.pop(slot, None)
        if cached is not None:
            os.close(cached[1])

    def drain_fifo(self):
        try:
            while os.read(self.fifo_fd, 4096):
                pass
        except BlockingIOError:
            pass

    # --------------------------------------------------------------- recovery

    def unstick(self, ring, grace=True):
        """Deal with an unready record at the head of ``ring``.

        Receivers call this when the head is unready; they pass ``grace`` so
        that a writer mid-copy (microseconds) costs no liveness checks: only
        a head unready for STUCK_AFTER_NS is examined.  Senders whose ring is
        full call it without grace.  A live writer is left alone; a dead
        writer's claim is reclaimed together with its process.  Returns True
        if the head record may now be consumable.
        """
        if self.check_damage(ring):
            return True
        pos, state, _pid, slot, gen, _len = ring.head_state()
        if state not in ("writing", "unwritten"):
            self._stuck.pop(ring.ring_id, None)
            return state != "empty"
        now = _shm.monotonic_ns()
        first = self._stuck.get(ring.ring_id)
        if first is None or first[0] != pos:
            first = self._stuck[ring.ring_id] = (pos, now)
        if grace and now - first[1] < STUCK_AFTER_NS:
            return False
        if state == "writing":
            claimants = [(slot, gen, None)]
        else:
            claimants = []
            for i in range(self.control.nslots):
                intent = self.control.intent(i)
                if intent and intent.ring_id == ring.ring_id and intent.pos <= pos < intent.pos + intent.total:
                    claimants.append((i, None, intent))
        live = [c for c in claimants if self.is_alive(c[0], c[1])]
        if live:
            return False
        for slot_i, _gen, _intent in claimants:
            self.reclaim(slot_i)
        if claimants and ring.head_state()[1] not in ("writing", "unwritten"):
            self._stuck.pop(ring.ring_id, None)
            return True
        if len(claimants) == 1 and claimants[0][2] is not None:
            intent = claimants[0][2]
            if ring.recover(intent.pos, intent.total):
                return True
        if now - first[1] >= STUCK_RESET_NS:
            logger.error(
                "ring %s: head record at %d has no live writer and no claim to recover it; "
                "dropping the ring's pending records", ring.key, pos,
            )
            ring.reset()
            self._stuck.pop(ring.ring_id, None)
            return True
        return False

    # --------------------------------------------------------------- helpers

    @property
    def hub(self):
        if self._hub is None:
            from shmchannels.engine.wakeup import Hub

            with self._lock:
                if self._hub is None:
                    self._hub = Hub(self)
        return self._hub

    @property
    def demux(self):
        if self._demux is None:
            from shmchannels.engine.demux import Demux

            with self._lock:
                if self._demux is None:
                    self._demux = Demux(self)
        return self._demux

    def check_flush_epoch(self):
        epoch = self.control.flush_epoch
        if epoch != self.flush_epoch:
            self.flush_epoch = epoch
            if self._demux is not None:
                self._demux.clear()
            return True
        return False

    def flush(self):
        """Drop every pending message and membership on the whole bus."""
        for ring in self.all_rings():
            ring.discard_all()
        self.registry.flush()
        self.control.bump_flush_epoch()
        self.check_flush_epoch()

    def pending_total(self):
        """Unexpired messages waiting anywhere on the bus (expired ones are purged first)."""
        total = 0
        for r in self.all_rings():
            if r.owner is None or self.is_alive(*r.owner):
                self.check_damage(r)
                r.purge()
                total += r.pending
        return total

    def status(self):
        """A snapshot for `shmchannels status` and the statistics extension."""
        procs = [self.control.read_slot(i) for i in self.live_slots()]
        rings = []
        for r in self.all_rings():
            self.check_damage(r)
            r.purge()
            st = r.stats()
            st["key"] = r.key
            st["owner"] = r.owner
            rings.append(st)
        return {"prefix": self.prefix, "processes": procs, "rings": rings, "groups": self.registry.counts()}

    # --------------------------------------------------------------- detach

    def detach(self):
        """Give up this process's slot; remove the bus if we were the last one."""
        if not self.usable or self.pid != os.getpid():
            return
        self.usable = False
        if _buses.get(self.prefix) is self:
            _buses.pop(self.prefix, None)
        self._unregister_exit_hooks()
        if self._hub is not None:
            self._hub.close()
        if not self._still_published():
            # Somebody destroyed this bus (the serve master at exit): its
            # files are gone, there is nothing shared left to clean.
            self._close_local()
            return
        try:
            self._detach_shared()
        except BusError as exc:
            # Leave the shared clean-up to whoever attaches next (they
            # reclaim dead slots); never hang a process's exit on it.
            logger.warning("detaching from bus %s: %s", self.prefix, exc)
        self._close_local()

    def _detach_shared(self):
        with self._locked_bus():
            self._reclaim_locked(self.slot, self.gen)
            self.control.free_slot(self.slot)
            last = not any(self.liveness.holder(i) for i in range(self.control.nslots) if i != self.slot)
            if last:
                self._reclaim_dead()
                if self.pending_total() == 0 and self.registry.is_empty():
                    self._remove_files()
            self.liveness.release(self.slot)

    def _still_published(self):
        """Is the control segment at our bus's name still the one we attached to?"""
        mapping = segments.open_existing(segments.file_name(self.stem, "ctl"))
        if mapping is None:
            return False
        try:
            return int.from_bytes(mapping[H_BOOT : H_BOOT + 8], "little") == self.control.boot_id
        finally:
            mapping.close()

    def _close_local(self):
        self.registry.close()
        for _gen, fd in self._fifo_fds.values():
            os.close(fd)
        self._fifo_fds.clear()
        os.close(self.fifo_fd)
        self._rings.clear()
        self._owned.clear()
        os.close(self.lock_fd)

    def other_live_pids(self):
        """Pids of the other processes attached now."""
        return [self.liveness.holder(i) for i in self.live_slots() if i != self.slot]

    def destroy(self):
        """Remove the whole bus now (the serve master's exit, after its children
        are gone).  A bus that other live processes still use (a second
        program on the same prefix) is only detached from: it is theirs too.
        True if the bus was removed."""
        with self._locked_bus():
            others = self.other_live_pids()
            if not others:
                for ring in self.all_rings():
                    ring.close(self.slot)
                self._remove_files()
        if others:
            logger.warning(
                "bus %s is still used by pid(s) %s: leaving it to them", self.prefix,
                ", ".join(map(str, others[:8])) + (" ..." if len(others) > 8 else ""),
            )
            self.detach()
            return False
        self.usable = False
        if _buses.get(self.prefix) is self:
            _buses.pop(self.prefix, None)
        self._unregister_exit_hooks()
        self._close_local()
        return True

    def _remove_files(self):
        """Unlink every file of the bus.  Caller holds the bus lock (see _locked_bus)."""
        if self.registry is not None:
            self.registry.close()
        for p in segments.bus_files(self.stem):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def _forget_after_fork(self):
        self.usable = False
        for fd in [fd for _gen, fd in self._fifo_fds.values()] + [self.fifo_fd, self.lock_fd]:
            try:
                os.close(fd)
            except OSError:
                pass
        self._fifo_fds = {}
        self._rings = {}
        self._owned = {}
        self._lock = threading.RLock()
        if self._hub is not None:
            self._hub.forget_after_fork()
        self.registry.reset_after_fork()
        self._unregister_exit_hooks()

    def _unregister_exit_hooks(self):
        atexit.unregister(self.detach)
        finalizer, self._mp_finalizer = getattr(self, "_mp_finalizer", None), None
        if finalizer is not None:
            finalizer.cancel()

