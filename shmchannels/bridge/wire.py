"""What crosses Redis: one list element per message.

    <deadline: 13 ASCII digits, ms since the epoch> <envelope>
    envelope = msgpack [kind, target, body], Fernet-encrypted when
               symmetric_encryption_keys are set
    kind     = "c" (target is a channel), "g" (target is a group),
               "a" / "d" (group_add / group_discard of a channel of the receiving host)
    body     = the message as the bus encodes it (msgpack, bytes and str distinct),
               or for "a" / "d" the member channel's name

The deadline stays readable so the scripts can drop expired messages at
the head of a full list without the keys; hosts' clocks are assumed to be
synchronised (NTP), as channels_redis assumes.  Channel and group names
are inside the envelope, so encryption covers them too.
"""

import base64
import hashlib
import time

import msgpack

CHANNEL = "c"
GROUP = "g"
GROUP_ADD = "a"  # target is a group, body the member channel (UTF-8): a membership on the receiving host
GROUP_DISCARD = "d"
KINDS = (CHANNEL, GROUP, GROUP_ADD, GROUP_DISCARD)
DEADLINE_DIGITS = 13


class Sealer:
    """Encrypts envelopes with the first key and decrypts with any of them
    (``cryptography``'s MultiFernet, imported only when keys are set).  Each
    key is any string; its SHA-256 is the Fernet key, as in channels_redis,
    so both accept the same settings."""

    def __init__(self, keys):
        self._fernet = None
        if keys:
            from cryptography.fernet import Fernet, MultiFernet

            self._fernet = MultiFernet([Fernet(self.fernet_key(k)) for k in keys])

    @staticmethod
    def fernet_key(key):
        raw = key.encode("utf-8") if isinstance(key, str) else key
        return base64.urlsafe_b64encode(hashlib.sha256(raw).digest())

    @property
    def encrypting(self):
        return self._fernet is not None

    def seal(self, data):
        return data if self._fernet is None else self._fernet.encrypt(data)

    def open(self, data):
        """The envelope, or raises ValueError (wrong key, tampered, not ours)."""
        if self._fernet is None:
            return data
        from cryptography.fernet import InvalidToken

        try:
            return self._fernet.decrypt(data)
        except InvalidToken:
            raise ValueError("an envelope from Redis does not decrypt with symmetric_encryption_keys") from None


def deadline_ms(expiry):
    return int((time.time() + expiry) * 1000)


def pack(sealer, kind, target, body, deadline):
    """A list element for Redis."""
    envelope = msgpack.packb([kind, target, body], use_bin_type=True)
    return b"%013d" % deadline + sealer.seal(envelope)


def unpack(sealer, element, now_ms=None):
    """(kind, target, body), or None when the message has expired.  Raises
    ValueError for an element that is not a bridge message."""
    if len(element) <= DEADLINE_DIGITS or not element[:DEADLINE_DIGITS].isdigit():
        raise ValueError("not a bridge message")
    if int(element[:DEADLINE_DIGITS]) < (time.time() * 1000 if now_ms is None else now_ms):
        return None
    try:
        kind, target, body = msgpack.unpackb(sealer.open(element[DEADLINE_DIGITS:]), raw=False)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ValueError(f"not a bridge message: {exc}") from None
    if kind not in KINDS or not isinstance(target, str) or not isinstance(body, bytes):
        raise ValueError("not a bridge message")
    return kind, target, body
