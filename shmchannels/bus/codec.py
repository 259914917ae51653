"""Message encoding for the rings.

msgpack, with bin and str kept distinct (``use_bin_type``/``raw=False``), is
the one wire format: ASGI messages carry both ``bytes`` and ``str``, and they
must come back as the types they went in as.  orjson was measured as the
alternative (docs/decisions.md): it is 0.1-0.4 us faster on text-only
messages but cannot encode ``bytes`` at all and turns NaN into ``null``
silently, so it would need a shape check on every send and still lose data.
No pickle: any process that can write the segment could otherwise run code
in every reader.
"""

import msgpack

#: Record flag naming the codec, so a future format can coexist on one bus.
MSGPACK = 1

# Packer.pack is one C call that never releases the GIL and we pass no
# ``default`` hook, so a module-level packer is safe to share between threads.
_packer = msgpack.Packer(use_bin_type=True)
_pack = _packer.pack


def encode(message):
    """Serialize a message dict; raises TypeError for values ASGI does not allow."""
    try:
        return _pack(message)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"message cannot be serialized: {exc}") from None


def decode(data):
    return msgpack.unpackb(data, raw=False)
