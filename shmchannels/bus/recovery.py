"""Crash recovery: every recover, reset and reclaim decision of the bus.

No process ever waits on another on the message path, so a process killed
at any instruction leaves state that a survivor can read and repair without
its help.  Every claim in shared memory names its owner (slot, generation);
a slot's liveness is a kernel byte lock on the bus's lock file, released
however the process dies and immune to pid reuse.  Only a *dead* owner's
claim is ever recovered; a live but stopped one is left alone (its ring
fills and senders get ChannelFull; under ``shmchannels serve`` the master's
heartbeat kills it).

Crash table: one row per fault point.  "Test" names the test that kills a
process there (``tests/bus/test_crash.py`` unless a file is given);
``tests/test_architecture.py`` checks that every one exists.

| Killed or broken at                        | State left                                  | Who repairs it, how                                                                  | Within                                   | Test |
|--------------------------------------------|---------------------------------------------|--------------------------------------------------------------------------------------|------------------------------------------|------|
| producer: intent published, before claim   | an intent for a position nobody claimed     | nothing to repair: the intent is ignored, then overwritten                           | -                                        | test_producer_killed_between_claim_and_commit[after-intent] |
| producer: after the claim, before header   | claimed bytes with no header (unready head) | ``unstick``: the intents covering the head name a dead claimant; reclaim it, and ``Ring.recover`` turns its ``total`` into a SKIP | receiver: 20 ms grace (``STUCK_AFTER_NS``), parked ones look every 50 ms; full sender, master (SIGCHLD), next attach: at once | test_producer_killed_between_claim_and_commit[after-claim] |
| producer: after wrap padding, before header | PAD, then an unwritten record              | as above; recovery starts where ``head`` entered the claim                            | as above                                 | test_producer_killed_between_claim_and_commit[after-pad] |
| producer: after header, before the seal    | a WRITING record naming its writer          | ``unstick``: the header's writer is dead; its length becomes a SKIP                   | as above (measured 52-56 ms, ``bench/recovery.py``) | test_producer_killed_between_claim_and_commit[after-header], test_producer_killed_between_claim_and_commit[before-commit] |
| producer: anywhere, under load             | any of the above, many at once              | as above; a full ring's sender recovers without grace                                | as above                                 | test_random_sigkill_of_producers_under_load |
| a parked asyncio receiver's producer       | an unready head behind which a receiver parks | the receiver's 50 ms recheck (``STUCK_RECHECK``), not its 2 s watchdog             | 50 ms                                    | test_parked_async_receiver_recovers_a_dead_claim_without_waiting_for_its_watchdog |
| consumer: after copying, before taking     | nothing (head did not move)                 | nobody: the record stays for the next consumer                                       | -                                        | test_consumer_killed_mid_read[after-copy] |
| consumer: after taking                     | that message is gone                        | nobody: at-most-once delivery; it is never delivered twice                           | -                                        | test_consumer_killed_mid_read[after-take], test_random_sigkill_of_consumers_loses_at_most_one_each |
| the owner of ``prefix!`` rings             | rings nobody reads, memberships of its channels, its stats segment | ``reclaim``: close and unlink its rings and its stats segment, drop its memberships, free its slot; sends to it are dropped quietly | master: at SIGCHLD; a full sender: at once; a group send: within ``OWNER_CHECK_NS`` (200 ms); any attach; master janitor: 5 s | test_dead_owner_channels_are_reclaimed_and_sends_to_them_are_dropped, tests/bus/test_lifecycle.py::test_a_group_send_reclaims_dead_members_within_half_a_second |
| the minter of single-reader channels (``new_channel('x?')``) | messages waiting where only it would read | ``reclaim``: what waits in the ``?`` rings it minted is dropped and the rings unlinked, so they keep no bus alive | as above | tests/bus/test_lifecycle.py::test_a_single_reader_channel_of_a_dead_minter_does_not_keep_the_bus[fork], tests/bus/test_lifecycle.py::test_a_single_reader_channel_of_a_dead_minter_does_not_keep_the_bus[spawn] |
| a blob's sender: blob written, no record put, or records put, blob unpublished | a mode-0600 blob of a dead owner (records may name it) | ``blobs.sweep``: an unpublished blob of a dead owner is unlinked (at-most-once: a record naming it delivers nothing) | reclaim of its slot (attach, master at SIGCHLD, janitor); a sender of blobs: 1 s | tests/bus/test_blobs.py::test_a_sender_killed_before_publishing_its_blob_leaves_nothing[written], tests/bus/test_blobs.py::test_a_sender_killed_before_publishing_its_blob_leaves_nothing[put] |
| a blob's receiver: record taken, name not unlinked | a published blob nobody will read           | ``blobs.sweep``: any blob ``GRACE_NS`` (10 s) past its deadline is unlinked          | its expiry + 10 s, at the next attach or janitor pass | tests/bus/test_blobs.py::test_a_receiver_killed_after_taking_the_record_leaves_a_blob_the_janitor_reclaims |
| a blob's record expired or purged unread   | a published blob nobody will read           | as above                                                                             | as above                                 | tests/bus/test_blobs.py::test_a_blob_whose_record_expired_unread_is_reclaimed_by_the_janitor |
| holding the bus lock                       | nothing: it is an ``fcntl`` lock            | the kernel releases it at death                                                      | at once                                  | test_process_killed_holding_the_bus_lock_blocks_nobody |
| inside a registry (SQLite) write           | an uncommitted WAL frame                    | SQLite rolls it back; its lock is ``fcntl`` too                                      | at once                                  | test_registry_survives_writers_killed_mid_transaction, tests/bus/test_lifecycle.py::test_sigkill_during_group_add_never_damages_the_registry |
| the last process of a bus                  | the bus's files, maybe a dead claim         | the next attach of that prefix reclaims every dead slot; the first attach of any process collects dead buses (``gc.py``) | next attach                     | test_stale_bus_of_a_killed_last_process_is_reclaimed_on_open, tests/bus/test_lifecycle.py::test_a_dead_bus_is_removed_by_the_next_attach_to_any_prefix |
| two writers in one window, or a garbage record | an unready head no claim explains       | ``unstick`` resets the ring (drops its pending records, logs an error)                | ``STUCK_RESET_NS`` (2 s)                 | tests/bus/test_damage.py::test_a_corrupted_record_at_the_head_is_dropped_within_the_reset_time |
| ring header words overwritten              | head/tail inconsistent                      | ``check_damage``: ``Ring.repair`` jumps both past the damage, drops pending records | at the next purge, refused put or unready head | tests/bus/test_damage.py::test_corrupted_head_or_tail_words_are_detected_and_repaired |
| the registry file damaged                  | SQLite reports corruption                   | ``Registry`` rebuilds under epoch + 1 from readable rows; live processes re-add theirs | next registry use; idle members within a park timeout | tests/bus/test_lifecycle.py::test_a_damaged_registry_is_rebuilt_and_live_processes_restore_their_memberships |

A worker killed while it holds an HTTP request or a WebSocket message is
the protocol server's to notice (its ``__taken__`` sweep answers 503); see
``tests/runtime/test_worker_death.py``.
"""

