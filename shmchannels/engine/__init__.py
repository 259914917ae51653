"""Delivery inside one process: routing channel names to rings (``core``),
local buffers for process-specific channels (``demux``) and the waiting
strategies of asyncio receivers (``wakeup``).  Both front ends
(``shmchannels.layers``, ``shmchannels.asgi1``) are thin wrappers over ``Core``."""
