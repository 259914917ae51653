"""The channel-worker process: gunicorn's Worker running consumers.

Subclassing gunicorn's Worker keeps its signal semantics (TERM: finish the
current consumers and exit; QUIT/INT: exit now; ABRT: exit 1 after a
timeout; USR1: reopen logs), ``max_requests`` with jitter, and the boot and
app-load exit codes that make the master halt instead of looping.
"""

import asyncio
import os
import select
import signal
import time

from gunicorn.errors import AppImportError
from gunicorn.workers.base import Worker

from shmchannels import objects
from shmchannels.runtime import processes

from shmchannels.workers.runner import ConsumerRunner, select_channels

TICK = 1.0


class ChannelWorkerProcess(Worker):
    kind = "worker"
    #: the master's listening sockets, closed in the child: workers never accept
    listeners_to_close = ()

    def init_process(self):
        processes.die_with_parent()
        processes.close_fds(self.listeners_to_close)
        self.sockets = []
        processes.set_title(f"shmchannels: worker [{self.cfg.proc_name}]")
        processes.wire_logging(self.log, self.cfg.loglevel)
        super().init_process()

    def load_wsgi(self):
        # gunicorn calls this "the WSGI app"; for us it is the routing bundle
        # (router + channels), loaded here so import errors exit with
        # APP_LOAD_ERROR and halt the master.
        self.bundle = self.app.wsgi()
        # The bus too, while still booting: a bus this worker cannot attach
        # exits with BUS_UNAVAILABLE (the master halts on it before the pool
        # ever booted, retries later after).  Its slot on the bus also tells
        # the master it is up.
        self.layer = processes.attached_layer(self.log, self.cfg, block_timeout=TICK)
        objects.use_layer(self.layer)  # Channel/Group in consumers use this bus
        self.bus = self.layer.core.bus
        # An ASGI worker is "up" (what a HUP roll waits for before it retires
        # the old workers) once its lifespan startup completed.
        self.bus.describe("starting" if self.bundle.asgi else "worker", f"worker {self.age}")

    def notify(self):
        super().notify()
        bus = getattr(self, "bus", None)
        runner = getattr(self, "runner", None)
        if bus is not None and bus.usable and runner is not None:
            busy = runner.busy_since()
            bus.beat(None if busy is None else int(busy * 1e9))

    def run(self):
        if self.bundle.asgi is not None:
            return self.run_asgi()
        cfg = self.cfg
        router = self.bundle.router
        channels = select_channels(router.channels(), cfg.only_channels, cfg.exclude_channels)
        self.runner = ConsumerRunner(
            self.layer, router, channels, threads=cfg.threads,
            max_messages=self.max_requests if cfg.max_requests else None,
        )
        self.log.info("worker %s listening on %s with %d thread(s)", self.pid, ", ".join(channels), cfg.threads)
        processes.freeze_startup_objects()
        self.runner.start()
        while self.alive and self.runner.alive:
            self.notify()
            if not processes.parent_alive(self.ppid):
                self.log.info("Parent changed, shutting down: %s", self)
                break
            try:
                select.select([self.PIPE[0]], [], [], TICK)  # woken early by signals
                os.read(self.PIPE[0], 4096)
            except (BlockingIOError, InterruptedError):
                pass
        self.runner.stop()
        deadline = time.monotonic() + cfg.graceful_timeout
        while not self.runner.join(timeout=TICK):
            self.notify()
            if time.monotonic() > deadline:
                self.log.warning("consumers still running after graceful_timeout; exiting anyway")
                break

    # ------------------------------------------------------------------ ASGI

    def run_asgi(self):
        from shmchannels.workers.asgi_host import AsgiHost
        from shmchannels.workers.asgi_lifespan import LifespanFailed

        cfg = self.cfg
        self.host = AsgiHost(
            self.layer, self.bundle.asgi, resume=cfg.resume, graceful_timeout=cfg.graceful_timeout,
            max_requests=self.max_requests if cfg.max_requests else 0,
        )
        processes.use_uvloop(cfg.uvloop)
        try:
            asyncio.run(self._serve_asgi())
        except LifespanFailed as exc:
            raise AppImportError(f"the ASGI application's lifespan startup failed: {exc}") from None

    def _ready(self):
        processes.freeze_startup_objects()
        self.bus.describe("worker")
        self.log.info("worker %s hosting the ASGI application %s", self.pid, self.cfg.asgi)

    async def _serve_asgi(self):
        loop = asyncio.get_running_loop()

        # TERM stops the host (hand over, finish, shut down); QUIT and INT keep
        # gunicorn's handlers (leave at once).  Not loop.add_signal_handler:
        # it learns of a signal through a byte in the loop's self-pipe, and
        # that pipe fills up when thousands of sync_to_async calls come back
        # at once (a Channels broadcast to 1000 consumers): the TERM was lost
        # and the worker served on until it was killed.
        def on_term(signum, frame):
            self.alive = False
            loop.call_soon_threadsafe(self.host.stop)

        signal.signal(signal.SIGTERM, on_term)
        beat = loop.call_soon(self._asgi_tick)
        try:
            await self.host.serve(ready=self._ready)
        finally:
            beat.cancel()
            if self._tick_handle is not None:
                self._tick_handle.cancel()

    _tick_handle = None

    def _asgi_tick(self):
        """Heartbeat from the loop itself: a stuck loop stops beating."""
        self._tick_handle = asyncio.get_running_loop().call_later(TICK, self._asgi_tick)
        Worker.notify(self)
        if self.bus.usable:
            self.bus.beat(None)
        if not processes.parent_alive(self.ppid):
            self.log.info("Parent changed, shutting down: %s", self)
            self.alive = False
        if not self.alive:
            self.host.stop()
