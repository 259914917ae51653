"""``ProtocolServer``: listeners, reply readers, shutdown, stats, heartbeat.

    server = ProtocolServer(layer, ProtocolConfig(prefix="myapp"), sockets=[sock])
    await server.serve()            # listening; returns at once
    ...
    server.begin_shutdown(1001)     # or 1012 for a rolling restart
    await server.wait_closed()

The serve master binds the listening sockets and passes them in (each
protocol-server process accepts on the same sockets); without sockets the
server binds ``config.bind`` itself (standalone use, tests).

Replies: one task per reply prefix (``http.response.<process>!`` and
``websocket.send.<process>!``) iterates ``layer.stream(prefix)`` and hands
each message to whatever registered its full channel name (an HTTP request
cycle or a WebSocket connection): one dict lookup.  Messages for unknown
channels (the connection is gone) are dropped at debug level, as Daphne did.
A reply its target cannot handle (a malformed message) never escapes the
reader: the target answers 500 / closes (``reply_failed``).

Dead workers (docs/protocol.md, "Workers that die"): every request and
WebSocket message names this server's ``shmchannels.taken?`` channel in its
``__taken__`` key, and the worker that takes it first sends
``{"__taken__": [slot, gen(, order)], "reply_channel": ...}`` there.  Nobody
parks on that channel, so a marker wakes nobody and costs the worker one ring
write; every ``LIVENESS_INTERVAL`` a sweep drains the markers into ``taken``
(target -> worker identity, for the targets still waiting), asks the bus
whether those workers live (one ``F_GETLK`` each, immune to pid reuse) and,
for dead ones, first delivers every reply already in the reply rings (the
worker may have answered and then exited), then tells the targets still
waiting (``worker_died``): 503 for HTTP, and a WebSocket sends its next
message to another worker.
"""

import asyncio
import logging
import os
import socket
import stat

from shmchannels import counters as shm_counters

from .access import AccessLog
from .config import ProtocolConfig
from .http_protocol import HttpProtocol

logger = logging.getLogger("shmchannels.server")

#: seconds between two sweeps of the ``__taken__`` markers and of the
#: liveness of the workers holding in-flight work
LIVENESS_INTERVAL = 0.05
#: the same while no worker holds anything of ours: markers of new work are
#: read at most this late, so an idle server wakes 4 times a second, not 20
IDLE_LIVENESS_INTERVAL = 0.25
#: while stopping: how often to look whether a worker is left, and how long
#: none may be before the requests nobody took are answered 503
ORPHAN_CHECK = 0.1
ORPHAN_GRACE = 0.3
#: processes that never take a request: a protocol server (this one too,
#: unless it hosts workers, as `shmchannels dev` and tests do), the master,
#: `shmchannels status` / `metrics`
NOT_CONSUMERS = ("protocol", "master", "cli")
OPEN_HTTP = shm_counters.C["http_connections_open"]
OPEN_WS = shm_counters.C["websockets_open"]


