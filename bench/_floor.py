"""The floor of a group fan-out on asyncio: what any layer costs at least.

``FloorLayer`` is not a channel layer anyone should use.  It does only the
work that a cross-process ``group_send`` to N asyncio tasks cannot skip, so
that bench/layer.py can show the real layers next to it in one run:

* the sender encodes the message once and writes it to one FIFO per
  receiving process (one ``write()`` each);
* each receiving process wakes in its event loop (``add_reader``: one
  kernel wake-up per process), reads and decodes the message once;
* every member's parked task gets a shallow copy as its future's result
  and resumes; its next ``receive()`` makes a new future and awaits it.

There are no name rules, capacities, expiry, crash safety or cross-process
registry (each process knows its own members; the sender finds the
processes by listing a directory).  A message for a member that is not
parked waits in a deque; nothing is ever dropped.
"""

import asyncio
import collections
import os
import shutil
import struct
import tempfile

import msgpack

_HEADER = struct.Struct("<I")


def _directory(prefix):
    return os.path.join(tempfile.gettempdir(), f"shmbench-floor-{prefix}")


class FloorLayer:
    def __init__(self, prefix):
        self.dir = _directory(prefix)
        os.makedirs(self.dir, exist_ok=True)
        self.members = collections.defaultdict(list)  # group -> this process's channels
        self.waiters = {}  # channel -> future of its parked receive
        self.buffers = collections.defaultdict(collections.deque)
        self.fd = None  # this process's FIFO, read end
        self.pending = b""
        self.peers = None  # the sender's write ends, found at its first group_send
        self.counter = 0

    async def new_channel(self, prefix="specific"):
        if self.fd is None:
            path = os.path.join(self.dir, str(os.getpid()))
            os.mkfifo(path, 0o600)
            self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            # a writer of our own, so that the FIFO never reports a hang-up
            # (and wakes the loop in vain) once the sender has exited
            self.keepalive = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            asyncio.get_running_loop().add_reader(self.fd, self._on_readable)
        self.counter += 1
        return f"{prefix}.floor!{os.getpid()}.{self.counter}"

    async def group_add(self, group, channel):
        self.members[group].append(channel)

    async def group_send(self, group, message):
        if self.peers is None:
            self.peers = [os.open(os.path.join(self.dir, name), os.O_WRONLY | os.O_NONBLOCK)
                          for name in sorted(os.listdir(self.dir))]
        gname = group.encode()
        frame = msgpack.packb((gname, message))
        frame = _HEADER.pack(len(frame)) + frame
        for fd in self.peers:
            os.write(fd, frame)

    async def receive(self, channel):
        buf = self.buffers.get(channel)
        if buf:
            return buf.popleft()
        fut = asyncio.get_running_loop().create_future()
        self.waiters[channel] = fut
        try:
            return await fut
        finally:
            if self.waiters.get(channel) is fut:
                del self.waiters[channel]

    def _on_readable(self):
        data = self.pending + os.read(self.fd, 1 << 20)
        at = 0
        while len(data) - at >= _HEADER.size:
            (size,) = _HEADER.unpack_from(data, at)
            if len(data) - at - _HEADER.size < size:
                break
            gname, message = msgpack.unpackb(data[at + _HEADER.size:at + _HEADER.size + size])
            at += _HEADER.size + size
            waiters = self.waiters
            for channel in self.members[gname.decode()]:
                fut = waiters.pop(channel, None)
                if fut is not None and not fut.done():
                    fut.set_result(message.copy())
                else:
                    self.buffers[channel].append(message.copy())
        self.pending = data[at:]

    async def flush(self):
        shutil.rmtree(self.dir, ignore_errors=True)
