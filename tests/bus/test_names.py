"""The name rules of shmchannels.names, table by table: channel names of
both API generations, group names, layer prefixes, and the mapping from a
channel name to its ring and to the process that owns it."""

import re

import pytest

from shmchannels import names

V4, V1, V1_RECEIVE = "v4", "v1", "v1-receive"


def check(name, mode):
    if mode == V4:
        return names.require_channel(name)
    if mode == V1:
        return names.require_channel(name, v1=True)
    return names.require_channel(name, receive=True, v1=True)


# ------------------------------------------------------------------ channels


@pytest.mark.parametrize("name", [
    "a",
    "http.request",
    "websocket.connect",
    "A-b_c.D9",
    "0.starts.with.a.digit",
    "a" * 99,
    "websocket.send!",
    "websocket.send!abc",
    "x!a-b_c.d",
    "x!" + "L" * 97,
    "x!\u00e9t\u00e9",  # the local part takes word characters, Unicode ones too (as in Channels)
])
@pytest.mark.parametrize("mode", [V4, V1])
def test_valid_channel_names(name, mode):
    assert check(name, mode) is True


@pytest.mark.parametrize("name", [
    "http.request.body?Ab3",
    "a?b",
    "a?shm00100000017f3e2c9a1bXYZ",
    "x?a-b_c.d",
])
def test_single_reader_names_are_valid_in_asgi1_only(name):
    assert names.require_channel(name, v1=True) is True
    with pytest.raises(TypeError) as exc:
        names.require_channel(name)
    assert names.CHANNEL_RULE in str(exc.value)


@pytest.mark.parametrize("name", ["websocket.send!", "a!", "a.b.c!"])
def test_asgi1_receives_a_whole_prefix(name):
    assert names.require_channel(name, receive=True, v1=True) is True
    assert names.require_channel(name, receive=True) is True


BAD_CHANNELS = [
    # (name, why)
    ("", "empty"),
    ("a" * 100, "100 characters: too long"),
    ("x!" + "L" * 98, "too long with a local part"),
    (5, "not a str"),
    (None, "not a str"),
    (b"http.request", "bytes are not a name"),
    (["a"], "a list"),
    ("a b", "space"),
    ("a/b", "slash"),
    ("a:b", "colon"),
    ("a@b", "at sign"),
    ("a*", "glob star"),
    ("!abc", "nothing before the '!'"),
    ("a!b!c", "two '!'"),
    ("a!b c", "space in the local part"),
    ("a!b/c", "slash in the local part"),
    ("a!b?c", "'?' in the local part"),
    ("\u00e9t\u00e9", "non-ASCII letters before the '!'"),
    ("a\tb", "tab"),
    ("\nabc", "leading newline"),
]


@pytest.mark.parametrize("name, why", BAD_CHANNELS, ids=[w for _, w in BAD_CHANNELS])
@pytest.mark.parametrize("mode", [V4, V1])
def test_invalid_channel_names_state_the_rule(name, why, mode):
    with pytest.raises(TypeError) as exc:
        check(name, mode)
    message = str(exc.value)
    assert message.startswith("Invalid channel name ")
    assert (names.V1_CHANNEL_RULE if mode == V1 else names.CHANNEL_RULE) in message


@pytest.mark.parametrize("name, why", [
    ("a?b?c", "two '?'"),
    ("a?b!c", "'?' then '!'"),
    ("?abc", "nothing before the '?'"),
    ("a?b c", "space after the '?'"),
])
def test_invalid_single_reader_names_state_the_rule(name, why):
    with pytest.raises(TypeError) as exc:
        names.require_channel(name, v1=True)
    assert names.V1_CHANNEL_RULE in str(exc.value)


def test_the_rules_differ_only_by_the_single_reader_marker():
    assert "'?'" not in names.CHANNEL_RULE
    assert "one '?' (single-reader) or '!' (process-specific)" in names.V1_CHANNEL_RULE


@pytest.mark.parametrize("name", ["a?", "http.request.body?"])
def test_a_single_reader_name_must_not_end_at_the_marker(name):
    with pytest.raises(TypeError, match=re.escape("single-reader channel names must not end with '?'")):
        names.require_channel(name, v1=True)


@pytest.mark.parametrize("name", ["websocket.send!abc", "a!b"])
def test_receive_of_a_process_specific_name_must_end_at_the_bang(name):
    assert names.require_channel(name, v1=True) is True  # a full name is fine to send to
    with pytest.raises(TypeError, match=re.escape("process-specific names in receive() must end at the '!'")):
        names.require_channel(name, receive=True, v1=True)
    with pytest.raises(TypeError, match=re.escape("must end at the '!'")):
        names.require_channel(name, receive=True)


def test_a_long_invalid_name_is_shortened_in_the_message():
    name = "a b" * 200
    with pytest.raises(TypeError) as exc:
        names.require_channel(name)
    message = str(exc.value)
    assert repr(name)[:117] + "..." in message
    assert len(message) < 120 + 400


