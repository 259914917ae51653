"""The master: gunicorn's Arbiter, supervising two pools.

Protocol servers hold the listening sockets and the clients' connections;
channel workers run consumers.  Everything else is gunicorn's arbiter: the
signal queue, the one-second supervision loop, reaping, pidfile, logging,
the boot-error halt.  What differs:

* two pools, counted and culled separately (``protocol_servers``,
  ``workers``), each child tagged with its ``kind``;
* heartbeats come from the bus: each child stamps its slot of the control
  segment.  A protocol server's stamp is its event loop ticking ("event loop
  stuck"); a worker's is the start of its oldest running consumer ("consumer
  ran past its timeout");
* HUP rolls the *workers only*, with new code: protocol servers keep every
  WebSocket and keep-alive connection, and messages wait in their channels
  while no worker is up; ASGI workers (``asgi``) overlap instead: the old
  ones are retired once their successors are up, and hand their WebSockets
  over to them (workers/asgi_host.py);
* USR2 rolls the protocol servers (their WebSockets close with 1012);
* rolls are generations that each pool converges to (``manage_workers``):
  any burst of HUPs ends with exactly the configured children, all of the
  newest generation; a retired child that outstays graceful_timeout is killed;
* a stop drains in order: protocol servers first (stop accepting, finish
  HTTP, close WebSockets 1001), then workers;
* boot errors halt, for both pools: a child that cannot boot (exit 3) or
  load the application (exit 4), or a pool whose children keep exiting with
  an error right after they start, stops the master with the reason;
* the master attaches the bus before anything else and refuses to start if
  another live master holds it; it reclaims a dead child's slot, rings and
  memberships as soon as it is reaped, and removes the bus at exit
  (``Bus.destroy``, which leaves a bus other live processes still use).
"""

import errno
import os
import signal
import sys
import time

from gunicorn import sock
from gunicorn.arbiter import Arbiter
from gunicorn.errors import ConfigError, HaltServer

from shmchannels.bus import _shm
from shmchannels import bus as bus_mod
from shmchannels.runtime import config as config_mod, metrics, processes
from shmchannels.runtime.child_exits import NAMES, ChildExits
from shmchannels.runtime.processes import set_title

#: the named channels protocol servers send to; every message on them names a
#: connection of the protocol server that sent it (its ``reply_channel``)
PROTOCOL_CHANNELS = frozenset(("http.request", "http.disconnect", "websocket.connect", "websocket.receive",
                               "websocket.disconnect"))


def discard_orphaned_protocol_messages(bus):
    """Drop what waits on the protocol channels once no protocol server is left.

    Each such message belongs to a connection that closed with its server, so
    nobody may act on it: a worker started on this prefix later would run
    consumers for clients that are gone.  They would also keep the bus's files
    after its last process (a second program on the prefix) detaches, since a
    bus with messages at rest outlives its processes.  Group TERM right after a
    HUP leaves exactly that: resumes a protocol server sent before its own TERM."""
    if any(bus.control.read_slot(i).kind == "protocol" for i in bus.live_slots() if i != bus.slot):
        return  # a standalone protocol server (``python -m shmchannels.server``) still serves them
    for ring in bus.all_rings():
        if ring.owner is None and ring.key in PROTOCOL_CHANNELS:
            ring.discard_all()

KINDS = ("protocol", "worker")
#: a retiring child that is still there this long after graceful_timeout is killed
RETIRE_GRACE = 1.0
#: ... plus, for a protocol server, the time its WebSocket close handshakes
#: may take after its HTTP drain (ProtocolConfig.ws_close_timeout)
WS_CLOSE_GRACE = 5.0
#: the supervision loop's tick while a pool converges (gunicorn's is 1 s)
ROLL_TICK = 0.05
#: seconds between the master's janitor passes over the bus (dead slots,
#: expired messages nobody reads, idle single-reader rings)
JANITOR_EVERY = 5.0


class StartError(Exception):
    """The master cannot start (another master on the prefix, a bus it
    cannot attach): nothing was forked, nothing shared was changed."""


