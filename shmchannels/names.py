"""Channel and group names: validation rules of both API generations, and
the mapping from a channel name to the ring that carries it.

A *ring key* names one ring on the bus:

* a normal channel (``http.request``) or a single-reader channel
  (``http.request.body?Ab3``) is its own ring;
* a process-specific channel (``websocket.send.shm…!Xy``) travels in the ring
  of its non-local part (``websocket.send.shm…!``), and the full name rides in
  the record so the receiver can route it.  Capacity is therefore counted per
  ``prefix!``, as the ASGI spec says.

Prefixes minted by a layer instance end in ``shm`` + 20 hex digits: the
owner's process slot (3), its slot generation (7, modulo 2**28) and 40
random bits, so two instances in one process never share one.  The ring
behind such a prefix is *owned* by the process that minted it and dies with
it.  Any other ``prefix!`` (``spr_test!``, a Daphne-1 style
``daphne.response.X!``) is an unowned ring that any process may read.
"""

import itertools
import os
import re
import secrets

MAX_NAME_LENGTH = 100  # names must be shorter than this, as in Channels and asgiref

_V4_CHANNEL = re.compile(r"^[a-zA-Z\d\-_.]+(!([\d\w\-_.]*))?\Z")
_V1_CHANNEL = re.compile(r"^[a-zA-Z\d\-_.]+([?!][\d\w\-_.]*)?\Z")
_GROUP = re.compile(r"^[a-zA-Z\d\-_.]+\Z")
_MINTED = re.compile(r"(?:^|\.)shm([0-9a-f]{3})([0-9a-f]{7})[0-9a-f]{10}!\Z")
_MINTED_SINGLE = re.compile(r"\?shm([0-9a-f]{3})([0-9a-f]{7})[A-Za-z0-9_\-]+\Z")
GEN_MASK = (1 << 28) - 1
_PREFIX = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}\Z")

CHANNEL_RULE = (
    "a str shorter than 100 characters: ASCII letters, digits, '-', '_' or '.', "
    "optionally followed by one '!' (process-specific) and a local part of word "
    "characters, '-' or '.'"
)
V1_CHANNEL_RULE = CHANNEL_RULE.replace("one '!' (process-specific)", "one '?' (single-reader) or '!' (process-specific)")
GROUP_RULE = "a str shorter than 100 characters of ASCII letters, digits, '-', '_' or '.'"


def _describe(name):
    text = repr(name)
    return text if len(text) <= 120 else text[:117] + "..."


def require_channel(name, receive=False, v1=False):
    """Raise TypeError (stating the rule) unless ``name`` is a valid channel name.

    With ``receive=True`` a process-specific name must end at the ``!``
    (ASGI 1 receives a whole ``prefix!``); Channels 4 receives full names and
    passes ``receive=False``.
    """
    if not isinstance(name, str) or len(name) >= MAX_NAME_LENGTH:
        raise TypeError(f"Invalid channel name {_describe(name)}: a channel name must be {V1_CHANNEL_RULE if v1 else CHANNEL_RULE}.")
    if not (_V1_CHANNEL if v1 else _V4_CHANNEL).match(name):
        raise TypeError(f"Invalid channel name {_describe(name)}: a channel name must be {V1_CHANNEL_RULE if v1 else CHANNEL_RULE}.")
    if v1 and name.endswith("?"):
        raise TypeError(f"Invalid channel name {_describe(name)}: single-reader channel names must not end with '?'.")
    if receive and "!" in name and not name.endswith("!"):
        raise TypeError(f"Invalid channel name {_describe(name)}: process-specific names in receive() must end at the '!'.")
    return True


def require_group(name):
    if not isinstance(name, str) or len(name) >= MAX_NAME_LENGTH or not _GROUP.match(name):
        raise TypeError(f"Invalid group name {_describe(name)}: a group name must be {GROUP_RULE}.")
    return True


def require_prefix(prefix):
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise TypeError(
            f"Invalid layer prefix {_describe(prefix)}: a prefix must be 1-64 ASCII letters, digits, "
            "'_', '-' or '.', not starting with '-' or '.'"
        )
    return prefix


def ring_key(channel):
    """The ring carrying ``channel``: its non-local part if process-specific."""
    bang = channel.find("!")
    return channel if bang < 0 else channel[: bang + 1]


def owner_of(key):
    """(slot, gen & GEN_MASK) of the process owning a minted ring key, else None."""
    m = _MINTED.search(key)
    return (int(m.group(1), 16), int(m.group(2), 16)) if m else None


def member_owner(channel):
    """(slot, gen & GEN_MASK) of the process whose death ends ``channel``'s
    group memberships: the owner of a minted ``prefix!``, or the minter of a
    single-reader channel from ``new_single_reader``; else None (a named
    channel outlives whoever added it)."""
    bang = channel.find("!")
    if bang >= 0:
        return owner_of(channel[: bang + 1])
    m = _MINTED_SINGLE.search(channel)
    return (int(m.group(1), 16), int(m.group(2), 16)) if m else None


def new_single_reader(pattern, slot, gen):
    """``pattern`` (ending in ``?``) + a local part naming the minting
    process, whose death then ends the channel's group memberships.  Without
    the tag when it would make the name too long."""
    name = f"{pattern}shm{owner_tag(slot, gen)}{new_local_part()}"
    return name if len(name) < MAX_NAME_LENGTH else pattern + new_local_part()


def owner_tag(slot, gen):
    return f"{slot:03x}{gen & GEN_MASK:07x}"


def new_client_prefix(slot, gen):
    """A per-instance prefix naming its owning process slot.

    The random part comes from os.urandom, so reseeding ``random`` cannot
    make two instances share a prefix.
    """
    return f"shm{owner_tag(slot, gen)}{secrets.token_hex(5)}"


def new_local_part():
    """A local part no other channel of this process has had: 96 random bits
    drawn once per process (URL-safe base64, 16 characters the local-part rule
    allows) and a counter in hex.  A fresh 128-bit token per name cost a
    getrandom() syscall and 0.73 us; this is 0.12 us, paid for every HTTP
    request's reply channel (docs/decisions.md, "Hello world per request")."""
    return f"{_local_base}{next(_local_count):x}"


def _reseed_local_parts():
    global _local_base, _local_count
    _local_base = secrets.token_urlsafe(12)
    _local_count = itertools.count()


_reseed_local_parts()
# A forked child must not repeat its parent's names (the two may share a
# prefix, as a pre-fork process's layer does).
os.register_at_fork(after_in_child=_reseed_local_parts)
