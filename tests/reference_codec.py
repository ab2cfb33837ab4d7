"""A small pure-Python RFC 6455 frame codec: the reference the compiled core is tested against.

Written from the text of RFC 6455 §5 and §7.4 and RFC 3629 §4, for clarity and not for
speed; it shares no code with ``fastrpc._core`` or any WebSocket library, so the two can
disagree. It follows the contract of ``fastrpc/_core.pyi``:

* ``ref_encode`` builds one frame (RFC 6455 §5.2), optionally masked (§5.3).
* ``RefParser.feed`` takes bytes split anywhere and returns ``(opcode, payload)`` events:
  ``OP_TEXT`` / ``OP_BINARY`` for whole messages (text as validated UTF-8 bytes),
  ``OP_PING`` / ``OP_PONG`` for control payloads, ``OP_CLOSE`` for the raw, validated
  close payload. A violation raises ``ProtocolError(code, reason)`` with the close code
  to send and the events completed earlier in the same call in ``.events``; the parser
  is dead after it: every later ``feed`` raises the same error.

When each rule is checked (the contract, made precise):

* Header rules are checked once the whole header has arrived (2 bytes, the extended
  length, the masking key), in this order, the first failing rule deciding the code:
  RSV bits, opcode, masking, length encoding, control-frame rules, continuation rules
  (all 1002), then the message size and the fragment count (1009). The size is decided
  from the length field alone, before any payload byte is read.
* UTF-8 in a text message is checked as payload bytes arrive: the ``feed`` that brings
  the first byte that cannot be part of any valid sequence raises 1007, even if the
  message never completes; a message ending inside a character fails at its last frame.
* A close payload is checked when the close frame is complete (it is at most 125 bytes).
* After a close frame, any further byte is an error (1002).
"""
from __future__ import annotations

from fastrpc.errors import ProtocolError

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

DATA_OPCODES = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})
CONTROL_OPCODES = frozenset({OP_CLOSE, OP_PING, OP_PONG})

CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_MESSAGE_TOO_BIG = 1009


# --- RFC 6455 §7.4: close codes a peer may put on the wire ------------------------------

