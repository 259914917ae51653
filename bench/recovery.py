"""How long a channel stays blocked when a producer dies inside a claim.

A producer is SIGKILLed by the C ring's fault-injection hook at the worst
moments (right after claiming ring space, before writing anything; and after
writing its header, before committing).  Its claim sits at the head of the
ring.  A second producer then sends one message, which lies behind the dead
claim, and we time from the death to the moment a *parked* receiver gets it.  The receiver
must notice the unready head, find the claimant dead (its slot's kernel lock
is free) and recover the claim.  Target: 500 ms.  No master is involved
(under `shmchannels serve` the master reclaims at SIGCHLD, sooner).

    .venv/bin/python bench/recovery.py [--trials N] [--quick] [--write]
"""

import argparse
import asyncio
import multiprocessing
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench._common import machine_info, median, percentile, shm_files  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _results import RESULTS_DIR, table, write  # noqa: E402

CTX = multiprocessing.get_context("fork")
DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "benchmarks.md")
TARGET_MS = 500


def _victim(prefix, channel, fault, go):
    import shmchannels
    from shmchannels.bus import _shm

    layer = shmchannels.ChannelLayer(prefix=prefix)
    layer.send(channel, {"warm": True})  # route and ring are open: the next put dies inside its claim
    go.recv()  # the receiver has taken "warm" and parked on an empty ring
    _shm.set_fault(fault, 1)
    layer.send(channel, {"never": "delivered"})
    os._exit(3)  # not reached: the fault point kills us


def _async_receiver(prefix, channel, conn):
    from shmchannels.layers import SharedMemoryChannelLayer

    async def main():
        layer = SharedMemoryChannelLayer(prefix=prefix)
        assert (await layer.receive(channel)) == {"warm": True}
        conn.send("parked")
        msg = await layer.receive(channel)
        conn.send((time.monotonic_ns(), msg))

    asyncio.run(main())


def _sync_receiver(prefix, channel, conn):
    import shmchannels

    layer = shmchannels.ChannelLayer(prefix=prefix, block_timeout=10)
    assert layer.receive([channel], block=True)[1] == {"warm": True}
    conn.send("parked")
    ch, msg = layer.receive([channel], block=True)
    conn.send((time.monotonic_ns(), msg))


def trial(prefix, receiver, fault):
    import shmchannels

    channel = "recovery.test"
    # The sender attaches first: attaching reclaims dead processes, and we
    # want to time the receiver's own recovery, not a fresh attach's.
    sender = shmchannels.ChannelLayer(prefix=prefix)
    sender.send("recovery.attach", {})
    parent, child = CTX.Pipe()
    rx = CTX.Process(target=receiver, args=(prefix, channel, child))
    rx.start()
    go, go_child = CTX.Pipe()
    victim = CTX.Process(target=_victim, args=(prefix, channel, fault, go_child))
    victim.start()
    assert parent.recv() == "parked"
    time.sleep(0.1)  # the receiver is parked in receive() on an empty ring
    go.send("die")
    victim.join(10)
    t0 = time.monotonic_ns()  # the death is observed (waitpid returned)
    if victim.exitcode != -signal.SIGKILL:
        raise RuntimeError(f"the victim was not killed at its fault point (exit {victim.exitcode})")
    sender.send(channel, {"after": "crash"})  # lies behind the dead claim
    if not parent.poll(10):
        rx.kill()
        raise RuntimeError("the receiver never got the message behind the dead claim")
    t1, msg = parent.recv()
    rx.join(10)
    sender.flush()
    sender.core.bus.detach()
    assert msg == {"after": "crash"}, msg
    return (t1 - t0) / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 trials, no results file unless --write or --results-dir")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--results-dir", default=None, help="where recovery.json goes (default bench/results)")
    args = parser.parse_args()
    from shmchannels.bus import _shm

    trials = 3 if args.quick else args.trials
    cases = [
        ("asyncio receive()", _async_receiver, "after claim (no header yet)", _shm.FAULT_AFTER_CLAIM),
        ("asyncio receive()", _async_receiver, "after header (WRITING)", _shm.FAULT_AFTER_HEADER),
        ("ASGI 1 receive(block=True)", _sync_receiver, "after claim (no header yet)", _shm.FAULT_AFTER_CLAIM),
        ("ASGI 1 receive(block=True)", _sync_receiver, "after header (WRITING)", _shm.FAULT_AFTER_HEADER),
    ]
    rows = []
    for rx_name, receiver, fault_name, fault in cases:
        times = []
        for i in range(trials):
            prefix = f"brec{os.getpid()}x{len(rows)}x{i}"
            times.append(trial(prefix, receiver, fault))
            left = shm_files(prefix)
            if left:
                raise RuntimeError(f"left in /dev/shm: {left}")
        times.sort()
        rows.append((rx_name, fault_name, median(times), percentile(times, 95), times[-1]))
        print(f"{rx_name:28s} {fault_name:30s} median {rows[-1][2]:7.1f} ms  p95 {rows[-1][3]:7.1f} ms  max {rows[-1][4]:7.1f} ms",
              flush=True)
    worst = max(r[4] for r in rows)
    verdict = "PASS" if worst <= TARGET_MS else "FAIL"
    print(f"\ntarget: a dead producer's claim recovered within {TARGET_MS} ms (worst case {worst:.0f} ms): {verdict}")
    out_dir = args.results_dir or (RESULTS_DIR if (args.write or not args.quick) else None)
    if out_dir:
        m = machine_info()
        t = lambda ms: {"v": ms / 1e3, "f": "time"}  # noqa: E731
        tables = [table("results", None, ["receiver", "producer killed", "median", "p95", "worst"],
                        [(rx, fault, t(med), t(p95), t(mx)) for rx, fault, med, p95, mx in rows], "llrrr"),
                  table("targets", "Targets", ["target", "worst case", "verdict"],
                        [(f"recovered within {TARGET_MS} ms", t(worst), {"pass": verdict == "PASS"})], "lrl")]
        meta = {"machine": {"cpus": m["nproc"], "cpu": m["cpu"], "kernel": m["kernel"], "python": m["python"]},
                "source": m["source"], "loadavg_start": m["loadavg"]}
        write(out_dir, "recovery", meta=meta, params={"trials": trials, "target_ms": TARGET_MS},
              runs=[{"receiver": rx, "fault": fault, "median_ms": med, "p95_ms": p95, "worst_ms": mx}
                    for rx, fault, med, p95, mx in rows], tables=tables)
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
