"""The ASGI ``lifespan`` protocol for one worker, as uvicorn's ``--lifespan auto``.

``startup()`` returns the lifespan state (the dict the application may fill
and every scope receives a copy of), or None when the application does not
speak the protocol (it raised, or returned, before answering startup: logged,
then served without it).  ``startup.failed`` raises ``LifespanFailed``.
"""

import asyncio
import logging

logger = logging.getLogger("shmchannels.worker")

ASGI = {"version": "3.0", "spec_version": "2.0"}


class LifespanFailed(Exception):
    pass


class Lifespan:
    def __init__(self, app):
        self.app = app
        self.task = None
        self.inbox = asyncio.Queue()
        self.answer = None  # future of the next startup/shutdown answer
        self.supported = True
        self.state = {}
        self.phase = None

    async def startup(self):
        loop = asyncio.get_running_loop()
        self.phase = "startup"
        self.answer = loop.create_future()
        self.task = loop.create_task(self._run())
        await self.inbox.put({"type": "lifespan.startup"})
        kind, message = await self.answer
        if kind == "lifespan.startup.failed":
            raise LifespanFailed(message or "lifespan startup failed")
        if kind != "lifespan.startup.complete":
            self.supported = False
            return None
        return self.state

    async def shutdown(self):
        if not self.supported or self.task is None or self.task.done():
            return
        self.phase = "shutdown"
        self.answer = asyncio.get_running_loop().create_future()
        await self.inbox.put({"type": "lifespan.shutdown"})
        kind, message = await self.answer
        if kind == "lifespan.shutdown.failed":
            logger.error("lifespan shutdown failed: %s", message)

    async def _run(self):
        scope = {"type": "lifespan", "asgi": ASGI, "state": self.state}
        try:
            await self.app(scope, self.inbox.get, self._send)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.phase == "startup":
                logger.info("ASGI 'lifespan' protocol appears unsupported (%s: %s).", type(exc).__name__, exc)
            else:
                logger.exception("exception in the ASGI lifespan shutdown")
        finally:
            if self.answer is not None and not self.answer.done():
                self.answer.set_result(("unsupported", None))

    async def _send(self, message):
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((message["type"], message.get("message", "")))
