"""The control segment and process liveness.

The control segment holds the bus header, one slot per attached process and
the version counters that let processes cache group membership.  A slot
records who the process is (pid, kind, generation) and its in-flight ring
claim (the *intent*, written by the C ring before every claim).

Liveness never comes from pids: each process holds a POSIX byte-range lock
on byte <slot> of the bus's lock file for as long as it lives, and the kernel
drops that lock when the process dies, however it dies.  A test with
``F_GETLK`` or a non-blocking ``lockf`` tells any other process whether the
owner of a slot is alive, immune to pid reuse.  POSIX locks are not inherited
across fork(), so a child can never keep its parent's slot alive.

The one blocking lock is the *bus lock* (another byte of the same file),
taken only while a process attaches, detaches or destroys the bus: rare,
short, and released by the kernel if its holder dies.
"""

import contextlib
import fcntl
import os
import struct
import time
from dataclasses import dataclass

from shmchannels.bus import _shm
from shmchannels.exceptions import BusError

# The layout is defined once, in shm_layout.h (the C ring writes the intent
# in every slot); these names are the offsets that _shm exports from there.
MAGIC = _shm.CONTROL_MAGIC  # b"SHMCTRL1", little-endian
VERSION = _shm.CONTROL_VERSION  # 2: registry epoch word; registry files named g<epoch>
HEADER_SIZE = _shm.CONTROL_HEADER_SIZE
SLOT_SIZE = _shm.CONTROL_SLOT_SIZE
GROUP_BUCKETS = _shm.CONTROL_GROUP_BUCKETS
LABEL_SIZE = _shm.CONTROL_LABEL_SIZE

# header words
H_MAGIC = _shm.CONTROL_H_MAGIC
H_VERSION = _shm.CONTROL_H_VERSION  # low 32 bits: version, high 32 bits: number of slots
H_CREATED = _shm.CONTROL_H_CREATED  # time.time_ns() at creation
H_BOOT = _shm.CONTROL_H_BOOT  # random id of this incarnation of the bus
H_FLUSH_EPOCH = _shm.CONTROL_H_FLUSH_EPOCH  # bumped by flush(); processes drop local buffers when it moves
H_MASTER = _shm.CONTROL_H_MASTER  # slot + 1 of the serve master, 0 if none
H_RING_SIZE = _shm.CONTROL_H_RING_SIZE  # default ring data size chosen by the bus creator
# which registry database is current (segments.registry_name); bumped by a rebuild
H_REGISTRY_EPOCH = _shm.CONTROL_H_REGISTRY_EPOCH
# bumped by every reclaim of a dead slot: caches of other processes' rings may be stale
H_RECLAIMS = _shm.CONTROL_H_RECLAIMS

# slot words (relative to the slot)
S_STATE = _shm.CONTROL_S_STATE  # 0 free, 1 active
S_GEN = _shm.CONTROL_S_GEN  # bumped each time the slot is claimed
S_PID = _shm.CONTROL_S_PID
S_KIND = _shm.CONTROL_S_KIND
S_STARTED = _shm.CONTROL_S_STARTED  # time.time_ns()
S_HEARTBEAT = _shm.CONTROL_S_HEARTBEAT  # CLOCK_MONOTONIC ns, written by the process's supervision tick
S_INTENT = _shm.CONTROL_S_INTENT  # _shm.INTENT_SIZE bytes owned by the C ring: iseq, ring_id, pos, total
S_LABEL = _shm.CONTROL_S_LABEL  # LABEL_SIZE bytes of UTF-8: a human name for `shmchannels status`

KINDS = {0: "process", 1: "master", 2: "protocol", 3: "worker", 4: "cli"}
KIND_CODES = {v: k for k, v in KINDS.items()}

STATE_FREE = 0
STATE_ACTIVE = 1

_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux x86-64 / arm64
BUS_LOCK_BYTE = 1 << 20  # beyond any slot byte
BUS_LOCK_TIMEOUT = 30.0


