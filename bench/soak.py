"""Soak: one bus prefix under churn for a long time; count what is lost,
duplicated or reordered, what is left in /dev/shm, and how the long-lived
processes' memory grows.

    .venv/bin/python bench/soak.py                 # 30 minutes; writes bench/results/soak.json
    .venv/bin/python bench/soak.py --minutes 3     # a short run; prints only, unless --write or --results-dir

What runs (all on one prefix, Channels 4 ``SharedMemoryChannelLayer``):

* **stable members** (``--stable``, default 3; the first forked, the others
  spawned) live the whole run.  Each owns ``--channels`` process-specific
  channels, reads every one of them and the named channel ``soak.jobs``
  (shared: each job reaches exactly one of them), and keeps joining and
  leaving groups ``soak.g0 .. soak.g5`` with its channels.
* **churn processes** (up to ``--max-churn`` at once) are started at random,
  by fork or spawn, with 2 channels in 1-3 groups; they join and leave groups,
  and after 1-15 s are either SIGKILLed or told to leave (discard their
  groups, drain, report, exit cleanly).
* **CLI processes**: now and then ``shmchannels send soak.jobs`` and
  ``shmchannels group-send`` run as separate programs.
* **traffic**: every member and churn process sends, ``--rate`` times a
  second, one direct message to a random stable member's channel, one job and
  one group message to a random group.  Each message carries its sender and a
  sequence number per (sender, stream), and every completed send is appended
  at once to the sender's log file (so a SIGKILLed sender's sends are still
  accounted for).

At the end every process still running is stopped cleanly: sending stops,
members leave their groups and drain, report what they received, and exit.

* **lost**: a message whose send completed while the receiver was alive and
  stayed alive (a stable member, or a churn process that exited cleanly), and,
  for a group message, while the receiving channel was a member (its
  ``group_add`` had returned before the send began and its ``group_discard``
  began after the send returned), that the receiver never got.  Jobs: a job
  sent successfully that no stable member got.  Messages to or taken by a
  SIGKILLed process are not counted (at-most-once delivery allows losing them).
* **duplicated**: one (channel, sender, stream, seq) received twice; a job
  received twice, by one member or by two.
* **reordered**: a sequence number lower than an earlier one of the same
  (sender, stream) on the same channel.
* **leaked**: files of the prefix in /dev/shm after the final clean exit.
* **RSS** of the stable members, sampled every ``--sample-secs``.
"""

import argparse
import asyncio
import bisect
import collections
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, ROOT)

from _common import machine_info, shm_files  # noqa: E402
from _results import RESULTS_DIR, add_results_dir, table, write  # noqa: E402

GROUPS = [f"soak.g{i}" for i in range(6)]
JOBS = "soak.jobs"


# --------------------------------------------------------------- receipts


class Ranges:
    """The sequence numbers received on one stream, as sorted [lo, hi] ranges."""

    __slots__ = ("r", "dup", "reordered")

    def __init__(self):
        self.r = []
        self.dup = 0
        self.reordered = 0

    def add(self, q):
        r = self.r
        if r and q == r[-1][1] + 1:
            r[-1][1] = q
            return
        if not r or q > r[-1][1] + 1:
            r.append([q, q])
            return
        self.reordered += 1
        i = bisect.bisect_right(r, [q, float("inf")]) - 1
        if i >= 0 and r[i][0] <= q <= r[i][1]:
            self.dup += 1
            return
        r.insert(i + 1, [q, q])
        # merge neighbours
        j = i + 1
        if j + 1 < len(r) and r[j][1] + 1 == r[j + 1][0]:
            r[j][1] = r[j + 1][1]
            del r[j + 1]
        if j > 0 and r[j - 1][1] + 1 == r[j][0]:
            r[j - 1][1] = r[j][1]
            del r[j]


def contains(ranges, q):
    i = bisect.bisect_right(ranges, [q, float("inf")]) - 1
    return i >= 0 and ranges[i][0] <= q <= ranges[i][1]


# ------------------------------------------------------------ the children


