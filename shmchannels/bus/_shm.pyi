"""Typed interface of shmchannels._shm, the CPython binding (_shm.c) of the C
core (ring.c, ring.h; both segment layouts in shm_layout.h)."""

from _typeshed import WriteableBuffer as Buffer
from collections.abc import Sequence
from typing import Final, Literal, TypeAlias, final

# A record as get() returns it: (flags, body, meta or None, deadline_ns).
_Record: TypeAlias = tuple[int, bytes, bytes | None, int]
_HeadState: TypeAlias = Literal["empty", "ready", "pad", "skip", "writing", "unwritten"]

@final
class Writer:
    """This process's slot identity and intent record on one bus."""

    def __init__(self, mem: Buffer, intent_offset: int, slot: int, gen: int) -> None: ...
    @property
    def valid(self) -> bool:
        """False in a forked child (the identity belongs to the parent)."""

@final
class Ring:
    """A lock-free MPMC record ring in a shared mapping."""

    def __init__(self, mem: Buffer, writer: Writer | None = None) -> None: ...
    def put(self, body: bytes, meta: bytes | None, expiry_ns: int, capacity: int, flags: int, /) -> int:
        """One of the PUT_* constants."""
    def get(self) -> _Record | None | Literal[False]:
        """A record; None if empty; False if the head record is not ready."""
    def get_many(self, n: int, /) -> tuple[list[_Record], bool | None]:
        """Up to n records, and None (ran empty), False (head not ready) or True (n reached)."""
    def has_data(self) -> bool: ...
    def head_state(self) -> tuple[int, _HeadState, int, int, int, int]:
        """(pos, state, pid, slot, gen, len) of the record at the head."""
    def recover(self, pos: int, total: int, /) -> bool:
        """Skip a dead writer's claim; True when nothing in it is left unready."""
    def discard_all(self) -> int: ...
    def reset(self) -> None: ...
    def purge(self) -> int: ...
    def repair(self) -> None: ...
    def damage(self) -> str | None: ...
    def close(self, closer: int, /) -> None: ...
    def retire(self, idle_ns: int, closer: int, /) -> bool: ...
    def fifo_add(self, slot: int, /) -> None: ...
    def fifo_remove(self, slot: int, /) -> None: ...
    def fifo_slots(self) -> list[int]: ...
    def notify(self) -> None: ...
    def stats(self) -> dict[str, int | bool]:
        """sent, pending, bytes_used, data_size, full, expired, recovered,
        oldest_sent_ns, created_ns, last_put_ns, fifo_waiters, futex_waiters
        (ints) and closed (bool)."""
    @property
    def closed(self) -> bool: ...
    @property
    def closer(self) -> int | None: ...
    @property
    def pending(self) -> int: ...
    @property
    def fifo_waiters(self) -> int: ...
    @property
    def futex_waiters(self) -> int: ...
    @property
    def ring_id(self) -> int: ...
    @property
    def owner(self) -> tuple[int, int] | None:
        """(slot, gen) of the owning process, or None."""
    @property
    def key(self) -> str: ...
    @property
    def data_size(self) -> int: ...

@final
class Mem:
    """Atomic 64-bit words in a shared mapping."""

    def __init__(self, mem: Buffer, /) -> None: ...
    def load(self, offset: int, /) -> int: ...
    def store(self, offset: int, value: int, /) -> None: ...
    def cas(self, offset: int, expected: int, new: int, /) -> bool: ...
    def add(self, offset: int, delta: int, /) -> int:
        """Returns the previous value."""
    def read_intent(self, offset: int, /) -> tuple[int, int, int] | None:
        """(ring_id, pos, total) of the claim in flight in the intent record at
        offset, or None (none in flight, or its writer is mid-update)."""

def ring_init(
    mem: Buffer, data_size: int, ring_id: int, salt: int, owner_slot: int, owner_gen: int, key: str, /
) -> None: ...
def wait_enter(rings: Sequence[Ring], /) -> tuple[int, ...]: ...
def wait(rings: Sequence[Ring], seqs: Sequence[int], timeout: float, /) -> bool:
    """False on timeout.  Releases the GIL."""
def wait_leave(rings: Sequence[Ring], /) -> None: ...
def set_fault(point: int, countdown: int, /) -> None:
    """SIGKILL this process at fault point `point` after `countdown` passes (tests)."""
def monotonic_ns() -> int: ...

# ring segment
HEADER_SIZE: Final[int]
RECORD_HEADER: Final[int]
RECORD_ALIGN: Final[int]
MAX_SLOTS: Final[int]
INTENT_SIZE: Final[int]
LAZY_POPULATE: Final[int]

# put() results
PUT_OK: Final[int]
PUT_WAKE: Final[int]
PUT_FULL: Final[int]
PUT_NOSPACE: Final[int]
PUT_TOO_BIG: Final[int]
PUT_CLOSED: Final[int]
PUT_FORKED: Final[int]
PUT_NOMEM: Final[int]

# fault-injection points
FAULT_NONE: Final[int]
FAULT_AFTER_INTENT: Final[int]
FAULT_AFTER_CLAIM: Final[int]
FAULT_AFTER_PAD: Final[int]
FAULT_AFTER_HEADER: Final[int]
FAULT_BEFORE_COMMIT: Final[int]
FAULT_CONSUMER_COPIED: Final[int]
FAULT_CONSUMER_TAKEN: Final[int]

# control segment (shm_layout.h; shmchannels/control.py re-exports them without the prefix)
CONTROL_MAGIC: Final[int]
CONTROL_VERSION: Final[int]
CONTROL_HEADER_SIZE: Final[int]
CONTROL_SLOT_SIZE: Final[int]
CONTROL_GROUP_BUCKETS: Final[int]
CONTROL_LABEL_SIZE: Final[int]
CONTROL_H_MAGIC: Final[int]
CONTROL_H_VERSION: Final[int]
CONTROL_H_CREATED: Final[int]
CONTROL_H_BOOT: Final[int]
CONTROL_H_FLUSH_EPOCH: Final[int]
CONTROL_H_MASTER: Final[int]
CONTROL_H_RING_SIZE: Final[int]
CONTROL_H_REGISTRY_EPOCH: Final[int]
CONTROL_H_RECLAIMS: Final[int]
CONTROL_S_STATE: Final[int]
CONTROL_S_GEN: Final[int]
CONTROL_S_PID: Final[int]
CONTROL_S_KIND: Final[int]
CONTROL_S_STARTED: Final[int]
CONTROL_S_HEARTBEAT: Final[int]
CONTROL_S_INTENT: Final[int]
CONTROL_S_LABEL: Final[int]
