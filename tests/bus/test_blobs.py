"""Large messages travel in blobs (``shmchannels/bus/blobs.py``): files of
their own in /dev/shm, named by the bus, referenced by a ring record.

Every way a blob can be orphaned is a real process SIGKILLed at that moment
(``blobs._fault`` kills it there): its sender before its record is put or
before the blob is published, its receiver after taking the record and
before unlinking the name; and a record that expires unread.  Each time the
blob must be gone after the usual recovery paths (an attach, the janitor),
and nothing else lost.
"""

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import shmchannels
from shmchannels.bus import blobs, segments

CTX = multiprocessing.get_context("fork")
BIG = 2 << 20  # over blobs.INLINE_MAX: always a blob


def blob_files(prefix):
    return [b for b, _k, _m in segments.files_of_kind(segments.bus_stem(prefix), "blob")]


def kill_at(point):
    def fault(where):
        if where == point:
            os.kill(os.getpid(), signal.SIGKILL)
    return fault


def _send_and_die(prefix, point, channel, group):
    blobs._fault = kill_at(point)
    layer = shmchannels.ChannelLayer(prefix=prefix, expiry=30)
    if group:
        layer.group_add("g", channel)
        layer.send_group("g", {"b": b"x" * BIG})
    else:
        layer.send(channel, {"b": b"x" * BIG})
    os._exit(3)  # not reached


def _receive_and_die(prefix, channel):
    blobs._fault = kill_at("taken")
    layer = shmchannels.ChannelLayer(prefix=prefix, expiry=30)
    layer.receive([channel], block=True)
    os._exit(3)


def run(target, *args):
    p = CTX.Process(target=target, args=args)
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL, p.exitcode
    return p


def test_a_message_over_the_inline_limit_rides_in_one_blob_that_its_receiver_unlinks(prefix):
    layer = shmchannels.ChannelLayer(prefix=prefix)
    small = {"b": b"s" * (blobs.INLINE_MAX - 100)}
    layer.send("c", small)
    assert blob_files(prefix) == []
    big = {"b": os.urandom(BIG), "t": "é" * 1000}
    layer.send("c", big)
    (name,) = blob_files(prefix)
    assert segments.classify(segments.bus_stem(prefix), name)[0] == "blob"
    assert os.stat(segments.path(name)).st_mode & 0o777 == 0o400  # published
    assert layer.receive(["c"]) == ("c", small)
    assert layer.receive(["c"]) == ("c", big)
    assert blob_files(prefix) == []


@pytest.mark.parametrize("point", ["written", "put"])
@pytest.mark.parametrize("group", [False, True], ids=["send", "group_send"])
def test_a_sender_killed_before_publishing_its_blob_leaves_nothing(prefix, point, group):
    """Killed after writing the blob (no record yet) or after putting its
    records (blob not yet published): the next attach unlinks the blob at
    once, since its owner is dead and never handed it over."""
    channel = "named" if not group else None
    if group:
        owner = shmchannels.ChannelLayer(prefix=prefix)
        channel = owner.new_channel("member?")
    run(_send_and_die, prefix, point, channel, group)
    assert len(blob_files(prefix)) == 1
    layer = shmchannels.ChannelLayer(prefix=prefix)
    bus = layer.core.bus  # a first attach here reclaims the dead slot and its unpublished blob
    if group:  # attached before the child ran: the janitor's pass (serve's master, every 5 s)
        assert bus.janitor() == 1
    assert blob_files(prefix) == []
    # a record put before the death names a blob that is gone: nothing is delivered
    assert layer.receive([channel]) == (None, None)
    layer.send(channel, {"b": b"y" * BIG})
    assert layer.receive([channel]) == (channel, {"b": b"y" * BIG})
    layer.flush()


def test_a_receiver_killed_after_taking_the_record_leaves_a_blob_the_janitor_reclaims(prefix, monkeypatch):
    layer = shmchannels.ChannelLayer(prefix=prefix, expiry=0.5)
    layer.send("c", {"b": b"x" * BIG})
    run(_receive_and_die, prefix, "c")
    assert len(blob_files(prefix)) == 1  # the record is gone, the name is not
    monkeypatch.setattr(blobs, "GRACE_NS", 0)
    time.sleep(0.6)
    layer.core.bus.janitor()
    assert blob_files(prefix) == []