def member_main(conn, cfg):
    """A stable member or a churn process (see the module docstring)."""
    try:
        asyncio.run(_member(conn, cfg))
    except BaseException:
        try:
            conn.send(("error", f"{cfg['id']}: {traceback.format_exc()}"))
        except OSError:
            pass
        os._exit(1)


async def _member(conn, cfg):
    from shmchannels.layers import ChannelFull, SharedMemoryChannelLayer

    rnd = random.Random(cfg["seed"])
    loop = asyncio.get_running_loop()
    layer = SharedMemoryChannelLayer(prefix=cfg["prefix"], capacity=cfg["capacity"], expiry=600)
    me = cfg["id"]
    chans = [await layer.new_channel() for _ in range(cfg["nchannels"])]
    receipts = collections.defaultdict(Ranges)  # (channel, sender, kind, target) -> Ranges
    stray = collections.Counter()
    intervals = []  # [channel, group, add_returned, discard_started or None]
    open_iv = {}  # (channel, group) -> interval
    last_rx = [time.monotonic()]
    counts = collections.Counter()

    async def join(ch, g):
        await layer.group_add(g, ch)
        iv = [ch, g, time.monotonic(), None]
        intervals.append(iv)
        open_iv[(ch, g)] = iv

    async def leave(ch, g):
        iv = open_iv.pop((ch, g))
        iv[3] = time.monotonic()
        await layer.group_discard(g, ch)

    for ch in chans:
        for g in rnd.sample(GROUPS, rnd.randint(1, 3)):
            await join(ch, g)

    async def receiver(ch, key_ch):
        while True:
            m = await layer.receive(ch)
            last_rx[0] = time.monotonic()
            try:
                receipts[(key_ch, m["s"], m["k"], m["t"])].add(m["q"])
                counts["rx_" + m["k"]] += 1
            except (KeyError, TypeError):
                stray[repr(m)[:80]] += 1

    rx_tasks = [asyncio.ensure_future(receiver(ch, ch)) for ch in chans]
    if cfg["read_jobs"]:
        rx_tasks.append(asyncio.ensure_future(receiver(JOBS, JOBS)))

    targets = list(cfg.get("targets") or [])
    sending = asyncio.Event()
    sending.set()
    log_fd = os.open(os.path.join(cfg["log_dir"], f"send-{me}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    seqs = collections.Counter()

    async def send_one(kind, target):
        q = seqs[(kind, target)]
        seqs[(kind, target)] += 1
        msg = {"s": me, "k": kind, "t": target, "q": q}
        t0 = time.monotonic()
        try:
            if kind == "g":
                await layer.group_send(target, msg)
            else:
                await layer.send(target, msg)
            status = "ok"
        except ChannelFull:
            status = "full"
        t1 = time.monotonic()
        counts[f"tx_{kind}_{status}"] += 1
        os.write(log_fd, f"{kind} {target} {q} {t0:.6f} {t1:.6f} {status}\n".encode())

    async def sender():
        interval = 1.0 / cfg["rate"]
        while True:
            await sending.wait()
            if targets:
                await send_one("d", rnd.choice(targets))
            await send_one("j", JOBS)
            await send_one("g", rnd.choice(GROUPS))
            await asyncio.sleep(interval * rnd.uniform(0.5, 1.5))

    async def regroup():
        while True:
            await asyncio.sleep(rnd.uniform(*cfg["regroup_every"]))
            if not sending.is_set():
                continue
            ch, g = rnd.choice(chans), rnd.choice(GROUPS)
            if (ch, g) in open_iv:
                if sum(1 for (c, _g) in open_iv if c == ch) > 1:  # keep every channel in some group
                    await leave(ch, g)
            else:
                await join(ch, g)

    tasks = [asyncio.ensure_future(sender()), asyncio.ensure_future(regroup())]
    commands = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    conn.send(("ready", {"channels": chans, "pid": os.getpid()}))

    while True:
        done, _ = await asyncio.wait([asyncio.ensure_future(commands.get()), *tasks, *rx_tasks],
                                     return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t not in tasks and t not in rx_tasks:
                cmd, arg = t.result()
                break
            t.result()  # a sender/receiver task ended: re-raise its error
        else:
            continue
        if cmd == "targets":
            targets[:] = arg
        elif cmd == "pause":
            sending.clear()
            conn.send(("paused", None))
        elif cmd == "leave":
            break
    # leave: stop sending, leave every group, drain until quiet, report, exit cleanly
    sending.clear()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for ch, g in list(open_iv):
        await leave(ch, g)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and time.monotonic() - last_rx[0] < cfg["drain_quiet"]:
        await asyncio.sleep(0.05)
    for t in rx_tasks:
        t.cancel()
    await asyncio.gather(*rx_tasks, return_exceptions=True)
    loop.remove_reader(conn.fileno())
    os.close(log_fd)
    conn.send(("report", {
        "receipts": {k: (v.r, v.dup, v.reordered) for k, v in receipts.items()},
        "intervals": intervals, "counts": dict(counts), "stray": dict(stray), "left_at": time.monotonic(),
    }))
    await layer.close()


# ---------------------------------------------------------- the orchestrator


class Proc:
    def __init__(self, ctx, role, cfg):
        self.role, self.cfg, self.id = role, cfg, cfg["id"]
        self.method = ctx.get_start_method()
        self.conn, theirs = multiprocessing.Pipe()
        self.proc = ctx.Process(target=member_main, args=(theirs, cfg), name=cfg["id"], daemon=False)
        self.proc.start()
        theirs.close()
        self.pid = self.proc.pid
        self.started = time.monotonic()
        self.ready = None
        self.report = None
        self.state = "starting"  # running, leaving, left, killed, failed
        self.planned_end = None
        self.fate = None


def _of_dead_process(name):
    """A ring owned by a process (``@o…``) or a wake FIFO (``@w…``) that was
    unlinked: its process is dead and reclaimed, and nobody should hold it."""
    return "/dev/shm/shmch-" in name and name.endswith("(deleted)") and ("@o" in name or "@w" in name)


def proc_mem(pid):
    """RSS (total, anonymous, shared memory) in kB, open fds and mapped bus
    segments of ``pid``; None if it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "RssAnon", "RssShmem"):
                    out[{"VmRSS": "rss", "RssAnon": "anon", "RssShmem": "shmem"}[key]] = int(line.split()[1])
        fds = os.listdir(f"/proc/{pid}/fd")
        out["fds"] = len(fds)
        out["dead_fds"] = 0
        for fd in fds:
            try:
                out["dead_fds"] += _of_dead_process(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
        with open(f"/proc/{pid}/maps") as f:
            lines = [line for line in f if "/dev/shm/shmch-" in line]
        out["maps"] = len(lines)
        out["dead_maps"] = sum(_of_dead_process(line.rstrip("\n")) for line in lines)
    except OSError:
        return None
    return out


class Soak:
    def __init__(self, args):
        self.args = args
        self.rnd = random.Random(args.seed)
        self.prefix = args.prefix or f"soak{os.getpid()}"
        self.log_dir = args.log_dir or f"/tmp/soak-{self.prefix}"
        os.makedirs(self.log_dir, exist_ok=True)
        self.fork = multiprocessing.get_context("fork")
        self.spawn = multiprocessing.get_context("spawn")
        self.procs = []
        self.stable = []
        self.problems = []
        self.errors = []
        self.samples = []  # (elapsed s, {id: rss kB}, bus files)
        self.stats = collections.Counter()
        self.cli_seq = collections.Counter()
        self.cli_log = open(os.path.join(self.log_dir, "send-cli.log"), "a")
        self.n = 0

    def cfg(self, role, **kw):
        self.n += 1
        cfg = {"id": f"{role}{self.n}", "prefix": self.prefix, "capacity": self.args.capacity, "rate": self.args.rate,
               "seed": self.rnd.randrange(1 << 30), "log_dir": self.log_dir, "drain_quiet": 1.0,
               "nchannels": 2, "read_jobs": False, "regroup_every": (1.0, 4.0), "targets": []}
        cfg.update(kw)
        return cfg

    # -------------------------------------------------------------- children

    def poll(self, p, timeout=0.0):
        """Handle what child ``p`` sent; True if it sent anything."""
        got = False
        while p.conn.poll(timeout):
            timeout = 0.0
            try:
                tag, payload = p.conn.recv()
            except (EOFError, OSError):
                break
            got = True
            if tag == "ready":
                p.ready = payload
                p.state = "running" if p.state == "starting" else p.state
            elif tag == "report":
                p.report = payload
            elif tag == "error":
                self.errors.append(payload)
                p.state = "failed"
            elif tag == "paused":
                p.paused = True
        return got

    def wait_ready(self, p, timeout=60):
        deadline = time.monotonic() + timeout
        while p.ready is None and p.state != "failed" and time.monotonic() < deadline:
            self.poll(p, 0.1)
            if not p.proc.is_alive() and p.ready is None:
                self.poll(p, 0.1)
                break
        if p.ready is None:
            raise RuntimeError(f"{p.id} ({p.method}) did not come up: state {p.state}, exit {p.proc.exitcode}; "
                               f"errors: {self.errors[-1:]}")

    def start_churn(self):
        ctx = self.rnd.choice([self.fork, self.spawn])
        targets = [c for s in self.stable for c in s.ready["channels"]]
        p = Proc(ctx, "churn", self.cfg("c", targets=targets, regroup_every=(0.5, 3.0)))
        p.planned_end = time.monotonic() + self.rnd.uniform(1.0, 15.0)
        p.fate = self.rnd.choice(["kill", "leave"])
        self.procs.append(p)
        self.stats[f"started_{p.method}"] += 1

    def kill(self, p):
        os.kill(p.pid, signal.SIGKILL)
        p.proc.join(10)
        p.state = "killed"
        self.stats[f"killed_{p.method}"] += 1
        p.conn.close()
        p.proc.close()

    def leave(self, p, timeout=40):
        """Tell ``p`` to leave; wait for its report and its clean exit."""
        p.state = "leaving"
        try:
            p.conn.send(("leave", None))
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        while p.report is None and time.monotonic() < deadline and p.state != "failed":
            self.poll(p, 0.1)
        p.proc.join(max(1, deadline - time.monotonic()))
        if p.proc.is_alive():
            self.problems.append(f"{p.id} ({p.method}) did not exit within {timeout} s of being told to leave; killed")
            p.proc.kill()
            p.proc.join()
        if p.report is None:
            self.problems.append(f"{p.id} ({p.method}) left without a report (exit {p.proc.exitcode})")
            p.state = "failed"
            return
        if p.proc.exitcode != 0:
            self.problems.append(f"{p.id} ({p.method}) exited with {p.proc.exitcode} after a clean leave")
        p.state = "left"
        self.stats[f"left_{p.method}"] += 1
        p.conn.close()
        p.proc.close()

    def run_cli(self):
        """``shmchannels send`` / ``group-send`` as a separate program."""
        if self.rnd.random() < 0.5:
            kind, target, cmd = "j", JOBS, "send"
        else:
            kind, target, cmd = "g", self.rnd.choice(GROUPS), "group-send"
        q = self.cli_seq[(kind, target)]
        self.cli_seq[(kind, target)] += 1
        msg = json.dumps({"s": "cli", "k": kind, "t": target, "q": q})
        t0 = time.monotonic()
        try:
            r = subprocess.run([sys.executable, "-m", "shmchannels", cmd, "--prefix", self.prefix, target, msg],
                               capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            self.problems.append(f"shmchannels {cmd} did not finish within 60 s (killed)")
            return
        t1 = time.monotonic()
        status = "ok" if r.returncode == 0 else f"rc{r.returncode}"
        if r.returncode != 0:
            self.problems.append(f"shmchannels {cmd} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}")
        self.cli_log.write(f"{kind} {target} {q} {t0:.6f} {t1:.6f} {status}\n")
        self.cli_log.flush()
        self.stats["cli_runs"] += 1

    def sample(self, t_start):
        rss = {p.id: proc_mem(p.pid) for p in self.stable}
        self.samples.append((time.monotonic() - t_start, rss, len(shm_files(self.prefix))))

    # ------------------------------------------------------------------ run

    def run(self):
        a = self.args
        t_start = time.monotonic()
        end = t_start + a.minutes * 60
        try:
            for i in range(a.stable):
                ctx = self.fork if i == 0 else self.spawn
                p = Proc(ctx, "stable", self.cfg("s", nchannels=a.channels, read_jobs=True))
                self.procs.append(p)
                self.stable.append(p)
            for p in self.stable:
                self.wait_ready(p)
            targets = [c for s in self.stable for c in s.ready["channels"]]
            for p in self.stable:
                p.conn.send(("targets", targets))
            log(f"soak on prefix {self.prefix!r}: {a.stable} stable members up; churning for {a.minutes:g} min "
                f"(logs in {self.log_dir})")
            self.sample(t_start)
            next_sample = time.monotonic() + a.sample_secs
            next_action = time.monotonic() + self.rnd.uniform(0.2, 1.0)
            next_cli = time.monotonic() + self.rnd.uniform(2, 8)
            next_progress = time.monotonic() + 30
            while time.monotonic() < end:
                now = time.monotonic()
                for p in self.procs:
                    if p.state in ("starting", "running"):
                        self.poll(p)
                        if not p.proc.is_alive() and p.state != "failed":
                            self.poll(p)
                            self.problems.append(f"{p.id} ({p.role}, {p.method}) died on its own: exit "
                                                 f"{p.proc.exitcode}")
                            p.state = "failed"
                for p in self.stable:
                    if p.state == "failed":
                        raise RuntimeError(f"stable member {p.id} failed: {self.errors[-1:] or p.proc.exitcode}")
                live_churn = [p for p in self.procs if p.role == "churn" and p.state in ("starting", "running")]
                for p in live_churn:
                    if p.state == "running" and now >= p.planned_end:
                        if p.fate == "kill":
                            self.kill(p)
                        else:
                            self.leave(p)
                if now >= next_action:
                    live = [p for p in self.procs if p.role == "churn" and p.state == "running"]
                    r = self.rnd.random()
                    if live and r < 0.1:
                        self.kill(self.rnd.choice(live))  # an unplanned SIGKILL at a random moment
                    elif len(live) < a.max_churn and r < 0.8:
                        self.start_churn()
                    next_action = now + self.rnd.uniform(0.2, 1.5)
                if now >= next_cli:
                    self.run_cli()
                    next_cli = time.monotonic() + self.rnd.uniform(3, 12)
                if now >= next_sample:
                    self.sample(t_start)
                    next_sample += a.sample_secs
                if now >= next_progress:
                    log(f"  {now - t_start:6.0f} s: {self.stats.get('started_fork', 0)} forked + "
                        f"{self.stats.get('started_spawn', 0)} spawned churn processes, "
                        f"{sum(v for k, v in self.stats.items() if k.startswith('killed_'))} killed, "
                        f"{sum(v for k, v in self.stats.items() if k.startswith('left_'))} left; "
                        f"{len(shm_files(self.prefix))} bus files; RSS "
                        + ", ".join(f"{k} {v['rss'] / 1024:.1f} MiB" for k, v in self.samples[-1][1].items() if v))
                    next_progress = now + 30
                time.sleep(0.02)
            self.sample(t_start)
            # the end: everyone stops sending, then leaves cleanly
            log("stopping: every process stops sending, leaves its groups, drains and exits")
            running = [p for p in self.procs if p.state in ("starting", "running")]
            for p in running:
                if p.state == "starting":
                    self.wait_ready(p)
                p.paused = False
                p.conn.send(("pause", None))
            deadline = time.monotonic() + 30
            for p in running:
                while not getattr(p, "paused", False) and time.monotonic() < deadline and p.state != "failed":
                    self.poll(p, 0.1)
            time.sleep(1.0)
            for p in running:
                self.leave(p)
        finally:
            for p in self.procs:
                if p.state not in ("killed", "left") and p.proc.is_alive():
                    self.problems.append(f"{p.id} still running at the end: killed")
                    p.proc.kill()
                    p.proc.join()
            self.cli_log.close()
        self.elapsed = time.monotonic() - t_start
        self.leaked = shm_files(self.prefix)

    # --------------------------------------------------------------- account

    def read_sends(self):
        """{sender id: [(kind, target, seq, t0, t1, status)]} from the send logs."""
        sends, bad_lines = {}, 0
        for name in os.listdir(self.log_dir):
            if not (name.startswith("send-") and name.endswith(".log")):
                continue
            sid = name[5:-4]
            rows = []
            with open(os.path.join(self.log_dir, name)) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) != 6 or not line.endswith("\n"):
                        bad_lines += 1  # the last line of a SIGKILLed sender may be torn
                        continue
                    kind, target, q, t0, t1, status = parts
                    rows.append((kind, target, int(q), float(t0), float(t1), status))
            sends[sid] = rows
        return sends, bad_lines

    def account(self):
        sends, torn = self.read_sends()
        alive = [p for p in self.procs if p.state == "left" and p.report]
        receipts = {}  # (channel, sender, kind, target) -> ranges
        res = collections.Counter()
        job_seen = collections.defaultdict(Ranges)  # (sender, JOBS) -> union over stable members
        for p in alive:
            for (ch, s, k, t), (ranges, dup, reord) in p.report["receipts"].items():
                res["duplicated"] += dup
                res["reordered"] += reord
                if k == "j":
                    u = job_seen[(s, t)]
                    for lo, hi in ranges:
                        for q in range(lo, hi + 1):
                            before = u.dup
                            u.add(q)
                            res["duplicated_across_members"] += u.dup - before
                else:
                    receipts[(ch, s, k, t)] = ranges
            res["stray"] += sum(p.report["stray"].values())
        res["duplicated"] += res["duplicated_across_members"]
        owner_alive = {ch for p in alive for ch in p.ready["channels"]}
        # group memberships of the receivers that stayed alive, per group
        by_group = collections.defaultdict(list)
        for p in alive:
            for ch, g, added, discarded in p.report["intervals"]:
                by_group[g].append((ch, added, discarded if discarded is not None else p.report["left_at"]))
        group_sends = collections.defaultdict(list)  # group -> [(t0, t1, sender, q)]
        for sid, rows in sends.items():
            for kind, target, q, t0, t1, status in rows:
                res[f"sent_{kind}"] += 1
                if status != "ok":
                    res[f"refused_{kind}"] += 1
                    continue
                if kind == "d":
                    if target in owner_alive:
                        res["expected_d"] += 1
                        if not contains(receipts.get((target, sid, "d", target), []), q):
                            res["lost_d"] += 1
                elif kind == "j":
                    res["expected_j"] += 1
                    u = job_seen.get((sid, target))
                    if u is None or not contains(u.r, q):
                        res["lost_j"] += 1
                else:
                    group_sends[target].append((t0, t1, sid, q))
        lost_examples = []
        for g, rows in group_sends.items():
            rows.sort()
            t0s = [r[0] for r in rows]
            for ch, added, until in by_group.get(g, ()):
                i = bisect.bisect_right(t0s, added)
                j = bisect.bisect_left(t0s, until)
                for t0, t1, sid, q in rows[i:j]:
                    if t1 >= until:
                        continue
                    res["expected_g"] += 1
                    if not contains(receipts.get((ch, sid, "g", g), []), q):
                        res["lost_g"] += 1
                        if len(lost_examples) < 5:
                            lost_examples.append(f"{g} seq {q} from {sid} (sent {t0:.3f}-{t1:.3f}) to {ch} "
                                                 f"(member {added:.3f}-{until:.3f})")
        res["torn_log_lines"] = torn
        rx = collections.Counter()
        for p in alive:
            for k, v in p.report["counts"].items():
                rx[k] += v
        self.result = res
        self.rx = rx
        self.lost_examples = lost_examples
        return res


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def fmt_int(n):
    return f"{n:,}"


def report(soak):
    r = soak.result
    lost = r["lost_d"] + r["lost_j"] + r["lost_g"]
    last = soak.samples[-1][1] if soak.samples else {}
    dead_fds = sum((m or {}).get("dead_fds", 0) for m in last.values())
    dead_maps = sum((m or {}).get("dead_maps", 0) for m in last.values())
    rows = [
        ("duration", f"{soak.elapsed / 60:.1f} min"),
        ("churn processes started (fork / spawn)",
         f"{soak.stats['started_fork']} / {soak.stats['started_spawn']}"),
        ("  SIGKILLed (fork / spawn)", f"{soak.stats['killed_fork']} / {soak.stats['killed_spawn']}"),
        ("  left cleanly (fork / spawn; stable members included)",
         f"{soak.stats['left_fork']} / {soak.stats['left_spawn']}"),
        ("CLI processes (shmchannels send / group-send)", fmt_int(soak.stats["cli_runs"])),
        ("sent: direct / jobs / group (sends logged)", f"{fmt_int(r['sent_d'])} / {fmt_int(r['sent_j'])} / "
                                                       f"{fmt_int(r['sent_g'])}"),
        ("refused with ChannelFull: direct / jobs", f"{r['refused_d']} / {r['refused_j']}"),
        ("expected deliveries: direct / jobs / group", f"{fmt_int(r['expected_d'])} / {fmt_int(r['expected_j'])} / "
                                                       f"{fmt_int(r['expected_g'])}"),
        ("**lost**: direct / jobs / group", f"**{r['lost_d']} / {r['lost_j']} / {r['lost_g']}**"),
        ("**duplicated** (of which a job taken by two members)",
         f"**{r['duplicated']}** ({r['duplicated_across_members']})"),
        ("**reordered**", f"**{r['reordered']}**"),
        ("messages not in the soak's format", str(r["stray"])),
        ("**files of the prefix left in /dev/shm after the final clean exit**", f"**{len(soak.leaked)}**"),
        ("**unlinked rings and wake FIFOs of dead processes still held by the stable members at the end "
         "(open fds / mappings, summed)**", f"**{dead_fds} / {dead_maps}**"),
        ("problems (hangs, unclean exits, errors)", str(len(soak.problems) + len(soak.errors))),
    ]
    samples = soak.samples
    ids = [p.id for p in soak.stable]
    print("\nSOAK RESULTS")
    for k, v in rows:
        print(f"    {k.replace('**', ''):<70} {v.replace('**', '')}")
    print("\nThe stable members over time: RSS (MiB; anonymous + shared memory), open fds, mapped bus segments, "
          "fds (dfd) and mappings (dmap) of dead processes' unlinked rings/FIFOs; bus files in /dev/shm")
    print("    " + f"{'t (s)':>6} " + " ".join(f"{i + ' rss':>10} {'anon':>6} {'shm':>6} {'fds':>4} {'maps':>4} {'dfd':>4} {'dmap':>4}"
                                              for i in ids) + f" {'files':>6}")
    for t, mem, files in samples:
        cells = []
        for i in ids:
            v = mem.get(i) or {}
            cells.append(f"{v.get('rss', 0) / 1024:10.1f} {v.get('anon', 0) / 1024:6.1f} {v.get('shmem', 0) / 1024:6.1f} "
                         f"{v.get('fds', 0):4d} {v.get('maps', 0):4d} {v.get('dead_fds', 0):4d} {v.get('dead_maps', 0):4d}")
        print("    " + f"{t:6.0f} " + " ".join(cells) + f" {files:6d}")
    for i, g in rss_growth(soak).items():
        print(f"    {i}: " + "; ".join(f"{k} {a:.1f} -> {b:.1f} (max {c:.1f})" for k, (a, b, c) in g.items()))
    if soak.lost_examples:
        print("\nLOST (examples)\n    " + "\n    ".join(soak.lost_examples))
    if soak.leaked:
        print("\nLEAKED\n    " + "\n    ".join(soak.leaked))
    if soak.problems or soak.errors:
        print("\nPROBLEMS\n    " + "\n    ".join(soak.problems + [e.replace("\n", "\n    ") for e in soak.errors]))
    verdict = "PASS" if lost == 0 and r["duplicated"] == 0 and r["reordered"] == 0 and not soak.leaked \
        and not soak.problems and not soak.errors and not dead_fds and not dead_maps else "FAIL"
    print(f"\n{verdict}: {lost} lost, {r['duplicated']} duplicated, {r['reordered']} reordered, "
          f"{len(soak.leaked)} files leaked, {dead_fds} fds / {dead_maps} mappings of dead processes' rings and "
          f"FIFOs held, {len(soak.problems) + len(soak.errors)} problems")
    return rows, verdict


def rss_growth(soak):
    """{id: {field: (first, last, max)}}: RSS fields in MiB, fds and maps as counts."""
    out = {}
    for p in soak.stable:
        mems = [mem.get(p.id) for _t, mem, _f in soak.samples if mem.get(p.id)]
        g = {}
        for field in ("rss", "anon", "shmem", "fds", "maps", "dead_fds", "dead_maps"):
            xs = [m.get(field, 0) for m in mems] or [0]
            if field in ("rss", "anon", "shmem"):
                xs = [x / 1024 for x in xs]
            g[field] = (xs[0], xs[-1], max(xs))
        out[p.id] = g
    return out


def mem_cell(m):
    if not m:
        return "n/a"
    return {"v": m["rss"] / 1024, "parts": [m.get("anon", 0) / 1024, m.get("shmem", 0) / 1024], "f": "f1", "sep": " + "}


TARGET = ("nothing lost, duplicated or reordered, no file left, no ring or FIFO of a dead process still open or "
          "mapped in a stable member, no problem")


def tables(soak, rows, verdict):
    """The results, the target and the stable members' memory (at most 12 samples, first and last always)."""
    ids = [p.id for p in soak.stable]
    samples = soak.samples
    if len(samples) > 12:
        step = (len(samples) - 1) / 11
        samples = [samples[round(k * step)] for k in range(12)]
    mem = [[{"v": t, "f": "int"}, *(mem_cell(m.get(i)) for i in ids), {"v": files, "f": "int"}]
           for t, m, files in samples]
    return [table("results", None, ["", ""], rows, "lr"),
            table("targets", "Targets", ["target", "verdict"], [(TARGET, {"pass": verdict == "PASS"})]),
            table("memory", "Memory of the stable members", ["t (s)", *ids, "bus files"], mem, "r" * (len(ids) + 2))]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="how long to churn (default 30)")
    p.add_argument("--sample-secs", type=float, default=None, help="RSS sampling period (default: minutes*2 s, "
                   "at least 5)")
    p.add_argument("--stable", type=int, default=3)
    p.add_argument("--channels", type=int, default=4, help="channels per stable member")
    p.add_argument("--max-churn", type=int, default=4)
    p.add_argument("--rate", type=float, default=40.0, help="send rounds per second per process (3 messages each)")
    p.add_argument("--capacity", type=int, default=10000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--prefix", default=None)
    p.add_argument("--log-dir", default=None)
    p.add_argument("--write", action="store_true", help="write bench/results/soak.json even for a short run")
    p.add_argument("--no-write", action="store_true")
    add_results_dir(p)
    a = p.parse_args(argv)
    a.sample_secs = a.sample_secs or max(5.0, a.minutes * 2)
    soak = Soak(a)
    old = {s: signal.signal(s, lambda n, f: (_ for _ in ()).throw(SystemExit(128 + n)))
           for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        soak.run()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    soak.account()
    rows, verdict = report(soak)
    full = a.minutes >= 30
    explicit = a.results_dir != RESULTS_DIR
    if not a.no_write and (full or a.write or explicit):
        m = machine_info()
        meta = {"machine": {"cpus": m["nproc"], "cpu": m["cpu"], "kernel": m["kernel"], "python": m["python"]},
                "source": m["source"], "loadavg_end": m["loadavg"], "stats": soak.stats, "rss_growth": rss_growth(soak),
                "lost_examples": soak.lost_examples, "leaked": soak.leaked, "problems": soak.problems + soak.errors}
        params = {k: getattr(a, k) for k in ("minutes", "seed", "sample_secs", "stable", "channels", "max_churn",
                                             "rate", "capacity")}
        write(a.results_dir, "soak", meta=meta, params=params, runs=[{"result": soak.result, "samples": soak.samples}],
              tables=tables(soak, rows, verdict))
    for f in soak.leaked:  # never leave them behind, but only after counting them
        try:
            os.unlink(f)
        except OSError:
            pass
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