@pytest.mark.parametrize("name, mode", [("abc\n", V4), ("a!b\n", V4), ("abc\n", V1), ("a?b\n", V1)])
def test_a_trailing_newline_is_not_a_valid_channel_name(name, mode):
    with pytest.raises(TypeError):
        check(name, mode)


# -------------------------------------------------------------------- groups


@pytest.mark.parametrize("name", ["room", "a", "a.b-c_D9", "0", "g" * 99])
def test_valid_group_names(name):
    assert names.require_group(name) is True


BAD_GROUPS = [
    ("", "empty"),
    ("g" * 100, "too long"),
    ("a b", "space"),
    ("a!b", "process-specific marker"),
    ("a!", "trailing '!'"),
    ("a?b", "single-reader marker"),
    ("\u00e9t\u00e9", "non-ASCII"),
    ("a/b", "slash"),
    (1, "not a str"),
    (None, "not a str (None)"),
    (b"room", "bytes"),
]


@pytest.mark.parametrize("name, why", BAD_GROUPS, ids=[w for _, w in BAD_GROUPS])
def test_invalid_group_names_state_the_rule(name, why):
    with pytest.raises(TypeError) as exc:
        names.require_group(name)
    assert str(exc.value).startswith("Invalid group name ")
    assert names.GROUP_RULE in str(exc.value)


def test_a_trailing_newline_is_not_a_valid_group_name():
    with pytest.raises(TypeError):
        names.require_group("room\n")


# ------------------------------------------------------------------ prefixes


@pytest.mark.parametrize("prefix", ["asgi", "a", "_x", "0abc", "a.b-c_D", "p" * 64, "shmchannels"])
def test_valid_prefixes_are_returned(prefix):
    assert names.require_prefix(prefix) == prefix


BAD_PREFIXES = [
    ("", "empty"),
    ("-a", "starts with '-'"),
    (".a", "starts with '.'"),
    ("p" * 65, "65 characters"),
    ("a@b", "'@' separates the prefix from the suffix in file names"),
    ("a/b", "slash"),
    ("a b", "space"),
    ("a!", "bang"),
    ("\u00e9", "non-ASCII"),
    (7, "not a str"),
    (None, "None"),
]


@pytest.mark.parametrize("prefix, why", BAD_PREFIXES, ids=[w for _, w in BAD_PREFIXES])
def test_invalid_prefixes_state_the_rule(prefix, why):
    with pytest.raises(TypeError) as exc:
        names.require_prefix(prefix)
    message = str(exc.value)
    assert message.startswith("Invalid layer prefix ")
    assert "a prefix must be 1-64 ASCII letters, digits, '_', '-' or '.', not starting with '-' or '.'" in message


def test_a_trailing_newline_is_not_a_valid_prefix():
    with pytest.raises(TypeError):
        names.require_prefix("asgi\n")


# ----------------------------------------------------------------- ring keys


@pytest.mark.parametrize("channel, key", [
    ("http.request", "http.request"),
    ("thumbnail", "thumbnail"),
    ("http.request.body?Ab3", "http.request.body?Ab3"),
    ("websocket.send!", "websocket.send!"),
    ("websocket.send!Ab3", "websocket.send!"),
    ("websocket.send.shm0a3000001f2c4e9a81b!Ab3", "websocket.send.shm0a3000001f2c4e9a81b!"),
    ("spr_test!x", "spr_test!"),
    ("a!b!c", "a!"),  # never valid, but the key still ends at the first '!'
])
def test_ring_key(channel, key):
    assert names.ring_key(channel) == key


# --------------------------------------------------------------- ownership

TAG = names.owner_tag(0xA3, 0x1F2)  # "0a3" + "00001f2"
RANDOM = "c4e9a81b2d"


@pytest.mark.parametrize("key, owner", [
    (f"shm{TAG}{RANDOM}!", (0xA3, 0x1F2)),
    (f"websocket.send.shm{TAG}{RANDOM}!", (0xA3, 0x1F2)),
    (f"http.response.shm{TAG}{RANDOM}!", (0xA3, 0x1F2)),
    (f"shm{names.owner_tag(0, 0)}{RANDOM}!", (0, 0)),
    (f"shm{names.owner_tag(0xFFF, names.GEN_MASK)}{RANDOM}!", (0xFFF, names.GEN_MASK)),
    ("spr_test!", None),
    ("daphne.response.X!", None),
    ("http.request", None),
    (f"xshm{TAG}{RANDOM}!", None),  # the minted part starts the key or follows a '.'
    (f"shm{TAG}{RANDOM}", None),  # no '!'
    (f"shm{TAG}{RANDOM}!local", None),  # a full channel name is not a key
    (f"shm{TAG}{RANDOM[:-1]}!", None),  # 9 random digits
    (f"shm{TAG}{RANDOM}0!", None),  # 11 random digits
    (f"shm{TAG.upper()}{RANDOM}!", None),  # lower-case hex only
    (f"SHM{TAG}{RANDOM}!", None),
])
def test_owner_of(key, owner):
    assert names.owner_of(key) == owner