def _signals_held_until_ready(cls):
    """The class of a child whose signals stay blocked (as the master blocks
    them around fork) until its own handlers are installed.

    A child inherits the master's Python handlers, which only queue the
    signal for a master loop the child never runs: a TERM sent between fork
    and the child's ``init_signals`` would be swallowed, and a retired child
    would live on.  Held, it is delivered to the child's own handler."""

    def make(*args):
        child = cls(*args)
        init_signals = child.init_signals

        def init_signals_then_release():
            init_signals()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, processes.HELD_SIGNALS)

        child.init_signals = init_signals_then_release
        return child

    return make


def claim_bus(cfg, proc_name):
    """Attach the bus and become its master, unless a live master holds it.

    Two masters on one prefix would share channels and each remove the
    bus at its exit, under the other's feet; so the second refuses.  The
    check and the claim happen under the bus lock: of two masters
    starting at once, exactly one wins."""
    options = config_mod.options(cfg)[1]
    prefix = options.prefix
    try:
        bus = bus_mod.attach(prefix, ring_size=options.ring_size, slots=options.slots, kind="master",
                             label=f"master {proc_name}")
    except (OSError, ValueError, TypeError, bus_mod.BusError) as exc:
        raise StartError(f"cannot attach the bus {prefix!r}: {type(exc).__name__}: {exc}") from None
    other = bus.claim_master()
    if other is not None:
        bus.detach()  # leave the bus as we found it: it is the other master's
        raise StartError(
            f"another `shmchannels serve` (master pid {other.pid}) is already running on bus prefix {prefix!r}; "
            f"stop it, or give this one its own prefix (--prefix, SHMCHANNELS_PREFIX or prefix in shmchannels.toml)"
        )
    return bus


