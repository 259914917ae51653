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
  while no worker is up;
* USR2 rolls the protocol servers (their WebSockets close with 1012);
* a stop drains in order: protocol servers first (stop accepting, finish
  HTTP, close WebSockets 1001), then workers;
* the master creates the bus at start, reclaims a dead child's slot, rings
  and memberships as soon as it is reaped, and removes the bus at exit.
"""

import signal
import sys
import time

from gunicorn import sock
from gunicorn.arbiter import Arbiter
from gunicorn.errors import HaltServer

from . import _shm, bus as bus_mod
from .processes import set_title


class ShmArbiter(Arbiter):
    SIGNALS = Arbiter.SIGNALS  # HUP QUIT INT TERM TTIN TTOU USR1 USR2 WINCH

    def __init__(self, app):
        # gunicorn keeps these on the class; ours are per arbiter.
        self.WORKERS = {}
        self.LISTENERS = []
        self.bus = None
        self._slots = {}
        self._halting = False
        super().__init__(app)

    # ---------------------------------------------------------------- setup

    def setup(self, app):
        super().setup(app)
        self.num_protocol = self.cfg.protocol_servers
        self.protocol_timeout = self.cfg.protocol_timeout

    def start(self):
        super().start()
        self.bus = bus_mod.attach(self.cfg.prefix, kind="master", label=f"master {self.proc_name}")
        self.bus.control.set_master_slot(self.bus.slot)
        self.log.info(
            "Bus %r ready in /dev/shm; %d protocol server(s), %d worker(s) x %d thread(s)",
            self.cfg.prefix, self.num_protocol, self.num_workers, self.cfg.threads,
        )

    def run(self):
        set_title(f"shmchannels: master [{self.proc_name}]")
        super().run()

    # ---------------------------------------------------------------- pools

    def children(self, kind):
        return {pid: w for pid, w in self.WORKERS.items() if w.kind == kind and not getattr(w, "retiring", False)}

    def spawn_worker(self, kind="worker"):
        from shmchannels.protocol_process import ProtocolServerProcess
        from shmchannels.workers.process import ChannelWorkerProcess

        # gunicorn's spawn_worker builds ``self.worker_class`` with
        # ``self.LISTENERS`` and ``self.timeout``: point them at the kind.
        listeners, timeout = self.LISTENERS, self.timeout
        if kind == "protocol":
            self.worker_class = ProtocolServerProcess
            self.timeout = self.protocol_timeout
        else:
            self.worker_class = ChannelWorkerProcess
            ChannelWorkerProcess.listeners_to_close = tuple(listeners)
            self.LISTENERS = []
        try:
            pid = super().spawn_worker()  # only the parent returns
        finally:
            self.LISTENERS, self.timeout = listeners, timeout
        return pid

    def spawn_workers(self):
        self.manage_workers()

    def manage_workers(self):
        for kind, target in (("protocol", self.num_protocol), ("worker", self.num_workers)):
            kids = sorted(self.children(kind).items(), key=lambda kv: kv[1].age)
            for _ in range(target - len(kids)):
                self.spawn_worker(kind)
                time.sleep(0.05)
            while len(kids) > target:
                pid, worker = kids.pop(0)  # the oldest go first
                self.retire(pid, worker, signal.SIGTERM)

    def retire(self, pid, worker, sig):
        worker.retiring = True
        self.kill_worker(pid, sig)

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
            self.bus.control.beat(self.bus.slot)  # the master's own pulse, for `status`
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
        before = set(self.WORKERS)
        try:
            super().reap_workers()
        except HaltServer:
            if not self._halting:
                raise
            # Already halting: a second child failing to boot changes nothing.
        finally:
            gone = before - set(self.WORKERS)
            for pid in gone:
                self._slots.pop(pid, None)
            if gone and self.bus is not None:
                # Reclaim at once: the dead child's rings, memberships and any
                # half-written record are cleaned up before anyone waits on them.
                n = self.bus.reclaim_dead()
                if n:
                    self.log.info("reclaimed %d dead process slot(s) on the bus", n)

    # --------------------------------------------------------------- signals

    def reload(self):
        """HUP: new workers with new code and config; protocol servers stay."""
        self._stats["reloads"] += 1
        old_address = self.cfg.address
        self.app.reload()
        self.setup(self.app)
        self.log.reopen_files()
        if old_address != self.cfg.address:
            self.log.warning("bind changed on HUP: protocol servers keep their sockets until a restart")
        self.cfg.on_reload(self)
        old = list(self.children("worker").items())
        for _ in range(self.num_workers):
            self.spawn_worker("worker")
        for pid, worker in old:
            self.retire(pid, worker, signal.SIGTERM)  # finish the current consumer, then exit
        self.log.info("rolled %d worker(s); protocol servers untouched", len(old))

    def handle_usr2(self):
        """Roll the protocol servers: new ones first, then the old ones close
        their WebSockets with 1012 (service restart) and drain."""
        old = list(self.children("protocol").items())
        for _ in range(self.num_protocol):
            self.spawn_worker("protocol")
        for pid, worker in old:
            self.retire(pid, worker, signal.SIGUSR2)
        self.log.info("rolling %d protocol server(s)", len(old))

    def handle_winch(self):
        self.log.debug("SIGWINCH ignored")

    # ------------------------------------------------------------------ stop

    def stop(self, graceful=True):
        """Graceful: protocol servers drain first, then workers.  Otherwise
        QUIT everyone.  Whatever is left after graceful_timeout is killed."""
        unlink = self.reexec_pid == self.master_pid == 0 and not self.systemd and not self.cfg.reuse_port
        sock.close_sockets(self.LISTENERS, unlink)
        self.LISTENERS = []
        deadline = time.time() + self.cfg.graceful_timeout
        if graceful:
            for kind in ("protocol", "worker"):
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
        self.reap_workers()

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
            if self.bus is not None:
                self.bus.destroy()
                self.bus = None
        sys.exit(exit_status)