SINGLE = f"http.request.body?shm{TAG}AbC-_9"


@pytest.mark.parametrize("channel, owner", [
    (f"websocket.send.shm{TAG}{RANDOM}!Ab3", (0xA3, 0x1F2)),
    (f"websocket.send.shm{TAG}{RANDOM}!", (0xA3, 0x1F2)),
    ("spr_test!abc", None),  # unowned prefix: a named channel
    (SINGLE, (0xA3, 0x1F2)),
    ("http.request.body?Ab3", None),  # single-reader, not tagged by its minter
    (f"http.request.body?xshm{TAG}AbC", None),  # the tag must follow the '?'
    (f"http.request.body?shm{TAG}", None),  # nothing random after the tag
    ("http.request", None),
    (f"group.shm{TAG}abc", None),  # a tag-like part in a named channel means nothing
])
def test_member_owner(channel, owner):
    assert names.member_owner(channel) == owner


@pytest.mark.parametrize("slot, gen, tag", [
    (0, 0, "0000000000"),
    (1, 1, "0010000001"),
    (0xA3, 0x1F2, "0a300001f2"),
    (0xFFF, names.GEN_MASK, "fff" + "f" * 7),
    (2, names.GEN_MASK + 1 + 5, "0020000005"),  # generations wrap at 2**28
])
def test_owner_tag(slot, gen, tag):
    assert names.owner_tag(slot, gen) == tag


@pytest.mark.parametrize("slot, gen", [(0, 0), (5, 3), (0xFFF, names.GEN_MASK), (7, (1 << 28) + 9)])
def test_new_client_prefix_names_its_owner(slot, gen):
    prefix = names.new_client_prefix(slot, gen)
    assert re.fullmatch(r"shm[0-9a-f]{20}", prefix)
    assert prefix.startswith("shm" + names.owner_tag(slot, gen))
    assert names.owner_of(prefix + "!") == (slot, gen & names.GEN_MASK)
    assert names.owner_of("websocket.send." + prefix + "!") == (slot, gen & names.GEN_MASK)
    assert names.member_owner("websocket.send." + prefix + "!" + names.new_local_part()) == (slot, gen & names.GEN_MASK)
    assert names.require_channel(prefix + "!" + names.new_local_part()) is True


def test_new_client_prefixes_differ():
    assert len({names.new_client_prefix(1, 1) for _ in range(1000)}) == 1000


def test_new_local_part_fits_the_local_part_rule():
    for _ in range(200):
        local = names.new_local_part()
        assert re.fullmatch(r"[A-Za-z0-9_\-]{16}[0-9a-f]+", local)
        assert names.require_channel("x!" + local) is True


def test_new_local_parts_never_repeat_in_a_process_or_its_forked_children():
    import os
    mine = {names.new_local_part() for _ in range(10_000)}
    assert len(mine) == 10_000
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child draws as many again: none may be one of the parent's
        os.close(read_end)
        child = {names.new_local_part() for _ in range(10_000)}
        os.write(write_end, b"1" if len(child) == 10_000 and not child & mine else b"0")
        os._exit(0)
    os.close(write_end)
    try:
        assert os.read(read_end, 1) == b"1"
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    parent_next = names.new_local_part()
    assert parent_next not in mine and parent_next[:16] == next(iter(mine))[:16]


@pytest.mark.parametrize("slot, gen", [(0, 0), (5, 3), (0x123, (1 << 28) + 4)])
def test_new_single_reader_names_its_minter(slot, gen):
    name = names.new_single_reader("http.request.body?", slot, gen)
    assert name.startswith("http.request.body?shm" + names.owner_tag(slot, gen))
    assert names.require_channel(name, v1=True) is True
    assert names.member_owner(name) == (slot, gen & names.GEN_MASK)
    assert names.ring_key(name) == name
    assert names.owner_of(names.ring_key(name)) is None  # its ring is a named ring, read by anyone
    assert len({names.new_single_reader("x?", slot, gen) for _ in range(500)}) == 500


@pytest.mark.parametrize("length", [64, 65, 77])
def test_new_single_reader_drops_the_tag_rather_than_exceed_the_length_limit(length):
    pattern = "a" * (length - 1) + "?"
    name = names.new_single_reader(pattern, 5, 3)
    assert len(name) < names.MAX_NAME_LENGTH
    assert names.require_channel(name, v1=True) is True
    local = len(name) - len(pattern) - (3 + 10 if names.member_owner(name) else 0)
    tagged = len(pattern) + 3 + 10 + local < names.MAX_NAME_LENGTH
    assert names.member_owner(name) == ((5, 3) if tagged else None)
    assert name.startswith(pattern + ("shm" + names.owner_tag(5, 3) if tagged else ""))
