"""Out of space and damaged segments: clear errors, repair, never a hang.

/dev/shm full is simulated in a private mount namespace (``unshare -m``)
with a small tmpfs, so the test cannot fill the host's /dev/shm.  Damage is
done the way a bug or a stray ``dd`` would: bytes of a ring file overwritten
or the file truncated, while no process has it mapped, then used again.
"""

import logging
import multiprocessing
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import time

import pytest

import shmchannels
from shmchannels.bus import segments

CTX = multiprocessing.get_context("fork")
TAIL_POS, HEAD_POS = 256, 320  # ring header words (see docs/architecture.md)
RING_HEADER = 4096


def _send_and_exit(prefix, channel, count):
    layer = shmchannels.ChannelLayer(prefix=prefix)
    for i in range(count):
        layer.send(channel, {"n": i})


def leave_messages(prefix, channel, count=1):
    """A process that sends ``count`` messages to ``channel`` and exits: the
    ring is then mapped by nobody."""
    p = CTX.Process(target=_send_and_exit, args=(prefix, channel, count))
    p.start()
    p.join(20)
    assert p.exitcode == 0
    return ring_file(prefix, channel)


def ring_file(prefix, channel):
    return segments.path(segments.file_name(segments.bus_stem(prefix), f"r{segments.ring_hash(channel)}"))


def read_word(path, offset):
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack("<Q", f.read(8))[0]


def write_word(path, offset, value):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack("<Q", value))


needs_unshare = pytest.mark.skipif(
    (shutil.which("unshare") is None or os.geteuid() != 0) and not os.environ.get("CI"),
    reason="needs root and unshare(1) for a private /dev/shm (CI has both)",
)


@needs_unshare
def test_a_full_dev_shm_is_a_clear_error_and_nothing_else_breaks(tmp_path):
    """In a 4 MiB /dev/shm: sends fill the memory until ChannelFull names
    /dev/shm (no SIGBUS), a new ring is refused with a clear error, and
    everything stored is still delivered."""
    script = tmp_path / "full.py"
    script.write_text(textwrap.dedent("""
        import shmchannels
        from shmchannels.exceptions import BusError, ChannelFull
        layer = shmchannels.ChannelLayer(prefix="full", capacity=1000)
        big = {"b": b"x" * 200_000}
        stored = 0
        try:
            while stored < 1000:
                layer.send("first", big)
                stored += 1
        except ChannelFull as exc:
            print("FULL", stored, exc)
        try:
            layer.send("second", {"n": 1})
        except (BusError, ChannelFull) as exc:
            print("REFUSED", type(exc).__name__, exc)
        else:
            print("ACCEPTED")
        got = 0
        while layer.receive(["first"])[1] is not None:
            got += 1
        print("GOT", got, "OF", stored)
    """))
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         f"mount -t tmpfs -o size=4m tmpfs /dev/shm && exec {sys.executable} {script}"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"exit {proc.returncode} (-7 is SIGBUS): {proc.stderr[-2000:]}"
    out = proc.stdout
    assert "FULL" in out and "no memory left in /dev/shm" in out, out
    stored = int(out.split("FULL ", 1)[1].split()[0])
    assert 5 <= stored < 20, out
    assert "REFUSED" in out and "/dev/shm" in out.split("REFUSED", 1)[1], out
    assert f"GOT {stored} OF {stored}" in out, out


def test_a_truncated_ring_file_is_replaced_with_an_error_logged(prefix, caplog):
    path = leave_messages(prefix, "trunc")
    os.truncate(path, 100)
    layer = shmchannels.ChannelLayer(prefix=prefix)
    with caplog.at_level(logging.ERROR, logger="shmchannels.bus"):
        assert layer.receive(["trunc"]) == (None, None)
    assert any("damaged" in r.getMessage() for r in caplog.records), caplog.text
    layer.send("trunc", {"n": "fresh"})
    assert layer.receive(["trunc"])[1] == {"n": "fresh"}


def test_an_emptied_ring_file_is_replaced(prefix, caplog):
    path = leave_messages(prefix, "empty")
    os.truncate(path, 0)
    layer = shmchannels.ChannelLayer(prefix=prefix)
    with caplog.at_level(logging.ERROR, logger="shmchannels.bus"):
        layer.send("empty", {"n": "fresh"})
    assert any("damaged" in r.getMessage() for r in caplog.records), caplog.text
    assert layer.receive(["empty"])[1] == {"n": "fresh"}


@pytest.mark.parametrize("damage", ["head past tail", "tail a lap ahead", "misaligned tail"])
def test_corrupted_head_or_tail_words_are_detected_and_repaired(prefix, caplog, damage):
    path = leave_messages(prefix, "hdr", count=3)
    tail = read_word(path, TAIL_POS)
    if damage == "head past tail":
        write_word(path, HEAD_POS, tail + 4096)
    elif damage == "tail a lap ahead":
        write_word(path, TAIL_POS, tail + (64 << 20))
    else:
        write_word(path, TAIL_POS, tail + 3)
    layer = shmchannels.ChannelLayer(prefix=prefix)
    with caplog.at_level(logging.ERROR, logger="shmchannels.bus"):
        layer.send("hdr", {"n": "after"})  # no ChannelFull, no hang
    assert any("damaged" in r.getMessage() for r in caplog.records), caplog.text
    assert layer.receive(["hdr"])[1] == {"n": "after"}
    assert layer.receive(["hdr"]) == (None, None)


def test_a_corrupted_record_at_the_head_is_dropped_within_the_reset_time(prefix, caplog):
    path = leave_messages(prefix, "rec", count=2)
    head = read_word(path, HEAD_POS)
    with open(path, "r+b") as f:
        f.seek(RING_HEADER + head % (8 << 20))
        f.write(b"\x5a" * 16)  # the seal (and length) of the head record
    layer = shmchannels.ChannelLayer(prefix=prefix)
    start = time.time()
    with caplog.at_level(logging.ERROR, logger="shmchannels.bus"):
        while layer.receive(["rec"], block=True) == (None, None) and time.time() - start < 10:
            if any("dropping" in r.getMessage() for r in caplog.records):
                break
    dropped = [r for r in caplog.records if "no live writer" in r.getMessage()]
    assert dropped, caplog.text
    assert dropped[0].created - start < 3, f"a corrupted head blocked the ring for {dropped[0].created - start:.1f} s"
    layer.send("rec", {"n": "after"})
    assert layer.receive(["rec"])[1] == {"n": "after"}
