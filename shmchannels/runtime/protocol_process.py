"""The protocol-server process: gunicorn's Worker running the asyncio server.

It never imports the application.  Signals, translated for an event loop:
TERM drains (stop accepting, finish HTTP, close WebSockets 1001); USR2 is the
master rolling protocol servers (the same, with 1012); QUIT/INT exit at once;
USR1 reopens logs; ABRT (a stuck loop, sent by the master) exits 1.  A timer
on the event loop stamps the heartbeat: if the loop stops running, the stamp
ages and the master aborts the process.
"""

import asyncio
import os
import signal
import sys

from gunicorn.workers.base import Worker

from shmchannels.runtime import config, processes

TICK = 1.0


class ProtocolServerProcess(Worker):
    kind = "protocol"

    def init_process(self):
        processes.die_with_parent()
        processes.set_title(f"shmchannels: protocol [{self.cfg.proc_name}]")
        processes.wire_logging(self.log, self.cfg.loglevel)
        super().init_process()

    def load_wsgi(self):
        """Protocol servers run no application code; they attach the bus here,
        while still booting: a bus they cannot attach exits with
        BUS_UNAVAILABLE (``child_exits``)."""
        self.layer = processes.attached_layer(self.log, self.cfg)
        bus = self.layer.core.bus
        bus.describe("protocol", f"protocol {self.age}")

    def init_signals(self):
        super().init_signals()
        signal.set_wakeup_fd(-1)  # asyncio installs its own
        # Until the event loop takes TERM and USR2 over (``_main``), they
        # note the request, which ``_main`` honours once it serves.
        self.early_stop = None

        def note(code):
            def handler(signum, frame):
                self.alive = False
                self.early_stop = self.early_stop or code
            return handler

        signal.signal(signal.SIGTERM, note(1001))
        signal.signal(signal.SIGUSR2, note(1012))

    def protocol_config(self):
        """The ProtocolConfig of this process (the listening sockets come
        from the master, so its ``bind`` is not used)."""
        return config.options(self.cfg)[0]

    def run(self):
        # Until it serves, a failure is a boot error (the master halts on
        # WORKER_BOOT_ERROR rather than restart it in a loop).
        self.booted = False
        processes.use_uvloop(self.cfg.uvloop)
        asyncio.run(self._main())

    async def _main(self):
        from shmchannels.server.server import ProtocolServer

        loop = asyncio.get_running_loop()
        layer = self.layer
        bus = layer.core.bus
        self.server = server = ProtocolServer(layer, self.protocol_config(), self.sockets, log=processes.logging.getLogger("shmchannels.server"))
        access = server.access_log
        access.fmt = self.cfg.access_log_format
        if self.cfg.accesslog:  # --access-logfile: gunicorn's access logger and its file, whatever the level
            access.logger, access.always = self.log.access_log, True

        def shutdown(code):
            self.alive = False
            server.begin_shutdown(ws_close_code=code)

        loop.add_signal_handler(signal.SIGTERM, shutdown, 1001)
        loop.add_signal_handler(signal.SIGUSR2, shutdown, 1012)
        def quit_now():  # gunicorn's quick stop; the access lines of the last 50 ms still go out
            access.flush()
            os._exit(0)

        loop.add_signal_handler(signal.SIGINT, quit_now)
        loop.add_signal_handler(signal.SIGQUIT, quit_now)
        loop.add_signal_handler(signal.SIGUSR1, self.log.reopen_files)
        loop.add_signal_handler(signal.SIGABRT, self._abort)

        def beat():
            self.notify()
            bus.beat()
            if not processes.parent_alive(self.ppid) and self.alive:
                self.log.info("Parent changed, shutting down: %s", self)
                shutdown(1001)
            loop.call_later(TICK, beat)

        beat()
        await server.serve()
        processes.freeze_startup_objects()
        self.booted = True
        if self.early_stop:
            shutdown(self.early_stop)
        self.log.info("protocol server %s listening on %s", self.pid, ", ".join(str(s.getsockname()) for s in self.sockets))
        await server.wait_closed()
        access.flush()  # the last batch: no line is lost on a clean stop

    def _abort(self):
        self.cfg.worker_abort(self)
        sys.exit(1)