import logging
import threading
import weakref

from shmchannels import names
from shmchannels.bus import _shm, blobs, rings as rings_mod, segments, stats, wake
from shmchannels.bus.control import STATE_ACTIVE
from shmchannels.exceptions import BusError, ChannelFull, MessageTooLarge

logger = logging.getLogger("shmchannels.bus")

#: how long a ring head may stay unready before we look for a dead writer
STUCK_AFTER_NS = 20_000_000
#: an unready head that no live claim explains is dropped after this long
STUCK_RESET_NS = 2_000_000_000

PUT_OK, PUT_WAKE, PUT_FULL, PUT_NOSPACE = _shm.PUT_OK, _shm.PUT_WAKE, _shm.PUT_FULL, _shm.PUT_NOSPACE
PUT_TOO_BIG, PUT_CLOSED, PUT_FORKED, PUT_NOMEM = _shm.PUT_TOO_BIG, _shm.PUT_CLOSED, _shm.PUT_FORKED, _shm.PUT_NOMEM


def head_unready(ring):
    """Records are committed in ``ring`` but its head one is not ready to
    take (a writer mid-copy, or dead): ``Recovery.unstick`` territory."""
    return ring.pending and not ring.has_data()


class Recovery:
    """What one process does for the dead processes of its bus.

    It works on the bus's parts (``control``, ``liveness``, ``registry``,
    ``rings``, ``wakeups``) through the ``Bus`` that owns it; during attach,
    before this process has a slot, ``rings`` and ``wakeups`` are None.
    """

    def __init__(self, bus):
        self.bus = bus
        # POSIX slot locks are per process: two threads of ours could both
        # "hold" a dead slot, so reclaims are serialised here too.
        self.lock = threading.RLock()
        self._stuck = {}  # ring id -> (head position, first seen unready at)
        self._reclaims_seen = 0
        self._cache_listeners = []  # weak methods called when caches of dead processes were dropped

    # ------------------------------------------------------------ dead slots

    def reclaim(self, index):
        """Reclaim slot ``index`` if its process is dead.  True if something was reclaimed."""
        bus = self.bus
        if index == bus.slot:
            return False
        with self.lock:
            if not bus.liveness.try_hold(index):
                return False
            try:
                old = bus.control.read_slot(index)
                if old.state != STATE_ACTIVE:
                    return False
                self.reclaim_held(index, old.gen)
                bus.control.free_slot(index)
                return True
            finally:
                bus.liveness.release(index)

    def reclaim_dead(self):
        """Reclaim every slot whose process has died."""
        control, liveness = self.bus.control, self.bus.liveness
        reclaimed = 0
        for i in range(control.nslots):
            if control.read_slot(i).state == STATE_ACTIVE and not liveness.holder(i):
                reclaimed += self.reclaim(i)
        return reclaimed

    def reclaim_dead_owners(self, keys):
        """Reclaim the dead owners of these ring keys (a group's targets).
        A slot that already has a new process only loses the old
        generation's memberships.  True if anything was dropped."""
        bus = self.bus
        dropped = False
        for key in keys:
            owner = names.owner_of(key)
            if owner is None or bus.is_alive(*owner):
                continue
            if not self.reclaim(owner[0]):
                bus.registry.drop_owner(*owner)
            bus.rings.forget(key)
            dropped = True
        return dropped

    def reclaim_held(self, index, gen, keep_stats=False, registry_until=None):
        """Clean up after the dead process (``index``, ``gen``) whose slot lock
        we hold: resolve its in-flight claim, close and unlink the rings it
        owned, take its bit off every ring, forget its memberships, unlink
        its stats segment (with ``keep_stats``, a serve child's own clean
        detach, it stays for the master to read at reap: ``sweep_stats``).

        ``registry_until``: a ``time.monotonic()`` deadline for forgetting
        the memberships (a process's own detach, under the bus lock that
        every attach and detach needs).  Past it, they are left for the next
        attach's sweep of dead owners, and a stopped registry writer holds
        up nobody for SQLite's busy timeout."""
        bus = self.bus
        stem = bus.stem
        slot = bus.control.read_slot(index)
        # our own clean detach is routine; a dead process's slot is news
        level = logging.DEBUG if (index, gen) == (getattr(bus, "slot", None), getattr(bus, "gen", None)) else logging.INFO
        logger.log(level, "reclaiming slot %d (pid %d, %s) of bus %s", index, slot.pid, slot.label or slot.kind, bus.prefix)
        intent = bus.control.intent(index)
        if intent is not None:
            ring = rings_mod.ring_by_id(stem, intent.ring_id)
            if ring is not None and not ring.recover(intent.pos, intent.total):
                logger.warning("could not resolve dead claim at %d in ring %s; resetting it", intent.pos, ring.key)
                ring.reset()
        tag = names.owner_tag(index, gen)
        for base, kind, m in segments.files_of_kind(stem, "ring", "owned"):
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
                ring = rings_mod.map_ring(base)
                if ring is not None:
                    ring.fifo_remove(index)
                    owner = names.member_owner(ring.key)
                    if owner is not None and names.owner_tag(*owner) == tag:
                        # a single-reader channel it minted: only it would ever read it, and what
                        # waits there would keep the bus's files after its last process left
                        ring.discard_all()
                        if ring.retire(0, index):
                            segments.unlink(base)
        try:
            bus.registry.drop_owner(index, gen, until=registry_until)
        except BusError as exc:
            if registry_until is None:
                raise
            logger.info("left the memberships of slot %d of bus %s to the next attach: %s", index, bus.prefix, exc)
        # its unpublished blobs (it died mid-send); others wait for their deadline
        blobs.sweep(stem, lambda s, g: names.owner_tag(s, g) != tag and bus.is_alive(s, g))
        if not keep_stats:
            segments.unlink(segments.file_name(stem, stats.suffix(index, gen)))
        bus.control.bump_reclaims()
        # The next process in this slot makes a fresh FIFO: stale wake-ups
        # and writers holding the old one cannot reach it.
        segments.unlink(wake.fifo_name(stem, index))
        if bus.wakeups is not None:
            bus.wakeups.forget(index)
        if bus.rings is not None:
            bus.rings.forget_owner(index, gen)

    # ------------------------------------------------------------ sweeps

    def sweep_at_attach(self):
        """What every attach does for the bus (under the bus lock): forget
        memberships whose owner is gone and drop expired messages, so that
        nothing dead or stale outlives its processes."""
        bus = self.bus
        live = [names.owner_tag(i, bus.control.slot_gen(i)) for i in bus.live_slots()]
        dropped = bus.registry.drop_owners_except(live)
        if dropped:
            logger.info("dropped memberships of dead owners in %d group(s) of bus %s", dropped, bus.prefix)
        self.purge_expired()
        self.sweep_stats()
        self.sweep_blobs()

    def purge_expired(self, rings=None):
        """Consume expired records at the head of every ring; repair damaged
        ones.  Returns how many head moves that took."""
        moved = 0
        for ring in self.bus.all_rings() if rings is None else rings:
            self.check_damage(ring)
            moved += ring.purge()
        return moved

    def janitor(self):
        """A supervisor's periodic pass: reclaim dead slots, purge expired
        messages, retire idle single-reader rings."""
        reclaimed = self.reclaim_dead()
        self.purge_expired()
        self.bus.rings.retire_idle()
        self.sweep_stats()
        self.sweep_blobs()
        return reclaimed

    def sweep_blobs(self):
        """Unlink the blobs nobody will read (``blobs.sweep``): those of
        senders that died before publishing them, and those past their
        deadline.  Returns how many."""
        return blobs.sweep(self.bus.stem, self.bus.is_alive)

    def sweep_stats(self):
        """Unlink the stats segments left by processes that are gone: a
        serve child's clean detach leaves its segment for the master to fold
        at reap; one that is not its slot's current generation and whose
        pid no longer exists (a zombie still does, so its master reaps it
        first) has nobody left to read it.  Returns how many."""
        bus = self.bus
        removed = 0
        for base, _, m in segments.files_of_kind(bus.stem, "stats"):
            slot, gen = int(m.group(1)[:3], 16), int(m.group(1)[3:], 16)
            if slot < bus.control.nslots:
                info = bus.control.read_slot(slot)
                if info.state == STATE_ACTIVE and (info.gen & names.GEN_MASK) == gen and bus.liveness.holder(slot):
                    continue
            if stats.pid_alive(stats.segment_pid(bus.stem, base)):
                continue
            segments.unlink(base)
            removed += 1
        return removed

    def on_stale_caches(self, method):
        """Call ``method()`` (held weakly) whenever ``maintain`` dropped caches of dead processes."""
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
        bus = self.bus
        bus.registry.refresh()
        reclaims = bus.control.reclaims
        if reclaims == self._reclaims_seen or not bus.usable:
            return False
        self._reclaims_seen = reclaims
        stale = bus.rings.drop_dead_owners()
        gone = bus.wakeups.forget_dead(bus.is_alive)
        listeners = []
        for ref in self._cache_listeners:
            method = ref()
            if method is not None:
                listeners.append(ref)
                method()
        self._cache_listeners = listeners
        return stale or gone

    # ------------------------------------------------------------ damage

    def check_damage(self, ring):
        """Repair ``ring`` if its header words are inconsistent.  True if it was damaged."""
        damage = ring.damage()
        if damage is None:
            return False
        logger.error("ring %s of bus %s is damaged (%s): dropping its pending records and repairing it",
                     ring.key, self.bus.prefix, damage)
        ring.repair()
        self._stuck.pop(ring.ring_id, None)
        return True

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
        bus = self.bus
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
        if state == "writing":  # the header names its writer
            claimants = [(slot, gen, None)]
        else:  # no header yet: the intents covering the head name the claimants
            claimants = []
            for i in range(bus.control.nslots):
                intent = bus.control.intent(i)
                if intent and intent.ring_id == ring.ring_id and intent.pos <= pos < intent.pos + intent.total:
                    claimants.append((i, None, intent))
        if any(bus.is_alive(c[0], c[1]) for c in claimants):
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

    # ------------------------------------------------------------ refused puts

    def settle_put(self, status, ring, key, body, meta, expiry_ns, capacity, flags):
        """Everything after a put that did not simply succeed: wake parked
        processes, recover a dead writer's claim, or raise.  False if the
        message was dropped because its channel's owner is gone."""
        bus = self.bus
        if status == PUT_OK:
            return True
        if status == PUT_WAKE:
            bus.wakeups.wake(ring)
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
                        bus.wakeups.wake(ring)
                    return True
            if status == PUT_FULL:
                raise ChannelFull(key)
            raise ChannelFull(f"{key} (ring out of space)")
        if status == PUT_CLOSED:
            if ring.owner is None and (ring := bus.rings.reopen(key, ring)) is not None:
                return self.settle_put(ring.put(body, meta, expiry_ns, capacity, flags), ring, key, body, meta,
                                       expiry_ns, capacity, flags)
            bus.rings.forget(key)
            return False
        if status == PUT_NOMEM:
            raise ChannelFull(f"{key}: no memory left in /dev/shm for this ring's pages (free space there)")
        if status == PUT_TOO_BIG:
            raise MessageTooLarge(f"{len(body)} byte message does not fit the {ring.data_size} byte ring of {key}")
        if status == PUT_FORKED:
            raise BusError("this bus handle belongs to the parent process; the child must re-attach")
        raise BusError(f"unexpected ring status {status}")