class ShmArbiter(Arbiter):
    SIGNALS = Arbiter.SIGNALS  # HUP QUIT INT TERM TTIN TTOU USR1 USR2 WINCH

    def __init__(self, app):
        # gunicorn keeps these on the class; ours are per arbiter.
        self.WORKERS = {}
        self.LISTENERS = []
        self.bus = None
        self.metrics = self.master_stats = None
        self._slots = {}
        self._halting = False
        # Rolls: each pool has a target code generation.  HUP bumps the
        # workers', USR2 the protocol servers'; every child remembers the
        # generation it was forked for.  ``manage_workers`` converges each
        # pool to exactly its target count of current-generation children:
        # older ones are retired (workers once their successors are forked,
        # protocol servers once theirs are up), a retiring child that
        # outstays graceful_timeout is killed, and HUPs that arrive together
        # coalesce into one reload.  A child's signals are held from fork
        # until its own handlers are in place, so no retirement is lost.
        self.generation = dict.fromkeys(KINDS, 0)
        self._reload_requested = False
        self._converging = False
        self._next_janitor = 0.0
        super().__init__(app)
        self.exits = ChildExits(boot_error=self.WORKER_BOOT_ERROR, app_load_error=self.APP_LOAD_ERROR)

    # ---------------------------------------------------------------- setup

    def setup(self, app):
        super().setup(app)
        self.num_protocol = self.cfg.protocol_servers
        self.protocol_timeout = self.cfg.protocol_timeout

    def start(self):
        # The bus first: a master that may not run on this prefix must leave
        # before it binds, writes a pidfile or forks anything.
        self.bus = self.claim_bus()
        try:
            self.master_stats, self.metrics = metrics.start_for_master(self)
        except OSError as exc:
            self.release_bus()
            raise StartError(f"cannot serve metrics on {self.cfg.metrics!r}: {exc.strerror or exc}") from None
        try:
            super().start()
        except BaseException:
            self.release_bus()
            raise
        self.log.info(
            "Bus %r ready in /dev/shm; %d protocol server(s), %d worker(s) x %d thread(s)",
            self.cfg.prefix, self.num_protocol, self.num_workers, self.cfg.threads,
        )

    def claim_bus(self):
        return claim_bus(self.cfg, self.proc_name)

    def release_bus(self):
        """At the master's exit: remove the bus (``Bus.destroy``)."""
        if self.metrics is not None:
            self.metrics.stop()
        bus, self.bus = self.bus, None
        if bus is None:
            return
        try:
            bus.release_master()
        except Exception:  # pragma: no cover - the bus is going anyway
            pass
        discard_orphaned_protocol_messages(bus)
        bus.destroy()

    def run(self):
        set_title(f"shmchannels: master [{self.proc_name}]")
        super().run()

    # ---------------------------------------------------------------- pools

    def children(self, kind):
        return {pid: w for pid, w in self.WORKERS.items() if w.kind == kind and not w.retiring}

    def spawn_worker(self, kind="worker"):
        from shmchannels.runtime.protocol_process import ProtocolServerProcess
        from shmchannels.runtime.worker_process import ChannelWorkerProcess

        # gunicorn's spawn_worker builds ``self.worker_class`` with
        # ``self.LISTENERS`` and ``self.timeout``: point them at the kind.
        listeners, timeout, worker_class = self.LISTENERS, self.timeout, self.worker_class
        if kind == "protocol":
            self.worker_class = _signals_held_until_ready(ProtocolServerProcess)
            self.timeout = self.protocol_timeout
        else:
            self.worker_class = _signals_held_until_ready(ChannelWorkerProcess)
            ChannelWorkerProcess.listeners_to_close = tuple(listeners)
            self.LISTENERS = []
        master = os.getpid()
        signal.pthread_sigmask(signal.SIG_BLOCK, processes.HELD_SIGNALS)
        try:
            pid = super().spawn_worker()  # only the parent returns
        finally:
            if os.getpid() == master:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, processes.HELD_SIGNALS)
                self.LISTENERS, self.timeout, self.worker_class = listeners, timeout, worker_class
        worker = self.WORKERS[pid]
        worker.generation = self.generation[kind]
        worker.spawned = time.monotonic()
        worker.retiring = None  # monotonic deadline once retired
        return pid

    def spawn_workers(self):
        self.manage_workers()

    def manage_workers(self):
        """Converge both pools to their targets (see ``__init__``)."""
        if self._reload_requested:
            self._reload_requested = False
            self.apply_reload()
        up = self._up_pids()
        self._converging = False
        for kind, target in (("protocol", self.num_protocol), ("worker", self.num_workers)):
            self._converge(kind, target, up)
        self._kill_overdue()
        self._janitor()

    def _janitor(self):
        now = time.monotonic()
        if now < self._next_janitor or self.bus is None or not self.bus.usable:
            return
        self._next_janitor = now + JANITOR_EVERY
        try:
            reclaimed = self.bus.janitor()
        except Exception:  # the bus is the children's too; never take the master down over it
            self.log.exception("bus janitor pass failed")
            return
        if reclaimed:
            self.log.info("janitor reclaimed %d dead process slot(s) on the bus", reclaimed)

    def _up_pids(self):
        """pid -> kind of the children that are up: booted, with their slot on the bus."""
        if self.bus is None or not self.bus.usable:
            return {}
        control = self.bus.control
        up = {}
        for i in self.bus.live_slots():
            info = control.read_slot(i)
            if info.pid in self.WORKERS:
                up[info.pid] = info.kind
                self.master_stats.see(info)  # its counters outlive it (folded at reap)
        return up

    def wait_for_signals(self, timeout=1.0):
        # While a pool converges, look again soon: old children are retired
        # as soon as enough current ones are up.
        return super().wait_for_signals(ROLL_TICK if self._converging else timeout)

    def _converge(self, kind, target, up):
        gen = self.generation[kind]
        live = [(pid, w) for pid, w in self.WORKERS.items() if w.kind == kind and not w.retiring]
        current = [(pid, w) for pid, w in live if w.generation == gen]
        old = [(pid, w) for pid, w in live if w.generation != gen]

        def is_up(pid):
            return up.get(pid) == kind

        # Not up first (they serve nobody yet), then the oldest.
        by_retire_order = lambda kv: (is_up(kv[0]), kv[1].age)  # noqa: E731
        rolled = 0
        if kind == "worker" and not self.cfg.asgi:
            # Old workers go at once, their successors are forked right
            # after: messages wait in their channels meanwhile, and old and
            # new code never take turns.  (ASGI workers overlap instead, like
            # protocol servers: a resumed WebSocket waits for a worker that
            # is up, so old ones stay until their successors are.)
            for pid, w in old:
                self.retire(pid, w, signal.SIGTERM)
            rolled, old = len(old), []
        if len(current) > target:  # TTOU, or a smaller pool after HUP
            current.sort(key=by_retire_order)
            for pid, w in current[: len(current) - target]:
                self.retire(pid, w, signal.SIGTERM)
            current = current[len(current) - target:]
        if any(is_up(pid) for pid, _ in current):
            self.exits.child_up(kind)
        for i in range(target - len(current) if self.exits.may_spawn(kind) else 0):
            if i:
                time.sleep(0.05)
            self.spawn_worker(kind)
            self._converging = True
        if kind == "worker" and rolled:
            self.log.info("rolled %d worker(s); protocol servers untouched", rolled)
        # Old protocol servers stay until enough new ones are up, so the
        # clients they close (1012) reconnect to a server that accepts.
        ready = sum(1 for pid, _ in current if is_up(pid))
        keep = max(0, target - ready)
        if kind == "worker" and keep:
            # ASGI workers go together once every successor is up: a
            # WebSocket an old worker hands over is then resumed by new code,
            # not by another old worker about to hand it over again.
            keep = len(old)
        if ready < len(current) or old:
            self._converging = True
        if len(old) > keep:
            old.sort(key=by_retire_order)
            for pid, w in old[: len(old) - keep]:
                self.retire(pid, w, signal.SIGUSR2 if kind == "protocol" else signal.SIGTERM)

    def retire(self, pid, worker, sig):
        grace = RETIRE_GRACE + (WS_CLOSE_GRACE if worker.kind == "protocol" else 0.0)
        worker.retiring = time.monotonic() + self.cfg.graceful_timeout + grace
        self.kill_worker(pid, sig)

    def _kill_overdue(self):
        now = time.monotonic()
        for pid, worker in list(self.WORKERS.items()):
            if worker.retiring and now > worker.retiring and not getattr(worker, "overdue", False):
                worker.overdue = True
                self.log.warning("%s (pid:%s) did not exit within graceful_timeout (%s s) after it was retired: killing it",
                                 NAMES[worker.kind].capitalize(), pid, self.cfg.graceful_timeout)
                self.kill_worker(pid, signal.SIGKILL)

    # --------------------------------------------------------- supervision

    def heartbeat_age(self, pid, worker):
        """Seconds since the child's last heartbeat on the bus (or, while it
        boots, since gunicorn's temp-file notify)."""
        slot = self._slots.get(pid)
        if slot is None and self.bus is not None:
            slot = self.bus.control.find_pid(pid)
            if slot is not None:
                self._slots[pid] = slot
        if slot is not None:
            beat = self.bus.control.read_slot(slot).heartbeat_ns
            return max(0.0, (_shm.monotonic_ns() - beat) / 1e9)
        return time.monotonic() - worker.tmp.last_update()

    def murder_workers(self):
        if self.bus is not None:
            self.bus.beat()  # the master's own pulse, for `status`
        for pid, worker in list(self.WORKERS.items()):
            limit = self.protocol_timeout if worker.kind == "protocol" else self.timeout
            if not limit:
                continue
            try:
                age = self.heartbeat_age(pid, worker)
            except (OSError, ValueError):
                continue
            if age <= limit:
                continue
            if not worker.aborted:
                if worker.kind == "protocol":
                    self.log.critical("PROTOCOL SERVER TIMEOUT (pid:%s): event loop stuck for %.0f s", pid, age)
                else:
                    self.log.critical("WORKER TIMEOUT (pid:%s): a consumer ran %.0f s, past timeout %s s", pid, age, limit)
                worker.aborted = True
                self.kill_worker(pid, signal.SIGABRT)
            else:
                self.kill_worker(pid, signal.SIGKILL)

    def reap_workers(self):
        """gunicorn's reaping, for both pools: a child that could not boot
        (WORKER_BOOT_ERROR) or load the application (APP_LOAD_ERROR) halts
        the master instead of being respawned, and so does a pool whose
        children keep failing right after they start.  Every reaped child's
        slot, rings and memberships are reclaimed on the bus at once."""
        halt = None
        gone = 0
        try:
            while True:
                wpid, status = os.waitpid(-1, os.WNOHANG)
                if not wpid:
                    break
                if self.reexec_pid == wpid:
                    self.reexec_pid = 0
                    continue
                worker = self.WORKERS.pop(wpid, None)
                if worker is None:
                    self.log.debug("Reaped unknown child process (pid:%s, status:%s)", wpid, status)
                    continue
                gone += 1
                self._slots.pop(wpid, None)
                reason = self.exits.judge(self.log, wpid, worker, status)
                self.master_stats.reaped(wpid, worker, status, self._halting)
                if reason is not None and halt is None:
                    halt = reason
                worker.tmp.close()
                self.cfg.child_exit(self, worker)
        except OSError as e:
            if e.errno != errno.ECHILD:
                raise
        finally:
            if gone and self.bus is not None and self.bus.usable:
                # Reclaim at once: the dead child's rings, memberships and any
                # half-written record are cleaned up before anyone waits on them.
                n = self.bus.reclaim_dead()
                if n:
                    self.log.info("reclaimed %d dead process slot(s) on the bus", n)
        if halt is not None and not self._halting:
            raise HaltServer(*halt)

    # --------------------------------------------------------------- signals

    def handle_hup(self):
        """HUP: a reload at the next turn of the loop (HUPs that arrive
        together make one reload)."""
        self.log.info("Hang up: %s", self.master_name)
        self._reload_requested = True

    def reload(self):
        self._reload_requested = True

    def apply_reload(self):
        """New workers with new code and config; protocol servers stay."""
        old_address = self.cfg.address
        try:
            self.app.reload()
        except ConfigError as exc:
            self.log.error("HUP: the new config is invalid, keeping the running config and workers: %s", exc)
            return
        self._stats["reloads"] += 1
        self.setup(self.app)
        self.log.reopen_files()
        if old_address != self.cfg.address:
            self.log.warning("bind changed on HUP: protocol servers keep their sockets until a restart")
        self.cfg.on_reload(self)
        self.generation["worker"] += 1
        self.log.info("rolling the workers to generation %d; protocol servers untouched", self.generation["worker"])

    def handle_usr2(self):
        """Roll the protocol servers: new ones first, then the old ones close
        their WebSockets with 1012 (service restart) and drain."""
        self.generation["protocol"] += 1
        self.log.info("rolling the protocol servers to generation %d", self.generation["protocol"])

    def handle_winch(self):
        self.log.debug("SIGWINCH ignored")

    # ------------------------------------------------------------------ stop

    def stop(self, graceful=True):
        """Graceful: protocol servers drain first, then workers.  Otherwise
        QUIT everyone.  Whatever is left after graceful_timeout is killed."""
        self._halting = True  # a child failing to boot now changes nothing
        unlink = self.reexec_pid == self.master_pid == 0 and not self.systemd and not self.cfg.reuse_port
        sock.close_sockets(self.LISTENERS, unlink)
        self.LISTENERS = []
        deadline = time.time() + self.cfg.graceful_timeout
        if graceful:
            for kind in KINDS:
                pids = [pid for pid, w in self.WORKERS.items() if w.kind == kind]
                for pid in pids:
                    self.kill_worker(pid, signal.SIGTERM)
                while any(pid in self.WORKERS for pid in pids) and time.time() < deadline:
                    if self._quick_requested():
                        graceful = False
                        break
                    self.reap_workers()
                    time.sleep(0.05)
                if not graceful:
                    break
        if not graceful:
            self.kill_workers(signal.SIGQUIT)
            deadline = min(deadline, time.time() + 2.0)
            while self.WORKERS and time.time() < deadline:
                self.reap_workers()
                time.sleep(0.05)
        self.kill_workers(signal.SIGKILL)
        deadline = time.time() + 2.0
        while self.WORKERS and time.time() < deadline:
            self.reap_workers()
            time.sleep(0.01)

    def _quick_requested(self):
        try:
            sig = self.SIG_QUEUE.get_nowait()
        except Exception:
            return False
        if sig in (signal.SIGINT, signal.SIGQUIT):
            self.log.info("Quick shutdown requested")
            return True
        return False

    def halt(self, reason=None, exit_status=0):
        self._halting = True
        try:
            self.stop()
            log = self.log.info if exit_status == 0 else self.log.error
            log("Shutting down: %s", self.master_name)
            if reason is not None:
                log("Reason: %s", reason)
            if self.pidfile is not None:
                self.pidfile.unlink()
            self.cfg.on_exit(self)
        finally:
            self.release_bus()
        sys.exit(exit_status)