class ProtocolServer:
    def __init__(self, layer, config=None, sockets=None, log=None, heartbeat=None):
        self.layer = layer
        self.config = config = config or ProtocolConfig()
        self.sockets = list(sockets or [])
        self.log = log or logger
        #: called from an event-loop timer every second (the master's liveness probe)
        self.heartbeat = heartbeat
        self.server_header = config.server_header.encode("latin-1") if config.server_header else None
        self.access_log = AccessLog(config.access_log)
        self.loop = None
        self.http_prefix = None
        self.ws_prefix = None
        self.taken_channel = None
        self.channels = {}  # full reply channel -> Cycle or WebSocketProtocol
        self.taken = {}  # Cycle or ChannelBridge -> WorkerId of the worker holding its message
        self.hosting = {}  # ChannelBridge -> WorkerId of the worker hosting its ASGI instance
        self.connections = set()  # HttpProtocol
        self.websockets = set()  # WebSocketProtocol, until their websocket.disconnect is out
        self.servers = []
        self.shutting_down = False
        self.ws_close_code = 1001
        #: u64 words laid out like a shard of a stats segment (``shmchannels.counters``):
        #: this process's own shard in shared memory once ``serve()`` claimed it
        self.stats_words = shm_counters.private_shard()
        self.counters = shm_counters.Counters(self.stats_words, shm_counters.PROTOCOL_COUNTERS)
        self._readers = []
        self._tick_handle = None
        self._sweep_handle = None
        self._sweep_interval = 1.0
        self._liveness_handle = None
        self._closed = None
        self._idle = None
        self._shutdown_task = None

    @property
    def access_log_enabled(self):
        return self.access_log.enabled

    # ------------------------------------------------------------------ start

    async def serve(self):
        """Start listening and reading replies; return once listening."""
        self.loop = loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._idle = asyncio.Event()
        layer = self.layer
        self.http_prefix = layer.process_prefix("http.response")
        self.ws_prefix = layer.process_prefix("websocket.send")
        self.taken_channel = layer.new_channel("shmchannels.taken?")
        self._claim_stats()
        self._readers = [
            loop.create_task(self._read_replies(self.http_prefix), name="http-replies"),
            loop.create_task(self._read_replies(self.ws_prefix), name="ws-replies"),
        ]
        sockets = self.sockets or [bind_socket(addr, self.config.backlog) for addr in self.config.bind]
        if not sockets:
            raise ValueError("ProtocolServer needs listening sockets or config.bind")
        self.sockets = sockets
        for sock in sockets:
            # The event loop closes the socket it serves on (uvloop closes the
            # fd itself); give it a duplicate so the owner of ``sock`` (the
            # master's inherited listener, a gunicorn wrapper) never closes a
            # descriptor number twice.
            srv = await loop.create_server(
                lambda: HttpProtocol(self), sock=sock.dup(), backlog=self.config.backlog,
            )
            self.servers.append(srv)
            self.log.info("Listening on %s", describe_socket(sock))
        self._tick_handle = loop.call_later(1.0, self._tick)
        config = self.config
        timeouts = [t for t in (config.keepalive or 5.0, config.http_timeout, config.header_timeout,
                                config.body_timeout, config.http_write_timeout) if t]
        self._sweep_interval = max(0.005, min([1.0] + [t / 4 for t in timeouts]))
        self._sweep_handle = loop.call_later(self._sweep_interval, self._sweep)
        self._liveness_handle = loop.call_later(LIVENESS_INTERVAL, self._check_workers)

    async def _read_replies(self, prefix):
        channels = self.channels
        counters = self.counters
        log = self.log
        while True:
            try:
                async for channel, message in self.layer.stream(prefix):
                    target = channels.get(channel)
                    if target is None:
                        counters["unknown_replies"] += 1
                        log.debug("reply on unknown channel %s dropped", channel)
                        if "__bind__" in message:
                            self._orphan_bind(message["__bind__"])
                        continue
                    try:
                        target.on_reply(message)
                    except Exception as exc:
                        self._reply_failed(target, channel, exc)
            except asyncio.CancelledError:
                raise
            except Exception:  # the layer failed: log, back off, carry on
                log.exception("reading replies on %s failed; retrying", prefix)
                await asyncio.sleep(0.5)

    def _orphan_bind(self, who):
        """An ASGI instance bound to a connection that is gone: it gets the
        disconnect it would have had (its consumer leaves its groups)."""
        if type(who) in (list, tuple) and len(who) >= 3 and type(who[2]) is str:
            try:
                self.layer.send(who[2], {"type": "websocket.disconnect", "code": 1006})
            except Exception:
                self.log.debug("could not tell %s its connection is gone", who[2], exc_info=True)

    def _reply_failed(self, target, channel, exc):
        """``target.on_reply`` raised: a reply nobody foresaw.  Its client
        gets an error (500, close 1011, or a closed connection), not silence."""
        self.log.error("handling a reply on %s failed", channel, exc_info=exc)
        try:
            target.reply_failed(f"{type(exc).__name__}: {exc}")
        except Exception:
            self.log.exception("failing the target of %s failed too", channel)

    def _deliver_pending(self, limit=100_000):
        """Hand every reply already in our rings to its target, now (the
        reply readers may be parked, or not yet woken)."""
        take = self.layer.take_prefix
        channels = self.channels
        for prefix in (self.http_prefix, self.ws_prefix):
            for _ in range(limit):
                got = take(prefix)
                if got is None:
                    break
                channel, message = got
                target = channels.get(channel)
                if target is None:
                    self.counters["unknown_replies"] += 1
                    continue
                try:
                    target.on_reply(message)
                except Exception as exc:
                    self._reply_failed(target, channel, exc)

    def drain_taken(self, limit=100_000):
        """Read the workers' ``__taken__`` markers: who holds which target's message."""
        take = self.layer.take
        name = self.taken_channel
        channels = self.channels
        for _ in range(limit):
            marker = take(name)
            if marker is None:
                return
            try:
                target = channels.get(marker.get("reply_channel"))
                if target is not None:
                    target.taken(marker.get("__taken__"), marker.get("inbox"))
            except Exception:
                self.log.warning("malformed __taken__ marker dropped: %.200r", marker)

    def _check_workers(self):
        try:
            self.drain_taken()
        except Exception:
            self.log.exception("reading __taken__ markers failed")
        taken = self.taken
        hosting = self.hosting  # watched at the idle pace: a hosted socket waits, it is not waited on
        self._liveness_handle = self.loop.call_later(
            LIVENESS_INTERVAL if taken else IDLE_LIVENESS_INTERVAL, self._check_workers
        )
        if not taken and not hosting:
            return
        try:
            alive = self.layer.process_alive
            dead = {ident for ident in set(taken.values()) | set(hosting.values()) if not alive(*ident)}
            if not dead:
                return
            self._deliver_pending()
        except Exception:
            self.log.exception("checking the workers' liveness failed")
            return
        resumed = {ident: sum(1 for i in hosting.values() if i == ident) for ident in dead}
        for ident, count in resumed.items():
            if count:
                self.log.warning("the worker in slot %d died: resuming the %d WebSocket(s) it hosted", ident.slot, count)
        for table in (taken, hosting):
            for target, ident in list(table.items()):
                if ident in dead and table.get(target) == ident:
                    del table[target]
                    try:
                        target.worker_died(ident)
                    except Exception:
                        self.log.exception("answering for a dead worker failed")

    def _sweep(self):
        self._sweep_handle = self.loop.call_later(self._sweep_interval, self._sweep)
        now = self.loop.time()
        for conn in list(self.connections):
            try:
                conn.check_timeouts(now)
            except Exception:
                self.log.exception("timeout check failed")

    def _claim_stats(self):
        """Count in this process's stats segment from now on (the first
        server of a process; the others keep counting for themselves)."""
        words = shm_counters.claim_shard(self.layer)
        if words is self.stats_words:
            return
        for name, value in self.counters.items():
            words[shm_counters.C[name]] += value
        self.stats_words = words
        self.counters = shm_counters.Counters(words, shm_counters.PROTOCOL_COUNTERS)

    def _tick(self):
        self._tick_handle = self.loop.call_later(1.0, self._tick)
        words = self.stats_words
        words[OPEN_HTTP] = len(self.connections)
        words[OPEN_WS] = len(self.websockets)
        if self.heartbeat is not None:
            try:
                self.heartbeat()
            except Exception:
                self.log.exception("heartbeat hook failed")

    # --------------------------------------------------------------- shutdown

    def begin_shutdown(self, ws_close_code=1001):
        """Stop accepting; finish HTTP in flight (up to graceful_timeout);
        close WebSockets with ``ws_close_code`` (1001 stop, 1012 restart)."""
        if self.shutting_down:
            return
        self.shutting_down = True
        self.ws_close_code = ws_close_code
        self.log.info("Shutting down (WebSocket close code %d)", ws_close_code)
        for srv in self.servers:
            srv.close()
        for conn in list(self.connections):
            conn.shutdown()
        for ws in list(self.websockets):
            ws.shutdown(ws_close_code)
        self._shutdown_task = self.loop.create_task(self._finish_shutdown(), name="shutdown")

    def connection_closed(self):
        if self.shutting_down and self._idle is not None and self._is_idle():
            self._idle.set()

    def _is_idle(self):
        return not self.connections and not self.websockets and not any(
            getattr(t, "disconnect_sent", True) is False for t in self.channels.values()
        )

    async def _finish_shutdown(self):
        try:
            if not self._is_idle():
                try:
                    await self._wait_idle(self.config.graceful_timeout)
                except asyncio.TimeoutError:
                    self.log.warning(
                        "graceful_timeout (%ss) passed with %d connections and %d websockets open; closing them",
                        self.config.graceful_timeout, len(self.connections), len(self.websockets),
                    )
            for conn in list(self.connections):
                conn.transport.abort()
            for target in list(self.channels.values()):
                if hasattr(target, "force_close"):
                    target.force_close()
            await asyncio.sleep(0)  # let connection_lost callbacks run
            await asyncio.sleep(0)
            for srv in self.servers:
                await srv.wait_closed()
        finally:
            for task in self._readers:
                task.cancel()
            for task in self._readers:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
            if self._tick_handle is not None:
                self._tick_handle.cancel()
            if self._sweep_handle is not None:
                self._sweep_handle.cancel()
            if self._liveness_handle is not None:
                self._liveness_handle.cancel()
            self._discard_taken_channel()
            self._closed.set()

    async def _wait_idle(self, timeout):
        """Until nothing is open (TimeoutError after ``timeout``).  Requests
        sent but taken by no worker are answered 503 once no process that
        could take them has been alive for ORPHAN_GRACE: when every process
        of a serve gets SIGTERM at once, the workers stop and the requests
        still queued would hold their clients and this stop for the whole
        graceful_timeout."""
        loop = self.loop
        deadline = loop.time() + timeout
        idle = loop.create_task(self._idle.wait())
        orphaned_since = None
        try:
            while not idle.done():
                left = deadline - loop.time()
                if left <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait([idle], timeout=min(left, ORPHAN_CHECK))
                if idle.done():
                    break
                try:
                    self.drain_taken()  # a worker's marker may still be on its way
                    consumers = self.layer.any_alive(NOT_CONSUMERS)
                except Exception:
                    self.log.exception("looking for workers while stopping failed")
                    consumers = True
                if consumers:
                    orphaned_since = None
                elif orphaned_since is None:
                    orphaned_since = loop.time()
                elif loop.time() - orphaned_since >= ORPHAN_GRACE:
                    self._answer_orphans()
        finally:
            idle.cancel()

    def _answer_orphans(self):
        answered = 0
        for cycle in [c for conn in list(self.connections) for c in list(conn.cycles)]:
            try:
                answered += cycle.no_worker_left()
            except Exception:
                self.log.exception("answering a request no worker took failed")
        if answered:
            self.log.warning("stopping with %d request(s) no worker is left to take: 503", answered)

    def _discard_taken_channel(self):
        if self.taken_channel is None:
            return
        try:
            self.drain_taken()
            self.layer.discard_channel(self.taken_channel)
        except Exception:
            self.log.debug("discarding %s failed", self.taken_channel, exc_info=True)

    async def wait_closed(self):
        await self._closed.wait()

    async def run(self, ws_close_code_on_cancel=1001):
        """serve() then wait_closed(); shuts down if cancelled."""
        await self.serve()
        try:
            await self.wait_closed()
        except asyncio.CancelledError:
            self.begin_shutdown(ws_close_code_on_cancel)
            await self.wait_closed()
            raise

    # ------------------------------------------------------------------ stats

    def stats(self):
        in_flight = 0
        for conn in self.connections:
            for cycle in conn.cycles:
                if cycle.dispatched and not cycle.done:
                    in_flight += 1
        return {
            "connections": len(self.connections) + len(self.websockets),
            "http_connections": len(self.connections),
            "requests_in_flight": in_flight,
            "websockets": len(self.websockets),
            "reply_channels": len(self.channels),
            "shutting_down": self.shutting_down,
            **self.counters,
        }


# ------------------------------------------------------------------ sockets


def bind_socket(address, backlog=2048):
    """A listening socket for "host:port", "[v6]:port", ":port" or "unix:/path"."""
    if address.startswith("unix:"):
        path = address[5:]
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, 0o660)
    else:
        if address.startswith("["):
            host, _, port = address[1:].partition("]:")
        else:
            host, _, port = address.rpartition(":")
        host = host or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def describe_socket(sock):
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
