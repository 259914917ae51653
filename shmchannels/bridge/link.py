"""``Link``: this process's connections to the bridge's Redis.

They live on an I/O thread with an asyncio loop of its own, so a layer's
coroutines bind nothing to the caller's event loop (``async_to_sync`` from
any thread keeps working) and the synchronous ASGI 1 layer can use the same
connections.  Two clients:

* the **writer**: one connection; every write of this process (sends, group
  sends, memberships) goes through one FIFO outbox, pipelined in batches,
  so a process's messages reach Redis in the order they were sent;
* the **reader**: a pool, for blocking reads (the bridge's inbox, receives
  on cross-host named channels) and the rest.

Redis unreachable: the link is *down*.  Writes fail at once with
``BridgeUnavailable`` (nothing waits on a connect), a probe reconnects with
backoff (50 ms doubling to 2 s), reloads the scripts and calls the
``on_up`` callbacks; then the link is up again.  Local traffic never comes
here.
"""

import asyncio
import atexit
import collections
import concurrent.futures
import logging
import os
import threading

from shmchannels.bridge import scripts
from shmchannels.bridge.errors import BridgeUnavailable

logger = logging.getLogger("shmchannels.bridge")

BATCH = 512  #: commands per pipeline
OUTBOX_LIMIT = 100_000  #: queued writes past which group sends are dropped
CONNECT_TIMEOUT = 1.0
WRITE_TIMEOUT = 2.0  #: a silent network cut fails a write within this
READ_TIMEOUT = 10.0  #: above every blocking read's own timeout
PROBE_FIRST, PROBE_MAX = 0.05, 2.0

_links = {}
_links_lock = threading.Lock()
_fork_generation = 0


def _after_fork_in_child():
    global _fork_generation
    _fork_generation += 1
    _links.clear()  # the parent's I/O threads do not exist here


os.register_at_fork(after_in_child=_after_fork_in_child)


def fork_generation():
    """Changes in a forked child: a ``Link`` from before it is not this process's."""
    return _fork_generation


def link_for(spec):
    """The process's one ``Link`` to the Redis server ``spec`` (started)."""
    key = (spec.url, repr(spec.kwargs))
    with _links_lock:
        link = _links.get(key)
        if link is None:
            link = _links[key] = Link(spec)
    return link


def _redis_errors():
    from redis import exceptions

    return (exceptions.ConnectionError, exceptions.TimeoutError, OSError)