def segment_size(nslots):
    return HEADER_SIZE + nslots * SLOT_SIZE + GROUP_BUCKETS * 8


@dataclass(frozen=True)
class Slot:
    index: int
    state: int
    gen: int
    pid: int
    kind: str
    started_ns: int
    heartbeat_ns: int
    label: str


@dataclass(frozen=True)
class Intent:
    slot: int
    ring_id: int
    pos: int
    total: int


class Control:
    """Typed access to one mapped control segment."""

    def __init__(self, mapping):
        # Validate before exporting the mapping to Mem, so that a refused
        # segment can still be closed.
        magic, word = struct.unpack_from("QQ", mapping, H_MAGIC)
        if magic != MAGIC:
            raise BusError("not a shmchannels control segment (bad magic)")
        if word & 0xFFFFFFFF != VERSION:
            raise BusError(
                f"bus was created by an incompatible shmchannels (control version {word & 0xFFFFFFFF}, "
                f"this one speaks {VERSION}); stop its processes or use another prefix"
            )
        self.mapping = mapping
        self.mem = _shm.Mem(mapping)
        self.nslots = word >> 32
        self.slots_offset = HEADER_SIZE
        self.buckets_offset = HEADER_SIZE + self.nslots * SLOT_SIZE

    @staticmethod
    def initialise(mapping, nslots, ring_size):
        mem = _shm.Mem(mapping)
        mem.store(H_VERSION, VERSION | (nslots << 32))
        mem.store(H_CREATED, time.time_ns())
        mem.store(H_BOOT, int.from_bytes(os.urandom(8), "little"))
        mem.store(H_RING_SIZE, ring_size)
        mem.store(H_MAGIC, MAGIC)  # last: the segment is valid from here on

    # header
    @property
    def boot_id(self):
        return self.mem.load(H_BOOT)

    @property
    def created_ns(self):
        return self.mem.load(H_CREATED)

    @property
    def default_ring_size(self):
        return self.mem.load(H_RING_SIZE)

    @property
    def flush_epoch(self):
        return self.mem.load(H_FLUSH_EPOCH)

    def bump_flush_epoch(self):
        return self.mem.add(H_FLUSH_EPOCH, 1) + 1

    @property
    def registry_epoch(self):
        return self.mem.load(H_REGISTRY_EPOCH)

    def bump_registry_epoch(self):
        return self.mem.add(H_REGISTRY_EPOCH, 1) + 1

    @property
    def reclaims(self):
        return self.mem.load(H_RECLAIMS)

    def bump_reclaims(self):
        self.mem.add(H_RECLAIMS, 1)

    @property
    def master_slot(self):
        v = self.mem.load(H_MASTER)
        return v - 1 if v else None

    def set_master_slot(self, slot):
        self.mem.store(H_MASTER, 0 if slot is None else slot + 1)

    # slots
    def slot_offset(self, index):
        return self.slots_offset + index * SLOT_SIZE

    def intent_offset(self, index):
        return self.slot_offset(index) + S_INTENT

    def read_slot(self, index):
        base = self.slot_offset(index)
        load = self.mem.load
        raw_label = bytes(self.mapping[base + S_LABEL : base + S_LABEL + LABEL_SIZE])
        return Slot(
            index=index,
            state=load(base + S_STATE),
            gen=load(base + S_GEN),
            pid=load(base + S_PID),
            kind=KINDS.get(load(base + S_KIND), "process"),
            started_ns=load(base + S_STARTED),
            heartbeat_ns=load(base + S_HEARTBEAT),
            label=raw_label.split(b"\0", 1)[0].decode("utf-8", "replace"),
        )

    def activate_slot(self, index, kind, label):
        """Mark a slot (whose lock we hold) as ours; returns its new generation."""
        base = self.slot_offset(index)
        gen = self.mem.add(base + S_GEN, 1) + 1
        self.mem.store(base + S_PID, os.getpid())
        self.mem.store(base + S_KIND, KIND_CODES.get(kind, 0))
        self.mem.store(base + S_STARTED, time.time_ns())
        self.mem.store(base + S_HEARTBEAT, _shm.monotonic_ns())
        self.set_label(index, label)
        for off in range(0, _shm.INTENT_SIZE, 8):  # no intent carries over from a previous owner
            self.mem.store(base + S_INTENT + off, 0)
        self.mem.store(base + S_STATE, STATE_ACTIVE)
        return gen

    def slot_gen(self, index):
        return self.mem.load(self.slot_offset(index) + S_GEN)

    def set_label(self, index, label):
        base = self.slot_offset(index) + S_LABEL
        raw = label.encode("utf-8")[: LABEL_SIZE - 1]
        self.mapping[base : base + LABEL_SIZE] = raw + b"\0" * (LABEL_SIZE - len(raw))

    def set_kind(self, index, kind):
        self.mem.store(self.slot_offset(index) + S_KIND, KIND_CODES.get(kind, 0))

    def free_slot(self, index):
        base = self.slot_offset(index)
        for off in range(0, _shm.INTENT_SIZE, 8):
            self.mem.store(base + S_INTENT + off, 0)
        self.mem.store(base + S_STATE, STATE_FREE)

    def beat(self, index, value_ns=None):
        """Record a heartbeat: CLOCK_MONOTONIC ns of the last sign of health
        (for a worker: when its oldest running consumer started)."""
        self.mem.store(self.slot_offset(index) + S_HEARTBEAT, _shm.monotonic_ns() if value_ns is None else value_ns)

    def find_pid(self, pid):
        """The active slot of process ``pid``, or None."""
        for i in range(self.nslots):
            base = self.slot_offset(i)
            if self.mem.load(base + S_PID) == pid and self.mem.load(base + S_STATE) == STATE_ACTIVE:
                return i
        return None

    def intent(self, index):
        """The slot's in-flight claim, or None.  A seqlock, read in C next to
        its writer (ring_put); None also while the writer is mid-update (it
        is alive then)."""
        hit = self.mem.read_intent(self.intent_offset(index))
        return None if hit is None else Intent(index, hit[0], hit[1], hit[2])

    # group version buckets
    def bucket_offset(self, bucket):
        return self.buckets_offset + (bucket % GROUP_BUCKETS) * 8

    def bucket_version(self, bucket):
        return self.mem.load(self.bucket_offset(bucket))

    def bump_bucket(self, bucket):
        self.mem.add(self.bucket_offset(bucket), 1)

    def bump_all_buckets(self):
        for b in range(GROUP_BUCKETS):
            self.mem.add(self.buckets_offset + b * 8, 1)


