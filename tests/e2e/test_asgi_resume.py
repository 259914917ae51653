"""Deploys that keep every WebSocket: an ASGI 3 app under `shmchannels serve`,
HUPed (new code) or with its workers SIGKILLed while clients in rooms send
sequence-numbered messages (docs/protocol.md, "ASGI 3 applications").

The app is ``apps/resumechat.py``, copied aside so that its ``VERSION`` can
be rewritten before each HUP: every broadcast says which code handled it. Under SIGKILL nothing is lost and
only the event a killed worker was handling may repeat.
"""

import asyncio
import os
import random
import signal
import sys

import pytest
import websockets

from serving import APPS, serving, wait_for

pytestmark = pytest.mark.slow

SOURCE = open(os.path.join(APPS, "resumechat.py")).read()


def write_app(directory, version):
    path = os.path.join(directory, "resumechat_live.py")
    with open(path + ".tmp", "w") as f:
        f.write(SOURCE.replace('VERSION = "v0"', f'VERSION = "{version}"'))
    os.replace(path + ".tmp", path)


@pytest.fixture
def live_app(tmp_path, prefix):
    write_app(str(tmp_path), "v0")
    env = {"RESUMECHAT_PREFIX": prefix, "PYTHONDONTWRITEBYTECODE": "1",
           "RESUMECHAT_DISCONNECTS": str(tmp_path / "disconnects"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    return str(tmp_path), env


class Room:
    """``clients`` sockets in rooms of ``room_size``; each sends ``id:seq``
    every ``interval`` seconds while ``sending``; every socket records what
    it receives."""

    def __init__(self, port, clients, room_size, interval):
        self.port, self.n, self.room_size, self.interval = port, clients, room_size, interval
        self.sockets = []
        self.received = [[] for _ in range(clients)]  # (version, sender, seq)
        self.whoami = [asyncio.Queue() for _ in range(clients)]
        self.sent = [0] * clients
        self.closed = []
        self.sending = True
        self.tasks = []

    def room_of(self, i):
        return i // self.room_size

    async def open(self):
        for i in range(self.n):
            ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/ws/r{self.room_of(i)}/", open_timeout=20)
            self.sockets.append(ws)
            self.tasks.append(asyncio.create_task(self._read(i, ws)))
        await asyncio.sleep(0.5)  # every consumer has joined its room
        self.tasks += [asyncio.create_task(self._send(i, ws)) for i, ws in enumerate(self.sockets)]

    async def _read(self, i, ws):
        try:
            async for text in ws:
                version, _, body = text.partition("|")
                if body.startswith("resume="):
                    self.whoami[i].put_nowait((version, int(body[len("resume="):])))
                    continue
                sender, _, seq = body.partition(":")
                self.received[i].append((version, int(sender), int(seq)))
        except websockets.ConnectionClosed as exc:
            self.closed.append((i, exc.rcvd.code if exc.rcvd else None))
            return
        self.closed.append((i, ws.close_code))

    async def _send(self, i, ws):
        await asyncio.sleep(random.random() * self.interval)
        while self.sending:
            self.sent[i] += 1
            await ws.send(f"{i}:{self.sent[i]}")
            await asyncio.sleep(self.interval)

    async def settle(self, timeout=20.0):
        """Stop sending; wait until every broadcast has reached every member."""
        self.sending = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if all(len(self.received[i]) >= self.expected(i) for i in range(self.n)):
                return
            await asyncio.sleep(0.2)

    def expected(self, i):
        room = self.room_of(i)
        return sum(self.sent[s] for s in range(self.n) if self.room_of(s) == room)

    async def ask_whoami(self):
        """(version, resume count) from each socket's consumer, or None where none came."""
        for ws in self.sockets:
            await ws.send("whoami")

        async def answer(q):
            try:
                return await asyncio.wait_for(q.get(), 10)
            except asyncio.TimeoutError:
                return None
        return await asyncio.gather(*(answer(q) for q in self.whoami))

    async def close(self):
        for ws in self.sockets:
            await ws.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def tally(self):
        """(lost, duplicated, out of order, version went back) over every (receiver, sender) pair."""
        lost = duplicated = disorder = regress = 0
        for i in range(self.n):
            per = {}
            for version, sender, seq in self.received[i]:
                per.setdefault(sender, []).append((seq, int(version[1:])))
            for s in range(self.n):
                if self.room_of(s) != self.room_of(i):
                    assert s not in per, f"client {i} got a message of client {s}, from another room"
                    continue
                got = per.get(s, [])
                seqs = [q for q, _ in got]
                lost += self.sent[s] - len(set(seqs))
                duplicated += len(seqs) - len(set(seqs))
                disorder += seqs != sorted(seqs)
                versions = [v for _, v in got]
                regress += versions != sorted(versions)
        return lost, duplicated, disorder, regress


def old_workers_gone(s, old):
    pids = s.pids("worker")
    return len(pids) == 2 and not set(pids) & set(old)


def test_twenty_hups_with_200_clients_lose_nothing_and_answer_with_the_new_code(live_app, prefix):
    directory, env = live_app
    hups = 20
    with serving(prefix, ["resumechat_live:application", "--graceful-timeout", "10"], workers=2, env=env) as s:
        async def scenario():
            room = Room(s.port, clients=200, room_size=5, interval=0.25)
            await room.open()
            for k in range(1, hups + 1):
                old = s.pids("worker")
                write_app(directory, f"v{k}")
                s.send_signal(signal.SIGHUP)
                await asyncio.to_thread(wait_for, lambda: old_workers_gone(s, old), 60, 0.05, f"HUP {k} rolled")
                await asyncio.sleep(0.3)
            await room.settle()
            answers = await room.ask_whoami()
            tally = room.tally()
            closed = list(room.closed)
            disconnects = open(env["RESUMECHAT_DISCONNECTS"]).read() if os.path.exists(env["RESUMECHAT_DISCONNECTS"]) else ""
            await room.close()
            return room, answers, tally, closed, disconnects

        room, answers, (lost, duplicated, disorder, regress), closed, disconnects = asyncio.run(scenario())
        output = s.output()
    assert closed == [], f"client-side closes: {closed[:10]}"
    assert sum(room.sent) > 200 * 20, room.sent[:10]
    assert (lost, duplicated, disorder, regress) == (0, 0, 0, 0), output[-3000:]
    # The new code answers, and every socket was resumed by each HUP.  (Rarely
    # twice: an old worker that has not yet handled its TERM may take a socket
    # another old worker handed over, and hand it over again a moment later.)
    assert {version for version, _ in answers} == {f"v{hups}"}, answers[:10]
    counts = [count for _, count in answers]
    assert min(counts) >= hups and sum(counts) <= len(counts) * hups * 1.1, sorted(counts)[-10:]
    assert disconnects == "", "a consumer's disconnect ran during a resume"


def test_sigkill_of_workers_resumes_every_socket(live_app, prefix):
    directory, env = live_app
    kills = 5
    with serving(prefix, ["resumechat_live:application"], workers=2, env=env) as s:
        async def scenario():
            room = Room(s.port, clients=40, room_size=4, interval=0.1)
            await room.open()
            for k in range(kills):
                victim = min(s.pids("worker"))  # the oldest: after two kills no socket is where it began
                os.kill(victim, signal.SIGKILL)
                await asyncio.to_thread(
                    wait_for, lambda: victim not in s.pids("worker") and len(s.pids("worker")) == 2, 30, 0.05,
                    f"kill {k} replaced")
                await asyncio.sleep(0.5)
            await room.settle()
            answers = await room.ask_whoami()
            tally = room.tally()
            closed = list(room.closed)
            await room.close()
            return room, answers, tally, closed

        room, answers, (lost, duplicated, disorder, regress), closed = asyncio.run(scenario())
    assert closed == [], f"client-side closes: {closed[:10]}"
    # Nothing is lost: an event counts as handled only once the consumer came
    # back for the next one, so a killed worker's events are all replayed.
    # The one each socket was handling at the kill may be handled twice (it
    # may have broadcast already): at most one per socket of the killed worker,
    # seen by each member of its room.
    assert (lost, disorder, regress) == (0, 0, 0), (lost, duplicated, disorder, regress)
    assert duplicated <= kills * (room.n // 2) * room.room_size, duplicated
    assert None not in answers, answers
    assert all(count >= 1 for _, count in answers), answers  # 2 workers, 5 kills: every socket was resumed
    assert {version for version, _ in answers} == {"v0"}


def test_no_resume_closes_with_1012_and_runs_the_disconnect(live_app, prefix):
    directory, env = live_app
    with serving(prefix, ["resumechat_live:application", "--no-resume"], workers=1, env=env) as s:
        async def scenario():
            sockets = [await websockets.connect(f"ws://127.0.0.1:{s.port}/ws/q/") for _ in range(3)]
            await asyncio.sleep(0.3)
            s.send_signal(signal.SIGHUP)
            codes = []
            for ws in sockets:
                with pytest.raises(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 20)
                codes.append(ws.close_code)
            return codes

        codes = asyncio.run(scenario())
        wait_for(lambda: os.path.exists(env["RESUMECHAT_DISCONNECTS"])
                 and len(open(env["RESUMECHAT_DISCONNECTS"]).read().splitlines()) == 3, 20, what="3 disconnects")
    assert codes == [1012, 1012, 1012]
    assert open(env["RESUMECHAT_DISCONNECTS"]).read().splitlines() == ["q 1012"] * 3


def test_a_resumed_scope_says_so_and_a_new_connection_does_not(live_app, prefix):
    directory, env = live_app
    with serving(prefix, ["resumechat_live:application"], workers=1, env=env) as s:
        async def scenario():
            first = await websockets.connect(f"ws://127.0.0.1:{s.port}/ws/a/")
            await first.send("whoami")
            before = await asyncio.wait_for(first.recv(), 10)
            old = s.pids("worker")
            write_app(directory, "v1")
            s.send_signal(signal.SIGHUP)
            await asyncio.to_thread(wait_for, lambda: s.pids("worker") and not set(s.pids("worker")) & set(old),
                                    30, 0.05, "the roll")
            await first.send("whoami")
            after = await asyncio.wait_for(first.recv(), 10)
            fresh = await websockets.connect(f"ws://127.0.0.1:{s.port}/ws/a/")
            await fresh.send("whoami")
            new = await asyncio.wait_for(fresh.recv(), 10)
            await first.close()
            await fresh.close()
            return before, after, new

        before, after, new = asyncio.run(scenario())
    assert (before, after, new) == ("v0|resume=0", "v1|resume=1", "v1|resume=0")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))


def test_a_killed_protocol_server_ends_its_instances_with_their_disconnect(live_app, prefix):
    """The sockets of a SIGKILLed protocol server are gone with it: each
    hosted instance gets websocket.disconnect (1006) within about a second,
    so the consumer's disconnect() runs (group_discard, clean-up) and the
    worker does not keep the instance (it did forever before: 0 of 1200
    disconnects, the worker's memory growing with every kill)."""
    directory, env = live_app
    clients = 30
    with serving(prefix, ["resumechat_live:application"], workers=1, env=env) as s:
        async def scenario():
            sockets = [await websockets.connect(f"ws://127.0.0.1:{s.port}/ws/k{i % 3}/", open_timeout=20)
                       for i in range(clients)]
            for ws in sockets:
                await ws.send("whoami")
                await asyncio.wait_for(ws.recv(), 10)
            victim = s.pids("protocol")[0]
            os.kill(victim, signal.SIGKILL)
            await asyncio.to_thread(wait_for, lambda: victim not in s.pids("protocol"), 30, 0.05, "the kill")
            for ws in sockets:
                ws.transport.abort()

        asyncio.run(scenario())
        path = env["RESUMECHAT_DISCONNECTS"]
        wait_for(lambda: os.path.exists(path) and len(open(path).read().split("\n")) > clients, 10,
                 what="the disconnects of the killed protocol server's sockets")
    lines = [line for line in open(path).read().split("\n") if line]
    assert len(lines) == clients and all(line.endswith(" 1006") for line in lines), lines[:5]