def test_a_blob_whose_record_expired_unread_is_reclaimed_by_the_janitor(prefix, monkeypatch):
    layer = shmchannels.ChannelLayer(prefix=prefix, expiry=0.5)
    layer.send("c", {"b": b"x" * BIG})
    bus = layer.core.bus
    assert bus.janitor() == 0 and len(blob_files(prefix)) == 1  # not before its deadline + grace
    monkeypatch.setattr(blobs, "GRACE_NS", 0)
    time.sleep(0.6)
    bus.janitor()
    assert blob_files(prefix) == []
    assert layer.receive(["c"]) == (None, None)


def test_a_group_send_writes_the_message_once_and_links_a_name_per_receiving_process(prefix):
    """Three receiving processes (three ``prefix!`` rings) and a named
    channel: four names, one inode, one copy of the data in /dev/shm."""
    parent_r, child_w = CTX.Pipe(duplex=False)
    go = CTX.Event()

    def member(i):
        layer = shmchannels.ChannelLayer(prefix=prefix)
        pp = layer.process_prefix()
        ch = layer.new_channel("m?") if i else pp + "x"
        layer.group_add("g", ch)
        child_w.send("ready")
        go.wait(30)  # not before the send is over: a receiver unlinks its name as soon as it takes the record
        got = layer.receive([ch if i else pp], block=True)
        child_w.send(len(got[1]["b"]))
        os._exit(0)

    procs = [CTX.Process(target=member, args=(i,)) for i in range(3)]
    for p in procs:
        p.start()
    for _ in procs:
        assert parent_r.recv() == "ready"
    layer = shmchannels.ChannelLayer(prefix=prefix)
    layer.group_add("g", "named")
    blobs_fault = []
    blobs._fault = lambda where: where == "put" and blobs_fault.extend(blob_files(prefix))
    try:
        layer.send_group("g", {"b": b"z" * (8 << 20)})
    finally:
        blobs._fault = None
    go.set()
    assert len(blobs_fault) == 4, blobs_fault
    inodes = {os.stat(segments.path(n)).st_ino for n in blobs_fault if os.path.exists(segments.path(n))}
    assert len(inodes) == 1
    assert sorted(parent_r.recv() for _ in procs) == [8 << 20] * 3
    for p in procs:
        p.join(10)
    assert layer.receive(["named"])[1]["b"] == b"z" * (8 << 20)
    assert blob_files(prefix) == []
    layer.group_discard("g", "named")


needs_unshare = pytest.mark.skipif(
    (shutil.which("unshare") is None or os.geteuid() != 0) and not os.environ.get("CI"),
    reason="needs root and unshare(1) for a private /dev/shm (CI has both)",
)


@needs_unshare
def test_a_full_dev_shm_while_writing_a_blob_is_channel_full_and_loses_nothing(tmp_path):
    script = tmp_path / "full.py"
    script.write_text(textwrap.dedent("""
        import glob
        import shmchannels
        from shmchannels.exceptions import ChannelFull
        layer = shmchannels.ChannelLayer(prefix="fullblob", capacity=1000)
        big = {"b": b"x" * (3 << 20)}
        stored = 0
        try:
            while stored < 100:
                layer.send("first", big)
                stored += 1
        except ChannelFull as exc:
            print("FULL", stored, exc)
        print("BLOBS", len(glob.glob("/dev/shm/*@b*")))
        layer.group_add("g", "first")
        try:
            layer.send_group("g", big)
            print("GROUPSEND returned")
        except ChannelFull as exc:
            print("GROUPSEND raised", exc)
        layer.group_discard("g", "first")
        got = 0
        while True:
            ch, m = layer.receive(["first"])
            if m is None:
                break
            assert m == big
            got += 1
        print("GOT", got, "OF", stored)
        layer.send("first", big)
        print("AFTER", layer.receive(["first"])[1] == big)
    """))
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount -t tmpfs -o size=16m tmpfs /dev/shm && exec {sys.executable} {script}"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"exit {proc.returncode} (-7 is SIGBUS): {proc.stderr[-2000:]}"
    out = proc.stdout
    assert "FULL" in out and "no memory left in /dev/shm" in out and "first" in out.split("FULL", 1)[1], out
    stored = int(out.split("FULL ", 1)[1].split()[0])
    assert 2 <= stored <= 5, out
    assert f"BLOBS {stored}" in out, out  # the refused one left no partial blob
    assert "GROUPSEND returned" in out, out
    assert f"GOT {stored} OF {stored}" in out and "AFTER True" in out, out