def is_valid_close_code(code: int) -> bool:
    """1000-1003 and 1007-1014 (RFC 6455 §7.4.1 and the IANA registry), 3000-4999
    (§7.4.2: libraries, frameworks, applications). 1004 is reserved, 1005, 1006 and 1015
    must never be sent, everything else below 3000 is unassigned or unused."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


# --- RFC 6455 §5.3: masking ---------------------------------------------------------------

def ref_mask(data: bytes, key: bytes) -> bytes:
    """``transformed-octet-i = original-octet-i XOR masking-key-octet-(i MOD 4)``.

    ``offset`` handling is left to the caller: unmask a later part of a payload by
    rotating the key. Done on one big integer so a MiB costs milliseconds."""
    data = bytes(data)
    key = bytes(key)
    assert len(key) == 4
    n = len(data)
    if n == 0:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(n, "big")


def _rotate(key: bytes, offset: int) -> bytes:
    """The key as seen from payload byte ``offset`` of a frame."""
    k = offset % 4
    return key[k:] + key[:k]


# --- RFC 3629 §4: UTF-8, incrementally ---------------------------------------------------
#
#   UTF8-2 = %xC2-DF UTF8-tail
#   UTF8-3 = %xE0 %xA0-BF UTF8-tail / %xE1-EC 2( UTF8-tail ) /
#            %xED %x80-9F UTF8-tail / %xEE-EF 2( UTF8-tail )
#   UTF8-4 = %xF0 %x90-BF 2( UTF8-tail ) / %xF1-F3 3( UTF8-tail ) /
#            %xF4 %x80-8F 2( UTF8-tail )
#   UTF8-tail = %x80-BF

_TAIL = (0x80, 0xBF)
_FOLLOW: dict[int, tuple[tuple[int, int], ...]] = {}
for _b in range(0xC2, 0xE0):
    _FOLLOW[_b] = (_TAIL,)
_FOLLOW[0xE0] = ((0xA0, 0xBF), _TAIL)
for _b in range(0xE1, 0xED):
    _FOLLOW[_b] = (_TAIL, _TAIL)
_FOLLOW[0xED] = ((0x80, 0x9F), _TAIL)  # no UTF-16 surrogates
for _b in (0xEE, 0xEF):
    _FOLLOW[_b] = (_TAIL, _TAIL)
_FOLLOW[0xF0] = ((0x90, 0xBF), _TAIL, _TAIL)  # no overlong 4-byte forms
for _b in range(0xF1, 0xF4):
    _FOLLOW[_b] = (_TAIL, _TAIL, _TAIL)
_FOLLOW[0xF4] = ((0x80, 0x8F), _TAIL, _TAIL)  # nothing above U+10FFFF
del _b


class Utf8Validator:
    """Feed bytes in pieces; ``ok`` turns False at the first byte that cannot continue
    any valid UTF-8 sequence and stays False. ``complete`` is True between characters."""

    def __init__(self) -> None:
        self.ok = True
        self._expect: tuple[tuple[int, int], ...] = ()  # ranges of the bytes still due

    @property
    def complete(self) -> bool:
        return self.ok and not self._expect

    def feed(self, data: bytes) -> bool:
        if not self.ok:
            return False
        if not self._expect and data.isascii():
            return True
        for byte in data:
            if self._expect:
                lo, hi = self._expect[0]
                if not lo <= byte <= hi:
                    self.ok = False
                    return False
                self._expect = self._expect[1:]
            elif byte >= 0x80:
                follow = _FOLLOW.get(byte)
                if follow is None:  # 80-C1 (tails, overlong leads) and F5-FF
                    self.ok = False
                    return False
                self._expect = follow
        return True


def ref_validate_utf8(data: bytes) -> bool:
    v = Utf8Validator()
    v.feed(bytes(data))
    return v.complete


# --- RFC 6455 §5.2: encoding ------------------------------------------------------------

def ref_encode(
    opcode: int,
    payload: bytes = b"",
    fin: bool = True,
    mask_key: bytes | None = None,
    rsv: int = 0,
) -> bytes:
    """One frame: FIN, RSV1-3, opcode; MASK and the payload length in the minimal
    number of bytes (7 bits, 126 + 16 bits, or 127 + 64 bits); the masking key; the
    payload, masked when ``mask_key`` is given."""
    payload = bytes(payload)
    assert 0 <= opcode <= 0xF and 0 <= rsv <= 7
    n = len(payload)
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if mask_key is not None else 0
    if n <= 125:
        header = bytes([first, mask_bit | n])
    elif n <= 0xFFFF:
        header = bytes([first, mask_bit | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([first, mask_bit | 127]) + n.to_bytes(8, "big")
    if mask_key is None:
        return header + payload
    mask_key = bytes(mask_key)
    assert len(mask_key) == 4
    return header + mask_key + ref_mask(payload, mask_key)


def ref_close_payload(code: int | None, reason: bytes = b"") -> bytes:
    """§5.5.1: empty, or a 2-byte big-endian code followed by a UTF-8 reason."""
    if code is None:
        return b""
    return code.to_bytes(2, "big") + bytes(reason)


# --- RFC 6455 §5.2-§5.5: incremental parsing -------------------------------------------

class _Frame:
    """The frame whose payload is being read."""

    __slots__ = ("fin", "opcode", "mask_key", "length", "payload")

    def __init__(self, fin: bool, opcode: int, mask_key: bytes | None, length: int) -> None:
        self.fin = fin
        self.opcode = opcode
        self.mask_key = mask_key
        self.length = length
        self.payload = bytearray()


def _fail(code: int, reason: str) -> ProtocolError:
    return ProtocolError(code, reason)


class RefParser:
    """The reference parser; same events and close codes as ``fastrpc._core.FrameParser``.

    ``client=False`` is the server role: every frame from the peer must be masked
    (§5.1); ``client=True``: no frame may be masked.
    """

    def __init__(self, client: bool = False, max_message_size: int = 1 << 20,
                 max_fragments: int = 1024) -> None:
        self.client = client
        self.max_message_size = max_message_size
        self.max_fragments = max_fragments
        self._header = bytearray()  # bytes of a header not yet complete
        self._frame: _Frame | None = None  # the frame whose payload is being read
        self._msg_opcode: int | None = None  # OP_TEXT / OP_BINARY of the open message
        self._msg = bytearray()  # payload of the open message so far
        self._fragments = 0  # data frames of the open message
        self._utf8: Utf8Validator | None = None  # for an open text message
        self._close_seen = False
        self._error: tuple[int, str] | None = None

    @property
    def closed(self) -> bool:
        return self._close_seen or self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[tuple[int, bytes]]:
        events: list[tuple[int, bytes]] = []
        if self._error is not None:
            err = ProtocolError(*self._error)
            err.events = events
            raise err
        try:
            self._parse(bytes(data), events)
        except ProtocolError as err:
            self._error = (err.code, err.reason)
            err.events = events
            raise
        return events

    # --- internals ----------------------------------------------------------------

    def _parse(self, data: bytes, events: list[tuple[int, bytes]]) -> None:
        pos = 0
        n = len(data)
        while True:
            if self._frame is None:
                if pos >= n:
                    return
                if self._close_seen:
                    raise _fail(CLOSE_PROTOCOL_ERROR, "data after close frame")
                # Gather the header: 2 bytes, then the extended length and masking key.
                while len(self._header) < 2 and pos < n:
                    self._header.append(data[pos])
                    pos += 1
                if len(self._header) < 2:
                    return
                need = self._header_size(self._header[0], self._header[1])
                take = min(need - len(self._header), n - pos)
                self._header += data[pos:pos + take]
                pos += take
                if len(self._header) < need:
                    return
                header = bytes(self._header)
                self._header.clear()
                self._frame = self._start_frame(header)
                if self._frame.length == 0:
                    self._finish_frame(events)
                continue
            frame = self._frame
            take = min(frame.length - len(frame.payload), n - pos)
            chunk = data[pos:pos + take]
            pos += take
            if frame.mask_key is not None:
                chunk = ref_mask(chunk, _rotate(frame.mask_key, len(frame.payload)))
            frame.payload += chunk
            if frame.opcode in DATA_OPCODES and self._utf8 is not None:
                if not self._utf8.feed(chunk):
                    raise _fail(CLOSE_INVALID_PAYLOAD, "invalid UTF-8")
            if len(frame.payload) == frame.length:
                self._finish_frame(events)
            else:
                return  # every byte consumed; the frame continues in the next feed

    @staticmethod
    def _header_size(b0: int, b1: int) -> int:
        size = 2
        if b1 & 0x7F == 126:
            size += 2
        elif b1 & 0x7F == 127:
            size += 8
        if b1 & 0x80:
            size += 4
        return size

    def _start_frame(self, h: bytes) -> _Frame:
        fin = bool(h[0] & 0x80)
        rsv = (h[0] >> 4) & 0x7
        opcode = h[0] & 0x0F
        masked = bool(h[1] & 0x80)
        len7 = h[1] & 0x7F
        # §5.2: RSV1-3 MUST be 0 unless an extension defines them (we negotiate none).
        if rsv:
            raise _fail(CLOSE_PROTOCOL_ERROR, "reserved bits set")
        # §5.2: 0x3-0x7 and 0xB-0xF are reserved; an unknown opcode fails the connection.
        if opcode not in DATA_OPCODES and opcode not in CONTROL_OPCODES:
            raise _fail(CLOSE_PROTOCOL_ERROR, "reserved opcode")
        # §5.1: a server closes on an unmasked frame; a client on a masked one.
        if self.client and masked:
            raise _fail(CLOSE_PROTOCOL_ERROR, "frame masked")
        if not self.client and not masked:
            raise _fail(CLOSE_PROTOCOL_ERROR, "frame not masked")
        # §5.2: the minimal number of bytes MUST be used; the 64-bit MSB MUST be 0.
        p = 2
        if len7 == 126:
            length = int.from_bytes(h[2:4], "big")
            p = 4
            if length < 126:
                raise _fail(CLOSE_PROTOCOL_ERROR, "length not minimally encoded")
        elif len7 == 127:
            length = int.from_bytes(h[2:10], "big")
            p = 10
            if length >> 63:
                raise _fail(CLOSE_PROTOCOL_ERROR, "length over 2^63")
            if length <= 0xFFFF:
                raise _fail(CLOSE_PROTOCOL_ERROR, "length not minimally encoded")
        else:
            length = len7
        mask_key = h[p:p + 4] if masked else None
        if opcode in CONTROL_OPCODES:
            # §5.5: control frames are never fragmented and carry at most 125 bytes.
            if not fin:
                raise _fail(CLOSE_PROTOCOL_ERROR, "fragmented control frame")
            if length > 125:
                raise _fail(CLOSE_PROTOCOL_ERROR, "control frame too long")
            return _Frame(fin, opcode, mask_key, length)
        # §5.4: a continuation needs an open message; a new message needs none open.
        if opcode == OP_CONTINUATION and self._msg_opcode is None:
            raise _fail(CLOSE_PROTOCOL_ERROR, "unexpected continuation frame")
        if opcode != OP_CONTINUATION and self._msg_opcode is not None:
            raise _fail(CLOSE_PROTOCOL_ERROR, "expected continuation frame")
        # Limits, from the length field before any payload byte (§10.4, §7.4.1: 1009).
        if len(self._msg) + length > self.max_message_size:
            raise _fail(CLOSE_MESSAGE_TOO_BIG, "message too big")
        if self._fragments + 1 > self.max_fragments:
            raise _fail(CLOSE_MESSAGE_TOO_BIG, "too many fragments")
        self._fragments += 1
        if opcode != OP_CONTINUATION:
            self._msg_opcode = opcode
            self._utf8 = Utf8Validator() if opcode == OP_TEXT else None
        return _Frame(fin, opcode, mask_key, length)

    def _finish_frame(self, events: list[tuple[int, bytes]]) -> None:
        frame = self._frame
        assert frame is not None
        self._frame = None
        payload = bytes(frame.payload)
        if frame.opcode in CONTROL_OPCODES:
            if frame.opcode == OP_CLOSE:
                self._check_close(payload)
                self._close_seen = True
            events.append((frame.opcode, payload))
            return
        self._msg += payload
        if not frame.fin:
            return
        # §5.6: a text message must be valid UTF-8 as a whole, so not end mid-character.
        if self._utf8 is not None and not self._utf8.complete:
            raise _fail(CLOSE_INVALID_PAYLOAD, "invalid UTF-8")
        assert self._msg_opcode is not None
        events.append((self._msg_opcode, bytes(self._msg)))
        self._msg_opcode = None
        self._msg.clear()
        self._fragments = 0
        self._utf8 = None

    @staticmethod
    def _check_close(payload: bytes) -> None:
        """§5.5.1: empty, or a 2-byte code (§7.4) and a UTF-8 reason (§5.5.1, §8.1)."""
        if len(payload) == 1:
            raise _fail(CLOSE_PROTOCOL_ERROR, "close payload of 1 byte")
        if len(payload) >= 2:
            if not is_valid_close_code(int.from_bytes(payload[:2], "big")):
                raise _fail(CLOSE_PROTOCOL_ERROR, "invalid close code")
            if not ref_validate_utf8(payload[2:]):
                raise _fail(CLOSE_INVALID_PAYLOAD, "invalid UTF-8")


def ref_parse_close(payload: bytes) -> tuple[int, str]:
    """Split a validated close payload; ``(1005, "")`` for an empty one (§7.1.5)."""
    if not payload:
        return 1005, ""
    return int.from_bytes(payload[:2], "big"), bytes(payload[2:]).decode("utf-8")
