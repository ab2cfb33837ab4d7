"""The client half of RFC 6455 that the benchmark clients (``loadgen.py``,
``memory_client.py``) share: a handshake key with the accept value it must get back,
and masked client frames. Plain Python: these clients measure servers, not themselves.
"""
from __future__ import annotations

import base64
import hashlib
import os

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def handshake_key() -> tuple[bytes, bytes]:
    """A fresh ``Sec-WebSocket-Key`` and the ``Sec-WebSocket-Accept`` it calls for."""
    key = base64.b64encode(os.urandom(16))
    return key, base64.b64encode(hashlib.sha1(key + GUID).digest())


def mask(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def client_frame(opcode: int, payload: bytes, key: bytes | None = None) -> bytes:
    """One masked, final frame (the client role of RFC 6455 §5.3); a fresh mask key
    unless ``key`` is given."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if key is None:
        key = os.urandom(4)
    return head + key + mask(payload, key)
