"""shmchannels.registry.Registry on a real bus: memberships grouped by
ring, the per-process cache and its validation by bucket versions, owner
clean-up, flush, and the rebuild of a damaged database."""

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from shmchannels import names
from shmchannels.bus import segments
from shmchannels.bus.control import GROUP_BUCKETS
from shmchannels.bus import Bus
from shmchannels.bus.registry import Registry, bucket_of, is_damage

DAY = 86400


@pytest.fixture
def bus(prefix):
    b = Bus(prefix, ring_size=1 << 16, collect_dead=False)
    yield b
    b.flush()  # memberships would keep the bus's files alive after the last detach
    b.detach()


@pytest.fixture
def other(bus):
    """A second Registry on the same bus: what another process sees and writes."""
    reg = Registry(bus.stem, bus.control, bus.liveness.bus_lock)
    yield reg
    reg.close()


def minted(slot, gen, namespace="websocket.send."):
    """A process-specific prefix minted by (slot, gen), with its '!'."""
    return namespace + names.new_client_prefix(slot, gen) + "!"


def smash(path):
    """Overwrite a database and its WAL with garbage, in place."""
    for suffix in ("", "-wal"):
        size = os.path.getsize(path + suffix)
        with open(path + suffix, "r+b") as f:
            f.write(b"garbage!" * (size // 8 + 1))


def corrupt_owner_index(path):
    """Damage only the owner index: the table stays readable by a full scan."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'members_owner'").fetchone()[0]
        page = conn.execute("PRAGMA page_size").fetchone()[0]
    finally:
        conn.close()
    with open(path, "r+b") as f:
        f.seek((root - 1) * page)
        f.write(b"garbage!" * (page // 8))


# --------------------------------------------------------------- add, targets


def test_targets_group_members_by_ring_with_their_meta(bus):
    reg = bus.registry
    mine = minted(bus.slot, bus.gen)
    theirs = minted(17, 3, "http.response.")
    members = ["named.a", "named.b", mine + "l1", mine + "l2", mine + "l3", theirs + "x", "spr_test!q",
               "http.request.body?Ab3"]
    for m in members:
        reg.add("room", m)
    targets = reg.targets("room", DAY)
    assert set(targets) == {"named.a", "named.b", mine, theirs, "spr_test!", "http.request.body?Ab3"}
    assert targets["named.a"] == (["named.a"], None)
    assert targets["http.request.body?Ab3"] == (["http.request.body?Ab3"], None)
    chans, meta = targets[mine]
    assert sorted(chans) == [mine + "l1", mine + "l2", mine + "l3"]
    # meta names the targets by local part, in the order of the channel list
    assert meta == "\n".join(c[len(mine):] for c in chans).encode("utf-8")
    assert targets[theirs] == ([theirs + "x"], b"x")
    assert targets["spr_test!"] == (["spr_test!q"], b"q")
    assert sorted(reg.channels("room", DAY)) == sorted(members)
    assert reg.counts() == {"room": len(members)}


def test_non_ascii_local_parts_are_utf8_in_the_meta(bus):
    key = minted(bus.slot, bus.gen)
    bus.registry.add("g", key + "\u00e9t\u00e9")
    assert bus.registry.targets("g", DAY)[key] == ([key + "\u00e9t\u00e9"], "\u00e9t\u00e9".encode("utf-8"))


def test_add_is_idempotent_and_discard_removes(bus):
    reg = bus.registry
    reg.add("g", "c1")
    reg.add("g", "c1")
    reg.add("g", "c2")
    assert reg.counts() == {"g": 2}
    reg.discard("g", "c1")
    assert reg.channels("g", DAY) == ["c2"]
    assert set(reg.targets("g", DAY)) == {"c2"}
    reg.discard("g", "never-added")  # not an error
    reg.discard("g", "c2")
    assert reg.targets("g", DAY) == {}
    assert reg.channels("g", DAY) == []
    assert reg.is_empty()


def test_groups_are_independent(bus):
    reg = bus.registry
    reg.add("a", "c")
    reg.add("b", "c")
    reg.discard("a", "c")
    assert reg.targets("a", DAY) == {}
    assert reg.targets("b", DAY) == {"c": (["c"], None)}
    assert reg.counts() == {"b": 1}


def test_channels_are_listed_oldest_first(bus):
    reg = bus.registry
    for c in ("z", "a", "m"):
        reg.add("g", c)
    assert reg.channels("g", DAY) == ["z", "a", "m"]
    reg.add("g", "z")  # re-adding renews
    assert reg.channels("g", DAY) == ["a", "m", "z"]


def test_every_write_moves_the_bucket_version_of_its_group(bus):
    reg, control = bus.registry, bus.control
    bucket = bucket_of("g")
    v0 = control.bucket_version(bucket)
    reg.add("g", "c")
    v1 = control.bucket_version(bucket)
    reg.discard("g", "c")
    v2 = control.bucket_version(bucket)
    assert v0 < v1 < v2


# -------------------------------------------------------------------- cache


def test_targets_are_reused_while_the_bucket_is_unchanged(bus):
    reg = bus.registry
    reg.add("g", "c")
    first = reg.targets("g", DAY)
    assert reg.targets("g", DAY) is first
    assert bucket_of("elsewhere") % GROUP_BUCKETS != bucket_of("g") % GROUP_BUCKETS
    reg.add("elsewhere", "c")  # a write to another bucket leaves g's cache valid
    assert reg.targets("g", DAY) is first
    reg.add("g", "d")
    second = reg.targets("g", DAY)
    assert second is not first and set(second) == {"c", "d"}


def test_a_write_by_another_registry_refreshes_the_cache(bus, other):
    reg = bus.registry
    reg.add("g", "c")
    cached = reg.targets("g", DAY)
    assert reg.targets("g", DAY) is cached
    other.add("g", "from.elsewhere")
    assert set(reg.targets("g", DAY)) == {"c", "from.elsewhere"}
    other.discard("g", "c")
    assert set(reg.targets("g", DAY)) == {"from.elsewhere"}
    assert set(other.targets("g", DAY)) == {"from.elsewhere"}


def test_members_expire_at_group_expiry_even_from_the_cache(bus):
    reg = bus.registry
    reg.add("g", "old")
    expiry = 0.4
    assert set(reg.targets("g", expiry)) == {"old"}
    time.sleep(0.25)
    reg.add("g", "young")
    assert set(reg.targets("g", expiry)) == {"old", "young"}
    cached = reg.targets("g", expiry)
    time.sleep(0.25)  # "old" is now 0.5 s old, "young" 0.25 s: nothing was written
    assert set(reg.targets("g", expiry)) == {"young"}
    assert reg.channels("g", expiry) == ["young"]
    assert reg.targets("g", expiry) is not cached
    # another expiry is another question, not the cached answer
    assert set(reg.targets("g", DAY)) == {"old", "young"}


def test_expire_deletes_old_memberships(bus):
    reg = bus.registry
    reg.add("a", "c1")
    reg.add("b", "c2")
    time.sleep(0.2)
    reg.add("b", "c3")
    assert reg.expire(0.1) == 2  # groups touched
    assert reg.counts() == {"b": 1}
    assert reg.channels("b", DAY) == ["c3"]
    assert reg.expire(DAY) == 0


# ----------------------------------------------------------------- owners


def test_drop_owner_forgets_only_that_owners_channels(bus):
    reg = bus.registry
    dead = minted(40, 7)
    single = names.new_single_reader("http.request.body?", 40, 7)
    alive = minted(41, 7)
    reg.add("a", dead + "x")
    reg.add("a", "named")
    reg.add("b", dead + "y")
    reg.add("b", single)
    reg.add("b", alive + "z")
    reg.add("c", minted(40, 8) + "w")  # same slot, later generation
    cached = reg.targets("b", DAY)
    assert reg.drop_owner(40, 7) == 2  # groups touched
    assert reg.channels("a", DAY) == ["named"]
    assert reg.targets("b", DAY) is not cached
    assert set(reg.targets("b", DAY)) == {alive}
    assert reg.counts() == {"a": 1, "b": 1, "c": 1}
    assert reg.drop_owner(40, 7) == 0


def test_drop_owner_matches_generations_modulo_the_mask(bus):
    reg = bus.registry
    reg.add("g", minted(3, names.GEN_MASK + 1 + 9) + "x")
    assert reg.drop_owner(3, 9) == 1
    assert reg.is_empty()


def test_drop_owners_except_keeps_live_owners_and_named_channels(bus):
    reg = bus.registry
    live = [(1, 1), (2, 5)]
    for slot, gen in live + [(1, 0), (3, 3)]:
        reg.add("g", minted(slot, gen) + "x")
    reg.add("g", names.new_single_reader("x?", 3, 3))
    reg.add("g", "named")
    reg.add("h", minted(9, 9) + "x")
    dropped = reg.drop_owners_except([names.owner_tag(s, g) for s, g in live])
    assert dropped == 3  # groups touched per dead owner: (1, 0) in g, (3, 3) in g, (9, 9) in h
    owners = sorted(names.member_owner(c) or () for c in reg.channels("g", DAY))
    assert owners == [(), (1, 1), (2, 5)]
    assert reg.counts() == {"g": 3}
    assert reg.drop_owners_except([]) == 2  # (1, 1) and (2, 5), one group each
    assert reg.channels("g", DAY) == ["named"]


# ---------------------------------------------------------- flush, counts


def test_flush_counts_and_is_empty(bus, other):
    reg = bus.registry
    assert reg.is_empty() and reg.counts() == {}
    reg.add("b", "c1")
    reg.add("a", "c1")
    reg.add("a", "c2")
    assert not reg.is_empty()
    assert reg.counts() == {"a": 2, "b": 1}
    assert list(reg.counts()) == ["a", "b"]
    cached = other.targets("a", DAY)
    reg.flush()
    assert reg.is_empty() and other.is_empty()
    assert reg.counts() == {}
    assert other.targets("a", DAY) == {} and cached  # the other's cache moved on


# ------------------------------------------------------------------ damage


def test_a_smashed_database_is_rebuilt_under_a_new_epoch(bus, other, caplog):
    reg = bus.registry
    reg.add("mine", "named.m1")
    reg.add("mine", minted(bus.slot, bus.gen) + "x")
    other.add("theirs", "named.t1")
    old = reg.path
    assert bus.control.registry_epoch == 0
    smash(old)
    with caplog.at_level(logging.ERROR, logger="shmchannels.registry"):
        reg.add("mine", "named.m2")
    assert bus.control.registry_epoch == 1
    assert reg.path != old and os.path.exists(reg.path)
    for suffix in ("", "-wal", "-shm"):
        assert not os.path.exists(old + suffix), "the damaged files were left behind"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("damaged" in m and "rebuilt as epoch 1" in m for m in errors), errors
    # nothing was readable; this registry restored what it wrote itself
    assert reg.counts() == {"mine": 3}
    # the other one restores its own at its next call, or at refresh()
    other.refresh()
    assert reg.counts() == {"mine": 3, "theirs": 1}
    assert other.counts() == {"mine": 3, "theirs": 1}


def test_a_stale_connection_reconnects_and_restores_at_its_next_call(bus, other):
    bus.registry.add("mine", "named.m")
    other.add("theirs", "named.t")  # the last writer: bus.registry's page cache is stale now
    smash(bus.registry.path)
    bus.registry.add("mine", "named.m2")  # reads the smashed pages: finds the damage, rebuilds
    assert bus.registry.counts() == {"mine": 2}
    assert set(other.targets("theirs", DAY)) == {"named.t"}  # its next call reconnects and restores
    assert bus.registry.counts() == {"mine": 2, "theirs": 1}
    assert bus.control.registry_epoch == 1


def test_rows_still_readable_are_salvaged(bus, other, caplog):
    reg = bus.registry
    forgotten = Registry(bus.stem, bus.control, bus.liveness.bus_lock)  # a process that is gone now
    forgotten.add("salvaged", "named.s")
    forgotten.add("salvaged", minted(200, 5) + "x")
    forgotten.close()
    reg.add("mine", "named.m")
    corrupt_owner_index(reg.path)
    with caplog.at_level(logging.ERROR, logger="shmchannels.registry"):
        assert other.drop_owner(99, 1) == 0  # reads the owner index: damaged
    assert bus.control.registry_epoch == 1
    assert any("3 memberships still readable" in r.getMessage() for r in caplog.records), caplog.text
    assert other.counts() == {"mine": 1, "salvaged": 2}
    assert reg.counts() == {"mine": 1, "salvaged": 2}
    assert reg.drop_owner(200, 5) == 1  # the new database works, index and all
    assert reg.counts() == {"mine": 1, "salvaged": 1}


def test_two_registries_finding_damage_rebuild_once(bus, other):
    bus.registry.add("g", "a")
    other.add("g", "b")
    smash(bus.registry.path)
    bus.registry.add("g", "c")
    other.add("g", "d")  # its epoch is stale: it reconnects, restores, writes; no second rebuild
    assert bus.control.registry_epoch == 1
    assert sorted(bus.registry.channels("g", DAY)) == ["a", "b", "c", "d"]


def test_refresh_is_a_no_op_without_a_rebuild(bus, other):
    other.refresh()  # never connected: nothing to do
    other.add("g", "c")
    epoch = bus.control.registry_epoch
    other.refresh()
    assert bus.control.registry_epoch == epoch
    assert other.counts() == {"g": 1}


def test_a_discarded_membership_is_not_restored_after_a_rebuild(bus, other):
    reg = bus.registry
    reg.add("g", "kept")
    reg.add("g", "gone")
    reg.discard("g", "gone")
    other.add("h", "theirs")  # the last writer: reg's page cache is stale
    smash(reg.path)
    reg.add("h", "x")
    assert bus.control.registry_epoch == 1
    assert reg.channels("g", DAY) == ["kept"]
    assert reg.counts() == {"g": 1, "h": 1}  # "theirs" comes back when `other` next calls


def _real_error(sql, path=None):
    conn = sqlite3.connect(path or ":memory:")
    try:
        conn.execute(sql)
    except Exception as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError(f"{sql} did not fail")


def test_is_damage_classifies_real_errors(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"garbage!" * 1024)
    assert is_damage(_real_error("SELECT * FROM members"))  # no such table
    assert is_damage(_real_error("SELECT * FROM sqlite_master", str(garbage)))  # file is not a database
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (a PRIMARY KEY)")
    conn.execute("INSERT INTO t VALUES (1)")
    try:
        conn.execute("INSERT INTO t VALUES (1)")
    except sqlite3.IntegrityError as exc:
        assert not is_damage(exc)
    conn.close()
    try:
        conn.execute("SELECT 1")
    except sqlite3.ProgrammingError as exc:  # a closed connection
        assert not is_damage(exc)
    assert not is_damage(_real_error("SELEKT 1"))  # a syntax error is ours, not damage


@pytest.mark.parametrize("exc, damage", [
    (sqlite3.OperationalError("no such table: members"), True),
    (sqlite3.OperationalError("database is locked"), False),
    (sqlite3.OperationalError("database or disk is full"), False),
    (sqlite3.OperationalError("disk I/O error"), False),
    (sqlite3.DatabaseError("database disk image is malformed"), True),
    (sqlite3.DatabaseError("file is not a database"), True),
    (sqlite3.IntegrityError("UNIQUE constraint failed"), False),
    (sqlite3.ProgrammingError("Cannot operate on a closed database."), False),
    (sqlite3.InterfaceError("bad parameter"), False),
    (ValueError("malformed"), False),
    (OSError("no such table"), False),
])
def test_is_damage_table(exc, damage):
    assert is_damage(exc) is damage


def test_registry_files_follow_the_epoch(bus, other):
    assert os.path.basename(bus.registry.path) == segments.registry_name(bus.stem, 0)
    bus.registry.add("g", "a")
    other.add("g", "b")
    smash(bus.registry.path)
    bus.registry.add("g", "c")
    assert os.path.basename(bus.registry.path) == segments.registry_name(bus.stem, 1)
    assert os.stat(bus.registry.path).st_mode & 0o777 == 0o600


@pytest.mark.skipif((shutil.which("unshare") is None or os.geteuid() != 0) and not os.environ.get("CI"),
                    reason="needs root and unshare(1) for a private /dev/shm (CI has both)")
def test_a_full_dev_shm_makes_group_add_channel_full_and_it_works_again_with_room(tmp_path):
    """A registry write that finds /dev/shm full is ChannelFull naming it (a
    raw sqlite3.OperationalError before), and the next one with room works."""
    script = tmp_path / "full.py"
    script.write_text(textwrap.dedent("""
        import os
        import shmchannels
        from shmchannels.exceptions import ChannelFull
        layer = shmchannels.ChannelLayer(prefix="fullreg")
        layer.group_add("g", "warm")
        with open("/dev/shm/filler", "wb") as f:
            try:
                while True:
                    f.write(b"x" * 65536)
                    f.flush()
            except OSError:
                pass
        outcome = "no error"
        for i in range(2000):
            try:
                layer.group_add("g" + str(i % 50), "member-" + str(i) + "-" + "m" * 60)
            except ChannelFull as exc:
                outcome = "FULL " + str(exc)
                break
        print(outcome)
        os.unlink("/dev/shm/filler")
        layer.group_add("after", "room")
        print("AFTER ok")
    """))
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount -t tmpfs -o size=16m tmpfs /dev/shm && exec {sys.executable} {script}"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("FULL no room in /dev/shm for the group registry"), proc.stdout
    assert lines[1] == "AFTER ok"
