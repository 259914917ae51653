"""One "host" of the bridge tests: a process with a bridged
SharedMemoryChannelLayer, driven by JSON lines on stdin, one reply line
each on stdout (``{"ok": result}`` or ``{"error": "Type: message"}``).

    python tests/bridge/agent.py '<layer CONFIG as JSON>'

Commands: ``["new_channel"]``, ``["send", channel, message]``,
``["receive", channel, timeout]`` (None on timeout), ``["group_add", group,
channel]``, ``["group_discard", group, channel]``, ``["group_send", group,
message]``, ``["flush"]``, ``["bridge"]`` (is this process its host's
bridge), ``["hostname"]``.
"""

import asyncio
import json
import socket
import sys


async def _receive(layer, channel, timeout):
    try:
        return await asyncio.wait_for(layer.receive(channel), timeout)
    except asyncio.TimeoutError:
        return None


async def _bridge(layer):
    station = layer._bridge._station
    return station.election.elected


async def _hostname(layer):
    return socket.gethostname()


COMMANDS = {
    "new_channel": lambda layer: layer.new_channel(),
    "send": lambda layer, channel, message: layer.send(channel, message),
    "receive": _receive,
    "group_add": lambda layer, group, channel: layer.group_add(group, channel),
    "group_discard": lambda layer, group, channel: layer.group_discard(group, channel),
    "group_send": lambda layer, group, message: layer.group_send(group, message),
    "flush": lambda layer: layer.flush(),
    "bridge": _bridge,
    "hostname": _hostname,
}


def reply(**kwargs):
    sys.stdout.write(json.dumps(kwargs) + "\n")
    sys.stdout.flush()


async def serve(layer):
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command, *args = json.loads(line)
        if command == "exit":
            reply(ok=None)
            return
        try:
            reply(ok=await COMMANDS[command](layer, *args))
        except Exception as exc:  # noqa: BLE001 - reported to the test
            reply(error=f"{type(exc).__name__}: {exc}")


def main():
    from shmchannels.layers import SharedMemoryChannelLayer

    try:
        layer = SharedMemoryChannelLayer(**json.loads(sys.argv[1]))
    except Exception as exc:  # noqa: BLE001 - reported to the test
        reply(error=f"{type(exc).__name__}: {exc}")
        return 3
    reply(ok="ready")
    asyncio.run(serve(layer))
    return 0


if __name__ == "__main__":
    sys.exit(main())
