"""A process's attachment to the bus of one prefix.

All layer objects with the same prefix in one process share one ``Bus``: one
process slot, one wake FIFO, one table of mapped rings, one registry
connection.  The bus itself (the files in /dev/shm) is shared by every process
on the host that uses the prefix; there is no daemon and no broker.

``Bus`` is the facade over its parts, each in its own module:
``control`` (the control segment: slots, heartbeats, counters), ``liveness``
(kernel byte locks), ``registry`` (group memberships), ``rings``
(``rings.RingTable``: this process's ring handles), ``wakeups``
(``wake.WakeFifos``) and ``recovery`` (``recovery.Recovery``: everything done
for dead processes).

Life cycle
  attach   take the bus lock, open or create the control segment, reclaim
           slots of dead processes, claim a free slot (a kernel byte lock),
           release the bus lock.
  detach   close the rings this process owns, drop their memberships, free
           the slot; if no other process is attached and nothing is pending,
           remove every file of the bus.
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

from shmchannels import names
from shmchannels.bus import _shm, gc, rings as rings_mod, segments, stats as stats_mod
from shmchannels.bus.control import H_BOOT, STATE_ACTIVE, Control, Liveness, segment_size
from shmchannels.bus.recovery import Recovery
from shmchannels.bus.registry import Registry
from shmchannels.bus.wake import WakeFifos
from shmchannels.exceptions import BusError

logger = logging.getLogger("shmchannels.bus")

DEFAULT_RING_SIZE = 8 << 20
DEFAULT_SLOTS = 256
#: how long a detach tries to forget its memberships (under the bus lock)
#: before leaving them to the next attach: a registry write takes ms, and a
#: stopped writer would otherwise hold every attach and detach for 30 s
DETACH_REGISTRY_S = 0.5

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
    try:
        gc.collect(Bus, dry_run=False, exclude={prefix})
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
        self.slot = None
        self.registry = None
        self.rings = None
        self.wakeups = None
        self.stats = None
        self.recovery = Recovery(self)
        self._detach_listeners = []
        self._bus_lock_depth = 0
        self._bus_rlock = threading.RLock()
        self.lock_fd = segments.open_lock_file(self.stem)
        self.liveness = Liveness(self.lock_fd)
        try:
            with self._locked_bus():
                self.control = self._open_control(slots, ring_size)
                self.registry = Registry(self.stem, self.control, self._locked_bus)
                self.registry.initialise()
                self.recovery.reclaim_dead()
                self.slot = self._claim_slot()
                self.gen = self.control.activate_slot(self.slot, kind, label or _default_label())
                self.owner_tag = names.owner_tag(self.slot, self.gen)
                self.writer = _shm.Writer(self.control.mapping, self.control.intent_offset(self.slot), self.slot, self.gen)
                # owned by the slot like its ``prefix!`` rings: unlinked by
                # reclaim_held, at our detach or after our death
                self.stats = stats_mod.Stats.create(self.stem, self.slot, self.gen)
                self.recovery.sweep_at_attach()
        except BaseException:
            os.close(self.lock_fd)
            raise
        self.wakeups = WakeFifos(self.stem, self.slot, self.control.slot_gen)
        self.rings = rings_mod.RingTable(
            stem=self.stem, prefix=prefix, ring_size=ring_size, writer=self.writer, slot=self.slot, gen=self.gen,
            is_alive=self.is_alive, wake=self.wakeups.wake,
        )
        self.usable = True
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

    def _claim_slot(self):
        n = self.control.nslots
        start = random.randrange(n)
        for k in range(n):
            i = (start + k) % n
            if self.liveness.try_hold(i):
                old = self.control.read_slot(i)
                if old.state == STATE_ACTIVE:  # its process died without detaching
                    self.recovery.reclaim_held(i, old.gen)
                return i
        raise BusError(f"all {n} process slots of bus {self.prefix!r} are taken; raise `slots` when creating it")

    # ------------------------------------------------------- this process's slot

    def describe(self, kind=None, label=None):
        """Say what this process is, for `shmchannels status` and the master."""
        if kind is not None:
            self.control.set_kind(self.slot, kind)
        if label is not None:
            self.control.set_label(self.slot, label)

    def beat(self, busy_ns=None):
        """This process's heartbeat (``busy_ns``: how long its current job has run)."""
        self.control.beat(self.slot, busy_ns)

    def claim_master(self):
        """Record this process as the bus's serve master, unless another live
        master is recorded: then return that one's ``Slot`` and change nothing.
        Checked and claimed under the bus lock, so of two masters starting at
        once exactly one wins."""
        with self._locked_bus():
            slot = self.control.master_slot
            if slot is not None and slot != self.slot and self.is_alive(slot):
                info = self.control.read_slot(slot)
                if info.kind == "master":
                    return info
            self.control.set_master_slot(self.slot)
        return None

    def release_master(self):
        if self.control.master_slot == self.slot:
            self.control.set_master_slot(None)

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

    def other_live_pids(self):
        """Pids of the other processes attached now."""
        return [self.liveness.holder(i) for i in self.live_slots() if i != self.slot]

    def reclaim_dead(self):
        """Reclaim every slot whose process has died (the master, at SIGCHLD)."""
        return self.recovery.reclaim_dead()

    def janitor(self):
        """A supervisor's periodic pass (``Recovery.janitor``)."""
        return self.recovery.janitor()

    # ------------------------------------------------------------ whole bus

    def all_rings(self):
        """Every ring of the bus (opened read/write), for flush and status."""
        return rings_mod.all_rings(self.stem, self.writer)

    def flush(self):
        """Drop every pending message and membership on the whole bus.
        Processes drop their local buffers when they see the flush epoch move."""
        for ring in self.all_rings():
            ring.discard_all()
        self.registry.flush()
        self.control.bump_flush_epoch()

    def pending_total(self):
        """Unexpired messages waiting anywhere on the bus (expired ones are purged first)."""
        live = [r for r in self.all_rings() if r.owner is None or self.is_alive(*r.owner)]
        self.recovery.purge_expired(live)
        return sum(r.pending for r in live)

    def status(self):
        """A snapshot for `shmchannels status` and the statistics extension."""
        procs = [self.control.read_slot(i) for i in self.live_slots()]
        rings = self.all_rings()
        self.recovery.purge_expired(rings)
        stats = []
        for r in rings:
            st = r.stats()
            st["key"] = r.key
            st["owner"] = r.owner
            stats.append(st)
        return {"prefix": self.prefix, "processes": procs, "rings": stats, "groups": self.registry.counts()}

    # --------------------------------------------------------------- detach

    def on_detach(self, callback):
        """Call ``callback()`` when this process detaches (before anything is
        closed).  A bound method is held weakly: its object may go first."""
        ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)
        self._detach_listeners.append(ref)

    def detach(self):
        """Give up this process's slot; remove the bus if we were the last one."""
        if not self.usable or self.pid != os.getpid():
            return
        self._stop_using()
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

    def _stop_using(self):
        self.usable = False
        if _buses.get(self.prefix) is self:
            _buses.pop(self.prefix, None)
        self._unregister_exit_hooks()
        listeners, self._detach_listeners = self._detach_listeners, []
        for ref in listeners:
            callback = ref()
            if callback is None:
                continue
            try:
                callback()
            except Exception:
                logger.exception("detach listener of bus %s", self.prefix)

    def _detach_shared(self):
        with self._locked_bus():
            # Under a serve master, our stats segment stays for the master to
            # fold into its totals when it reaps us (then it unlinks it).
            master = self.control.master_slot
            keep = master is not None and master != self.slot and self.is_alive(master)
            self.recovery.reclaim_held(self.slot, self.gen, keep_stats=keep,
                                       registry_until=time.monotonic() + DETACH_REGISTRY_S)
            self.control.free_slot(self.slot)
            last = not any(self.liveness.holder(i) for i in range(self.control.nslots) if i != self.slot)
            if last:
                self.recovery.reclaim_dead()
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
        self.wakeups.close()
        self.rings.clear()
        os.close(self.lock_fd)

    def destroy(self):
        """Remove the whole bus now (the serve master's exit, after its children
        are gone).  A bus that other live processes still use (a second
        program on the same prefix) is only detached from: it is theirs too.
        So is a bus that holds what outlives processes: unexpired messages
        and memberships of named channels (a script's ``send('thumbnail')``,
        ``group_add('liveblog', 'liveblog.listener')``): the next start on
        the prefix finds them, as after a detach.  True if the bus was removed."""
        keep = False
        with self._locked_bus():
            others = self.other_live_pids()
            if not others:
                self.recovery.reclaim_dead()  # the children's rings and memberships
                keep = self.pending_total() > 0 or not self.registry.is_empty()
                if not keep:
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
        if keep:
            logger.info("bus %s keeps unexpired messages or memberships of named channels for the next start "
                        "(a layer's flush() drops them)", self.prefix)
            self.detach()
            return False
        self._stop_using()
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
        for fd in (self.lock_fd,):
            try:
                os.close(fd)
            except OSError:
                pass
        self.wakeups.forget_after_fork()
        self.rings.clear()
        self._detach_listeners = []
        self.registry.reset_after_fork()
        self._unregister_exit_hooks()

    def _unregister_exit_hooks(self):
        atexit.unregister(self.detach)
        finalizer, self._mp_finalizer = getattr(self, "_mp_finalizer", None), None
        if finalizer is not None:
            finalizer.cancel()