class Link:
    def __init__(self, spec):
        self.spec = spec
        self._pid = os.getpid()
        self.where = spec.describe()
        self.up = False
        self.errors = _redis_errors()
        self._outbox = collections.deque()
        self._idle = False
        self._down_reason = "not connected yet"
        self._on_up = []
        self._probing = False
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), name="shmchannels-bridge", daemon=True)
        self.thread.start()
        ready.wait()
        atexit.register(self.drain_before_exit)
        try:
            self.run(self._connect()).result(CONNECT_TIMEOUT + WRITE_TIMEOUT)
        except (concurrent.futures.TimeoutError, *self.errors) as exc:
            self.loop.call_soon_threadsafe(self._went_down, exc)
            logger.warning("bridge: Redis at %s is unreachable (%s); cross-host traffic waits for it, "
                           "local traffic is unaffected", self.where, exc)

    # ----------------------------------------------------------- the thread

    def _run(self, ready):
        asyncio.set_event_loop(self.loop)
        self.writer = self._client(single_connection_client=True, socket_timeout=WRITE_TIMEOUT)
        self.reader = self._client(socket_timeout=READ_TIMEOUT)
        self._wake = asyncio.Event()
        self._up_event = asyncio.Event()
        self.loop.create_task(self._drain())
        ready.set()
        self.loop.run_forever()

    def _client(self, **overrides):
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        kwargs = dict(self.spec.kwargs)
        kwargs.setdefault("socket_connect_timeout", CONNECT_TIMEOUT)
        kwargs["retry"] = Retry(NoBackoff(), 0)  # this module decides what a failure means
        kwargs.update(overrides)
        if self.spec.url:
            return aioredis.Redis.from_url(self.spec.url, **kwargs)
        return aioredis.Redis(**kwargs)

    async def _connect(self):
        await self.reader.ping()
        for source in scripts.ALL.values():
            await self.reader.script_load(source)
        self.up = True
        self._down_reason = None
        self._up_event.set()

    # ------------------------------------------------- calls from any thread

    def run(self, coro):
        """Run a coroutine on the I/O loop: a concurrent Future of its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def submit(self, command):
        """Queue a write; a concurrent Future of its reply.  Raises
        ``BridgeUnavailable`` at once while Redis is unreachable."""
        if not self.up:
            raise self.unavailable()
        future = concurrent.futures.Future()
        self._queue(command, future)
        return future

    def post(self, command):
        """Queue a write nobody waits for (group sends); False if it was
        dropped because Redis is unreachable or the outbox is full."""
        if not self.up or len(self._outbox) >= OUTBOX_LIMIT:
            return False
        self._queue(command, None)
        return True

    def _queue(self, command, future):
        self._outbox.append((command, future))
        if self._idle:
            self._idle = False
            self.loop.call_soon_threadsafe(self._wake.set)

    def drain_before_exit(self, timeout=2.0):
        """At exit: give queued writes (group sends nobody awaited) up to
        ``timeout`` to reach Redis, so a script's last group_send is not lost
        with the daemon thread."""
        if os.getpid() != self._pid or not self.thread.is_alive():
            return

        async def drained():
            while self._outbox or not self._idle:
                await asyncio.sleep(0.005)
        if self.up:
            try:
                self.run(asyncio.wait_for(drained(), timeout)).result(timeout + 1)
            except Exception:  # noqa: BLE001 - leaving anyway
                logger.warning("bridge: %d queued writes to Redis were not sent before exit", len(self._outbox))

    def unavailable(self, what="cross-host traffic"):
        return BridgeUnavailable(
            f"Redis at {self.where} is unavailable ({self._down_reason}): {what} is not delivered. Local traffic "
            "is unaffected; the bridge reconnects by itself.")

    def on_up(self, callback):
        """``await callback()`` on the I/O loop each time the link comes back up."""
        self._on_up.append(callback)

    # ------------------------------------------------------------- writing

    async def _drain(self):
        outbox = self._outbox
        while True:
            if not outbox:
                self._idle = True
                if not outbox:
                    await self._wake.wait()
                self._wake.clear()
                self._idle = False
                continue
            batch = [outbox.popleft() for _ in range(min(len(outbox), BATCH))]
            if not self.up:
                self._settle(batch, None, self.unavailable())
                continue
            try:
                replies = await self._pipeline([command for command, _ in batch])
            except self.errors as exc:
                self._went_down(exc)
                self._settle(batch, None, self.unavailable())
                continue
            self._settle(batch, replies, None)

    async def _pipeline(self, commands):
        from redis.exceptions import NoScriptError

        if len(commands) == 1:  # the common case at low load: a pipeline costs ~100 us more in redis-py
            try:
                replies = [await self.writer.execute_command(*commands[0])]
            except self.errors:
                raise
            except Exception as exc:  # a reply that is an error (NOSCRIPT, a script's error): that command's
                replies = [exc]
        else:
            pipe = self.writer.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            replies = await pipe.execute(raise_on_error=False)
        if any(isinstance(r, NoScriptError) for r in replies):  # SCRIPT FLUSH, or a restart we missed
            for source in scripts.ALL.values():
                await self.writer.script_load(source)
            replies = [await self.writer.execute_command(*c) if isinstance(r, NoScriptError) else r
                       for c, r in zip(commands, replies)]
        return replies

    @staticmethod
    def _settle(batch, replies, error):
        for i, (command, future) in enumerate(batch):
            reply = error if replies is None else replies[i]
            if future is None:
                if isinstance(reply, Exception) and error is None:
                    logger.warning("bridge: %s failed: %s", command[0], reply)
            elif isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    # --------------------------------------------------- down and up again

    def went_down(self, exc):
        """Called on the I/O loop by a reader that lost Redis."""
        self._went_down(exc)

    def _went_down(self, exc):
        self._down_reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        self._up_event.clear()
        if self.up:
            self.up = False
            logger.warning("bridge: lost Redis at %s (%s); cross-host sends raise BridgeUnavailable until it is back",
                           self.where, self._down_reason)
        if not self._probing:
            self._probing = True
            self.loop.create_task(self._probe())

    async def _probe(self):
        delay = PROBE_FIRST
        try:
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._reset_connections()
                    await self._connect()
                    break
                except self.errors as exc:
                    self._down_reason = f"{type(exc).__name__}: {exc}"
                    delay = min(delay * 2, PROBE_MAX)
        finally:
            self._probing = False
        logger.warning("bridge: Redis at %s is back", self.where)
        for callback in list(self._on_up):
            try:
                await callback()
            except self.errors as exc:
                self._went_down(exc)
                return
            except Exception:
                logger.exception("bridge: a reconnect callback failed")

    async def _reset_connections(self):
        """Drop every connection made before the loss: after a Redis restart
        they are all dead, and the first write on a stale one would fail and
        take the link down again."""
        await self.reader.connection_pool.disconnect()
        await self.writer.connection_pool.disconnect()
        if self.writer.connection is not None:
            await self.writer.connection.disconnect()
        await self.writer.ping()

    async def until_up(self):
        """Wait on the I/O loop until the link is up (the probe runs meanwhile)."""
        await self._up_event.wait()
