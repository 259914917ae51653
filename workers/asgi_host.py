"""Host an ASGI 3 application in a worker: the body of ``serve MODULE:APP`` workers.

One asyncio loop runs every instance of this worker, as uvicorn runs them
in its process: an ``http.request`` or ``websocket.connect`` taken from the
bus (whichever worker is free takes it) starts an instance
(``asgi_instances``), and everything the protocol server sends a running
instance afterwards arrives on a channel of this worker's ``asgi.conn``
prefix, read by one stream.  Around that:

* ``lifespan``: startup runs before the worker takes any work (a failed
  startup is an application load error: the master halts) and shutdown after
  the last instance ended, as uvicorn's ``--lifespan auto``: an application
  that does not speak the protocol is served without it;
* ``stop()`` (SIGTERM: a HUP roll, a scale-down, max_requests): take no new
  work; hand every WebSocket over (``WebSocketInstance.hand_over``: the
  protocol server resumes it in another worker) or, with ``resume`` off,
  close it with 1012 and let the application see its disconnect; let HTTP
  requests in flight finish; all within ``graceful_timeout``;
* a protocol server that dies (SIGKILL, OOM) takes its sockets with it:
  once a second the instances whose protocol server is gone get their
  ``websocket.disconnect`` (1006) or ``http.disconnect``, so the
  application's ``disconnect()`` runs and the instance ends.
"""

import asyncio
import logging
import time

from shmchannels import counters, names

from .asgi_instances import HttpInstance, WebSocketInstance
from .asgi_lifespan import Lifespan

logger = logging.getLogger("shmchannels.worker")

NEW_WORK = ["http.request", "websocket.connect"]
#: new requests and connections started in one turn of the loop, at most
BURST = 64
#: how long a stopping worker keeps serving a socket while its successor
#: instance starts elsewhere; past it (no other worker is up yet) it hands
#: the socket over anyway and the successor binds when it can
SUCCESSOR_WAIT = 3.0
#: how long a reply may wait for room in its protocol server's ring
REPLY_TIMEOUT = 60.0
#: seconds between two looks for instances whose protocol server died
SERVER_CHECK = 1.0