class Liveness:
    """Kernel-managed liveness: byte i of the lock file is held by slot i's process."""

    def __init__(self, fd):
        self.fd = fd

    def try_hold(self, index):
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, index)
            return True
        except (BlockingIOError, PermissionError):
            return False

    def release(self, index):
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, index)

    def holder(self, index):
        """The pid holding slot ``index``'s lock, or 0 when nobody does.

        Our own locks are invisible to F_GETLK (it reports conflicts only),
        so callers check their own slot separately.
        """
        probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, index, 1, 0)
        kind, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(self.fd, fcntl.F_GETLK, probe))
        return 0 if kind == fcntl.F_UNLCK else pid

    @contextlib.contextmanager
    def bus_lock(self, timeout=BUS_LOCK_TIMEOUT):
        """Hold the bus lock (attach, detach, destroy; never the message path).

        Its holder's death releases it, but a holder that hangs would block
        every attach on the host; so waiting is bounded and the error names
        the holder.  Waiting polls with a growing sleep: this lock is taken
        a handful of times in a process's life.
        """
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            try:
                fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, BUS_LOCK_BYTE)
                break
            except (BlockingIOError, PermissionError):
                if time.monotonic() > deadline:
                    raise BusError(
                        f"the bus lock has been held for over {timeout:.0f} s by pid {self.holder(BUS_LOCK_BYTE)}; "
                        "is that process hung?"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        try:
            yield
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, BUS_LOCK_BYTE)
