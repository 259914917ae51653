"""The per-process stats segment (bus/stats.py): one process writes, another
reads; it lives and dies with its slot, SIGKILL included."""

import glob
import multiprocessing
import os
import signal
import threading

from shmchannels import bus as bus_mod
from shmchannels.bus import segments, stats


def bus_files_of(prefix):
    """This bus's files in /dev/shm (not imported from conftest: with several
    conftest.py files in the suite, ``import conftest`` gets whichever came last)."""
    return sorted(glob.glob(f"/dev/shm/shmch-{os.getuid()}-{prefix}@*"))


def _stats_files(prefix):
    return [f for f in bus_files_of(prefix) if segments.classify(segments.bus_stem(prefix), os.path.basename(f))[0] == "stats"]


def _child(prefix, n, ready, q):
    bus = bus_mod.Bus(prefix, ring_size=1 << 16, collect_dead=False)
    words = bus.stats.shard()
    for _ in range(n):
        words[stats.C["requests_total"]] += 1
    stats.observe(words, stats.HIST["response_latency"], 3_000_000)  # 3 ms
    i = bus.stats.channel_index("http.request")
    stats.observe(words, stats.CHANNEL_HIST + i * stats.HIST_WORDS, 20_000_000)
    words[stats.C["websockets_open"]] = 4
    q.put((bus.slot, bus.gen))
    ready.set()
    signal.pause()


def test_a_process_counts_another_reads_and_a_sigkill_reclaims_the_segment(small_bus, prefix):
    ctx = multiprocessing.get_context("fork")
    ready, q = ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_child, args=(prefix, 12345, ready, q))
    child.start()
    try:
        assert ready.wait(20)
        slot, gen = q.get(timeout=5)
        totals = stats.read(small_bus.stem, slot, gen)
        own = totals.by_kind[0]
        assert totals.pid == child.pid
        assert own[stats.C["requests_total"]] == 12345
        assert own[stats.C["websockets_open"]] == 4
        lat = stats.HIST["response_latency"]
        assert own[lat + stats.BOUNDS_NS.index(5_000_000)] == 1  # le=0.005
        assert own[lat + stats.H_SUM] == 3_000_000 and stats.count(own, lat) == 1
        assert totals.channels == ["http.request"]
        assert stats.count(own, stats.CHANNEL_HIST) == 1
        assert len(_stats_files(prefix)) == 2  # ours and the child's
        # the master's fold keeps counters and histograms, not gauges
        into = small_bus.stats.reserve(3)
        stats.fold(into, totals, small_bus.stats)
        assert into[stats.C["requests_total"]] == 12345 and into[stats.C["websockets_open"]] == 0
        assert stats.count(into, stats.CHANNEL_HIST + small_bus.stats.channel_index("http.request") * stats.HIST_WORDS) == 1
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    assert small_bus.reclaim_dead() == 1
    assert stats.read(small_bus.stem, slot, gen) is None
    assert [os.path.basename(f) for f in _stats_files(prefix)] == [
        segments.file_name(small_bus.stem, stats.suffix(small_bus.slot, small_bus.gen))]


def test_threads_count_in_shards_of_their_own_and_lose_nothing(small_bus):
    n, threads = 20000, 8
    counted = []

    def count():
        words = small_bus.stats.shard()
        counted.append(words)
        for _ in range(n):
            words[stats.C["consumer_messages"]] += 1

    ts = [threading.Thread(target=count) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len({id(w) for w in counted}) == threads
    totals = stats.read(small_bus.stem, small_bus.slot, small_bus.gen)
    assert totals.by_kind[0][stats.C["consumer_messages"]] == n * threads


def test_counters_view_is_a_dict_for_the_protocol_server(small_bus):
    words = small_bus.stats.shard()
    counters = stats.Counters(words, stats.PROTOCOL_COUNTERS)
    counters["rejected_full"] += 2
    assert {**counters}["rejected_full"] == 2 and words[stats.C["rejected_full"]] == 2
    assert "resumes" in counters and len(counters) == len(stats.PROTOCOL_COUNTERS)


def test_the_segment_goes_with_a_clean_detach(prefix):
    b = bus_mod.Bus(prefix, ring_size=1 << 16, collect_dead=False)
    assert len(_stats_files(prefix)) == 1
    b.detach()
    assert bus_files_of(prefix) == []


def _count_and_leave(prefix, q):
    bus = bus_mod.Bus(prefix, ring_size=1 << 16, collect_dead=False)
    bus.stats.shard()[stats.C["consumer_messages"]] += 7
    q.put((bus.slot, bus.gen))
    bus.detach()


def test_under_a_master_a_clean_exit_leaves_the_segment_until_its_pid_is_gone(small_bus, prefix):
    small_bus.control.set_master_slot(small_bus.slot)  # we play the serve master
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    child = ctx.Process(target=_count_and_leave, args=(prefix, q))
    child.start()
    slot, gen = q.get(timeout=20)
    # wait for its exit without reaping it: a zombie, as a child the master has not reaped yet
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    # detached, its slot free, the process a zombie: the master can still read what it counted
    assert stats.read(small_bus.stem, slot, gen).by_kind[0][stats.C["consumer_messages"]] == 7
    assert small_bus.recovery.sweep_stats() == 0
    child.join(10)
    assert small_bus.recovery.sweep_stats() == 1
    assert stats.read(small_bus.stem, slot, gen) is None
    small_bus.control.set_master_slot(None)


def test_channels_past_the_table_share_the_other_row(small_bus):
    """An app with more message types than rows keeps a bounded label set:
    the first CHANNELS - 1 get a row each, every later one the '(other)' row,
    and no observation is lost (before, they were not counted at all)."""
    words = small_bus.stats.shard()
    names = [f"app.type{i}" for i in range(stats.CHANNELS + 4)]
    for name in names:
        stats.observe(words, stats.CHANNEL_HIST + small_bus.stats.channel_index(name) * stats.HIST_WORDS, 1000)
    totals = stats.read(small_bus.stem, small_bus.slot, small_bus.gen)
    assert totals.channels == names[: stats.CHANNELS - 1] + [stats.OTHER_CHANNELS]
    per_row = [stats.count(totals.by_kind[0], stats.CHANNEL_HIST + i * stats.HIST_WORDS) for i in range(stats.CHANNELS)]
    assert per_row == [1] * (stats.CHANNELS - 1) + [5]