class AsgiHost:
    def __init__(self, layer, app, *, resume=True, graceful_timeout=30.0, max_requests=0, bus_prefix=None):
        self.layer = layer
        self.app = app
        self.resume = resume
        self.graceful_timeout = graceful_timeout
        self.max_requests = max_requests
        self.bus_prefix = bus_prefix if bus_prefix is not None else layer.prefix
        self.loop = None
        self.prefix = None
        self.state = None  # the lifespan state, copied into every scope
        self.instances = {}  # our channel -> instance
        self.taken = 0
        self._stop = None
        self._tasks = []
        self._ident = None
        self.counts = counters.ConsumerCounts(None)  # counting starts once the layer is attached

    # ----------------------------------------------------------------- life

    async def serve(self, ready=None):
        """Start up, take work until ``stop()``, hand over, shut down."""
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ident = list(self.layer.process_id())
        self.counts = counters.ConsumerCounts(self.layer)
        self.prefix = self.layer.process_prefix("asgi.conn")
        lifespan = Lifespan(self.app)
        self.state = await lifespan.startup()
        if ready is not None:
            ready()
        self._tasks = [
            self.loop.create_task(self._take_new(), name="take-new"),
            self.loop.create_task(self._read_events(), name="instance-events"),
            self.loop.create_task(self._watch_servers(), name="server-liveness"),
        ]
        await self._stop.wait()
        await self._wind_down()
        await lifespan.shutdown()

    def stop(self):
        if self._stop is not None:
            self._stop.set()

    async def _take_new(self):
        receive = self.layer.receive_async
        take = self.layer.take
        while True:
            try:
                channel, message = await receive(NEW_WORK)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("receiving from the bus failed")
                await asyncio.sleep(0.5)
                continue
            # Start what else is waiting before any instance runs: after a
            # HUP a burst of resumed sockets is bound (and its protocol server
            # sends their events) at once, not one per turn of the loop.
            self._start_one(channel, message)
            for _ in range(BURST - 1):
                if self._stop.is_set() or (self.max_requests and self.taken >= self.max_requests):
                    break
                got = next(((name, m) for name in NEW_WORK if (m := take(name)) is not None), None)
                if got is None:
                    break
                self._start_one(*got)
            if self.max_requests and self.taken >= self.max_requests:
                logger.info("took %d requests and connections (max_requests): restarting", self.taken)
                self.counts.max_requests_reached()
                self.stop()
                return

    def _start_one(self, channel, message):
        try:
            self._start(channel, message)
        except Exception:
            logger.exception("starting an instance for %s failed", channel)
        self.taken += 1

    def _start(self, channel, message):
        taken_channel = message.pop("__taken__", None)
        cls = HttpInstance if channel == "http.request" else WebSocketInstance
        instance = cls(self, message)
        self.instances[instance.channel] = instance
        if taken_channel is not None and type(taken_channel) is str:
            marker = {"__taken__": self._ident + ([0] if cls is WebSocketInstance else []),
                      "reply_channel": instance.reply, "inbox": instance.channel}
            try:
                self.layer.send(taken_channel, marker)
            except Exception:  # a full ring: the server falls back to its timeouts
                logger.debug("could not send __taken__ to %s", taken_channel, exc_info=True)
        if cls is WebSocketInstance:
            self.reply(instance.reply, {"__bind__": self._ident + [instance.channel, self.resume]})
        instance.start(self.app)

    async def _read_events(self):
        instances = self.instances
        while True:
            try:
                async for channel, message in self.layer.stream(self.prefix):
                    instance = instances.get(channel)
                    if instance is not None:
                        instance.deliver(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("reading instance events failed; retrying")
                await asyncio.sleep(0.5)

    async def _watch_servers(self):
        while True:
            await asyncio.sleep(SERVER_CHECK)
            try:
                self.end_orphans()
            except Exception:
                logger.exception("checking the protocol servers of the instances failed")

    def end_orphans(self):
        """Tell the instances whose protocol server is gone that their client is."""
        alive = {}
        for instance in list(self.instances.values()):
            if (instance.gone or instance.handed_over) if instance.kind == "websocket" else instance.disconnected:
                continue
            owner = names.owner_of(instance.reply[: instance.reply.find("!") + 1])
            if owner is None:
                continue
            if owner not in alive:
                alive[owner] = self.layer.process_alive(*owner)
            if not alive[owner]:
                instance.deliver({"type": "websocket.disconnect", "code": 1006} if instance.kind == "websocket"
                                 else {"type": "http.disconnect"})

    def forget(self, instance):
        self.instances.pop(instance.channel, None)
        self.layer.discard_channel(instance.channel)

    # ---------------------------------------------------------------- replies

    def reply(self, channel, message):
        """A small control reply (ack, bind, close): sent now, or logged."""
        try:
            self.layer.send(channel, message)
        except Exception:
            logger.warning("could not send %s to %s", sorted(message), channel, exc_info=True)

    def poll_events(self, limit=64):
        """Deliver the instances' events already in our ring, now.  An app
        that sends in a loop never yields to the event loop (a send is a ring
        write), so the stream reader would not see a ``__flow__`` hold until
        the ring filled; streaming sends look here first."""
        take = self.layer.take_prefix
        instances = self.instances
        for _ in range(limit):
            got = take(self.prefix)
            if got is None:
                return
            instance = instances.get(got[0])
            if instance is not None:
                instance.deliver(got[1])

    async def send_reply(self, channel, message):
        """What the application sends: waits (without blocking the loop) while
        the protocol server's ring is full, so a slow server slows the app."""
        send = self.layer.send
        full = self.layer.ChannelFull
        delay, deadline = 0.0005, None
        while True:
            try:
                return send(channel, message)
            except full:
                if deadline is None:
                    deadline = time.monotonic() + REPLY_TIMEOUT
                elif time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.05)

    # --------------------------------------------------------------- stopping

    async def _wind_down(self):
        taking = self._tasks[0]
        taking.cancel()
        await asyncio.gather(taking, return_exceptions=True)
        deadline = self.loop.time() + self.graceful_timeout
        # A socket whose client left is ending anyway: let it see its disconnect.
        sockets = [i for i in self.instances.values() if i.kind == "websocket" and not i.gone]
        if sockets:
            if self.resume:
                # Each socket goes as soon as its instance is between events,
                # so the next worker resumes the first ones while others finish.
                async def hand_over_when_quiet(instance):
                    await instance.await_successor(min(SUCCESSOR_WAIT, max(0.0, deadline - self.loop.time())))
                    if instance.gone:
                        return  # its client left meanwhile: it sees its disconnect and ends here
                    try:
                        await asyncio.wait_for(instance.freeze(), max(0.0, deadline - self.loop.time()))
                    except asyncio.TimeoutError:
                        logger.warning("an instance was still handling an event after graceful_timeout; "
                                       "handing its socket over anyway (that event will be replayed)")
                    await instance.hand_over()
                await asyncio.gather(*(hand_over_when_quiet(i) for i in sockets))
                logger.info("handed %d WebSocket(s) over to the next worker", len(sockets))
            else:
                for i in sockets:
                    if not i.closed and not i.disconnected:
                        i.closed = True
                        self.reply(i.reply, {"close": 1012})
        running = [i.task for i in self.instances.values() if i.task is not None and not i.task.done()]
        if running:
            done, left = await asyncio.wait(running, timeout=max(0.0, deadline - self.loop.time()))
            if left:
                logger.warning("%d instance(s) still running after graceful_timeout; cancelling them", len(left))
                for task in left:
                    task.cancel()
                await asyncio.gather(*left, return_exceptions=True)
        for task in self._tasks[1:]:
            task.cancel()
        await asyncio.gather(*self._tasks[1:], return_exceptions=True)
