"""The RFC 6455 frame codec of ``fastrpc._core``, one test class per section of the RFC.

Every frame is fed whole, split in two at every byte boundary (at the header and both
ends of the payload for long frames), byte by byte (short frames), and as ``bytes``,
``bytearray`` and an unaligned ``memoryview`` slice: the ``codec`` fixture does it. Each
expectation is also checked on the pure-Python reference codec (``tests/reference_codec.py``)
so the differential tests compare the core with a reference that is itself pinned down.
"""
from __future__ import annotations

import functools
import struct

import pytest

from fastrpc import _core
from fastrpc._core import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    BufferPool,
    FrameParser,
    apply_mask,
    encode_close,
    encode_frame,
    encode_ping,
    encode_pong,
    is_valid_close_code,
    parse_close,
    validate_utf8,
)
from fastrpc.errors import ProtocolError
from reference_codec import RefParser, ref_close_payload, ref_encode, ref_mask, ref_validate_utf8
from reference_codec import is_valid_close_code as ref_valid_close_code

KEY = bytes([0x37, 0xFA, 0x21, 0x3D])  # the masking key of the RFC 6455 §5.7 examples
MiB = 1 << 20
LENGTHS = (0, 1, 125, 126, 127, 65535, 65536)


# --- helpers ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes covering every byte value, deterministic."""
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          client: bool = False, key: bytes = KEY) -> bytes:
    """A frame as the peer of a parser in the given role sends it: masked towards a
    server (``client=False``), unmasked towards a client."""
    return ref_encode(opcode, payload, fin=fin, mask_key=None if client else key, rsv=rsv)


def raw_frame(first: int, length: int, payload: bytes = b"", *, form: int,
              key: bytes | None = KEY) -> bytes:
    """A frame with a hand-chosen length encoding: ``form`` 7, 16 or 64 bits, even when
    not minimal. ``length`` is what the header claims; ``payload`` what follows."""
    mask_bit = 0x80 if key is not None else 0
    if form == 7:
        head = bytes([first, mask_bit | length])
    elif form == 16:
        head = bytes([first, mask_bit | 126]) + struct.pack("!H", length)
    else:
        head = bytes([first, mask_bit | 127]) + struct.pack("!Q", length)
    if key is None:
        return head + payload
    return head + key + ref_mask(payload, key)


def close_frame(code: int | None, reason: bytes = b"", *, client: bool = False) -> bytes:
    return frame(OP_CLOSE, ref_close_payload(code, reason), client=client)


def split_key(data: bytes) -> tuple[int, bytes, bytes]:
    """(header length, masking key, masked payload) of one masked frame."""
    assert data[1] & 0x80, "mask bit not set"
    p = 2 + {126: 2, 127: 8}.get(data[1] & 0x7F, 0)
    return p + 4, data[p:p + 4], data[p + 4:]


def xor_mask(data: bytes, key: bytes) -> bytes:
    """The plainest possible XOR (RFC 6455 §5.3), byte by byte."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(bytes(data)))


BUFFER_KINDS = ("bytes", "bytearray", "memoryview")


def as_kind(chunk: bytes, kind: str):
    if kind == "bytes":
        return bytes(chunk)
    if kind == "bytearray":
        return bytearray(chunk)
    # A slice of a larger buffer starting at an odd address: no alignment assumed.
    return memoryview(b"\xaa" + bytes(chunk) + b"\xbb")[1:-1]


def split_points(n: int) -> list[int]:
    if n <= 300:
        return list(range(1, n))
    points = set(range(1, 24)) | set(range(n - 24, n)) | {n // 3, n // 2, n // 2 + 1}
    return sorted(p for p in points if 0 < p < n)


def chunkings(data: bytes):
    yield "whole", [data]
    for i in split_points(len(data)):
        yield f"split@{i}", [data[:i], data[i:]]
    if 1 < len(data) <= 300:
        yield "bytewise", [data[i:i + 1] for i in range(len(data))]


def make_pool(max_message_size: int) -> BufferPool:
    if max_message_size <= MiB:
        return BufferPool()
    return BufferPool((1024, 65536, MiB, 4 * MiB), limit=64 * MiB)


def run(chunks, *, kind: str = "bytes", client: bool = False, ref: bool = False, **limits):
    """Feed ``chunks``; returns (events, error or None, parser, pool). Stops at an error;
    the events completed before it in the failing call are taken from ``.events``."""
    if ref:
        pool = None
        parser = RefParser(client=client, **limits)
    else:
        pool = make_pool(limits.get("max_message_size", MiB))
        parser = FrameParser(pool, client=client, **limits)
    events: list = []
    for chunk in chunks:
        try:
            events += parser.feed(as_kind(chunk, kind))
        except ProtocolError as err:
            events += err.events
            return events, err, parser, pool
    return events, None, parser, pool


class Codec:
    """Feeds one input in every chunking as one buffer kind, to the core and the reference."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def parses(self, data: bytes, expected, *, client: bool = False, between_messages: bool = True,
               **limits) -> None:
        """``between_messages=False``: the input ends inside a data message, so blocks
        may still be held until ``close()``."""
        expected = list(expected)
        for name, chunks in chunkings(data):
            events, err, parser, pool = run(chunks, kind=self.kind, client=client, **limits)
            assert err is None, f"{name}: unexpected {err!r}"
            assert events == expected, name
            for op, payload in events:
                assert type(payload) is bytes, name
            assert parser.closed is any(op == OP_CLOSE for op, _ in events), name
            if between_messages:
                assert parser.buffered == 0, name
                assert pool.bytes_in_use == 0, name
            parser.close()
            assert parser.buffered == 0, name
            assert pool.bytes_in_use == 0, name
            if name in ("whole", "bytewise"):
                ref_events, ref_err, _, _ = run(chunks, client=client, ref=True, **limits)
                assert ref_err is None and ref_events == expected, f"reference, {name}"

    def fails(self, data: bytes, code: int, events=(), *, client: bool = False, **limits) -> None:
        expected = list(events)
        for name, chunks in chunkings(data):
            got, err, parser, pool = run(chunks, kind=self.kind, client=client, **limits)
            assert err is not None, f"{name}: no error, events {got!r}"
            assert err.code == code, f"{name}: {err!r}"
            # Short fixed text, safe to put in a close frame (at most 123 bytes of UTF-8).
            assert isinstance(err.reason, str) and 0 < len(err.reason.encode()) <= 123, name
            assert got == expected, name
            assert parser.closed, name
            # Dead after an error: every later feed raises the same error.
            again_input = frame(OP_PING, b"", client=client)
            with pytest.raises(ProtocolError) as again:
                parser.feed(as_kind(again_input, self.kind))
            assert (again.value.code, again.value.reason) == (err.code, err.reason), name
            parser.close()
            assert pool.bytes_in_use == 0, name
            if name in ("whole", "bytewise"):
                ref_got, ref_err, _, _ = run(chunks, client=client, ref=True, **limits)
                assert ref_err is not None and ref_err.code == code, f"reference, {name}"
                assert ref_got == expected, f"reference, {name}"


@pytest.fixture(params=BUFFER_KINDS)
def codec(request) -> Codec:
    return Codec(request.param)


ROLES = pytest.mark.parametrize("client", [False, True], ids=["server", "client"])


# --- §5.2 Base framing ------------------------------------------------------------------

class TestSection5_2BaseFraming:
    @ROLES
    @pytest.mark.parametrize("n", LENGTHS)
    def test_binary_payload_lengths(self, codec, client, n):
        payload = pattern(n)
        codec.parses(frame(OP_BINARY, payload, client=client), [(OP_BINARY, payload)], client=client)

    @ROLES
    @pytest.mark.parametrize("n", LENGTHS)
    def test_text_payload_lengths(self, codec, client, n):
        payload = (b"abcdefghij" * (n // 10 + 1))[:n]
        codec.parses(frame(OP_TEXT, payload, client=client), [(OP_TEXT, payload)], client=client)

    @pytest.mark.parametrize("n", [200_000, 2 * MiB + 1])
    def test_large_payloads_with_a_larger_max_message_size(self, codec, n):
        payload = pattern(n, seed=3)
        codec.parses(frame(OP_BINARY, payload), [(OP_BINARY, payload)], max_message_size=4 * MiB)

    def test_payload_exactly_max_message_size(self, codec):
        payload = pattern(200_000)
        codec.parses(frame(OP_BINARY, payload), [(OP_BINARY, payload)], max_message_size=200_000)

    @pytest.mark.parametrize("length", [126, 127, 65535])
    def test_16_bit_length_at_and_above_126_is_accepted(self, codec, length):
        payload = pattern(length)
        data = raw_frame(0x82, length, payload, form=16)
        assert data == frame(OP_BINARY, payload)
        codec.parses(data, [(OP_BINARY, payload)])

    def test_64_bit_length_of_65536_is_accepted(self, codec):
        payload = pattern(65536)
        data = raw_frame(0x82, 65536, payload, form=64)
        assert data == frame(OP_BINARY, payload)
        codec.parses(data, [(OP_BINARY, payload)])

    @ROLES
    def test_several_frames_in_one_buffer_come_out_in_order(self, codec, client):
        data = (frame(OP_TEXT, b"one", client=client) + frame(OP_PING, b"p", client=client)
                + frame(OP_BINARY, b"\x00\xff", client=client) + frame(OP_PONG, b"", client=client)
                + frame(OP_TEXT, b"", client=client))
        codec.parses(data, [(OP_TEXT, b"one"), (OP_PING, b"p"), (OP_BINARY, b"\x00\xff"),
                            (OP_PONG, b""), (OP_TEXT, b"")], client=client)

    @ROLES
    @pytest.mark.parametrize("rsv", range(1, 8))
    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE])
    def test_rsv_bits_set_is_a_protocol_error(self, codec, client, rsv, opcode):
        payload = b"\x03\xe8" if opcode == OP_CLOSE else b"x"
        codec.fails(frame(opcode, payload, rsv=rsv, client=client), 1002, client=client)

    def test_rsv_bits_on_a_continuation_frame(self, codec):
        data = frame(OP_TEXT, b"a", fin=False) + frame(OP_CONTINUATION, b"b", rsv=4)
        codec.fails(data, 1002)

    @ROLES
    @pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
    def test_reserved_opcodes_are_a_protocol_error(self, codec, client, opcode):
        codec.fails(frame(opcode, b"", client=client), 1002, client=client)
        codec.fails(frame(OP_PING, b"ok", client=client) + frame(opcode, b"xyz", client=client),
                    1002, [(OP_PING, b"ok")], client=client)

    @ROLES
    @pytest.mark.parametrize("length", [0, 1, 125])
    def test_non_minimal_16_bit_length(self, codec, client, length):
        key = None if client else KEY
        codec.fails(raw_frame(0x82, length, pattern(length), form=16, key=key), 1002, client=client)

    @ROLES
    @pytest.mark.parametrize("length", [0, 1, 125, 126, 65535])
    def test_non_minimal_64_bit_length(self, codec, client, length):
        key = None if client else KEY
        codec.fails(raw_frame(0x82, length, pattern(length), form=64, key=key), 1002, client=client)

    @ROLES
    @pytest.mark.parametrize("length", [1 << 63, (1 << 63) + 5, (1 << 64) - 1])
    def test_64_bit_length_with_the_most_significant_bit_set(self, codec, client, length):
        key = None if client else KEY
        # Only the header: it fails as soon as the header is complete.
        codec.fails(raw_frame(0x82, length, form=64, key=key), 1002, client=client)

    def test_errors_stop_parsing_but_keep_earlier_events(self, codec):
        data = frame(OP_TEXT, b"first") + frame(OP_BINARY, b"x", rsv=2) + frame(OP_TEXT, b"never")
        codec.fails(data, 1002, [(OP_TEXT, b"first")])


# --- §5.3 Client-to-server masking ------------------------------------------------------

class TestSection5_3ClientToServerMasking:
    """§5.1: a server MUST close the connection on an unmasked frame, a client on a
    masked one. Autobahn never sends an unmasked frame to a server: we must test it."""

    @pytest.mark.parametrize("opcode,payload", [
        (OP_TEXT, b"hello"), (OP_BINARY, b""), (OP_PING, b"p"), (OP_PONG, b""),
        (OP_CLOSE, b"\x03\xe8"), (OP_BINARY, pattern(126)), (OP_BINARY, pattern(65536)),
    ])
    def test_server_role_rejects_unmasked_frames(self, codec, opcode, payload):
        codec.fails(ref_encode(opcode, payload), 1002, client=False)

    def test_server_role_rejects_an_unmasked_continuation(self, codec):
        data = frame(OP_TEXT, b"a", fin=False) + ref_encode(OP_CONTINUATION, b"b")
        codec.fails(data, 1002)

    def test_server_role_rejects_unmasked_frame_after_masked_ones(self, codec):
        data = frame(OP_TEXT, b"ok") + frame(OP_PING, b"") + ref_encode(OP_TEXT, b"bad")
        codec.fails(data, 1002, [(OP_TEXT, b"ok"), (OP_PING, b"")])

    def test_server_role_rejects_unmasked_header_before_payload(self):
        # The header alone decides: no payload byte needs to arrive.
        events, err, parser, pool = run([ref_encode(OP_BINARY, pattern(1000))[:4]])
        assert err is not None and err.code == 1002 and events == []
        parser.close()
        assert pool.bytes_in_use == 0

    @pytest.mark.parametrize("opcode,payload", [
        (OP_TEXT, b"hello"), (OP_BINARY, b""), (OP_PING, b"p"), (OP_PONG, b""),
        (OP_CLOSE, b"\x03\xe8"), (OP_BINARY, pattern(70000)),
    ])
    def test_client_role_rejects_masked_frames(self, codec, opcode, payload):
        codec.fails(ref_encode(opcode, payload, mask_key=KEY), 1002, client=True)

    @pytest.mark.parametrize("key", [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", KEY, b"\x01\x02\x03\x04"])
    def test_masked_payload_is_unmasked(self, codec, key):
        payload = pattern(300, seed=9)
        codec.parses(frame(OP_BINARY, payload, key=key), [(OP_BINARY, payload)])

    def test_each_fragment_has_its_own_key(self, codec):
        data = (frame(OP_BINARY, b"abcde", fin=False, key=b"\x01\x02\x03\x04")
                + frame(OP_PING, b"xyz", key=b"\x10\x20\x30\x40")
                + frame(OP_CONTINUATION, b"fghij", key=b"\xaa\xbb\xcc\xdd"))
        codec.parses(data, [(OP_PING, b"xyz"), (OP_BINARY, b"abcdefghij")])

    def test_encode_frame_mask_sets_the_bit_and_masks_with_the_key(self):
        for n in LENGTHS:
            payload = pattern(n)
            data = encode_frame(OP_BINARY, payload, mask=True)
            header_len, key, masked = split_key(data)
            assert data == ref_encode(OP_BINARY, payload, mask_key=key)
            assert ref_mask(masked, key) == payload

    def test_encode_frame_mask_draws_a_new_key_each_time(self):
        # More than one 4 KiB batch of keys: the refill must keep them fresh.
        keys = [split_key(encode_frame(OP_TEXT, b"x", mask=True))[1] for _ in range(3000)]
        assert len(set(keys)) >= len(keys) - 2  # 2**32 keys: a birthday collision is rare
        assert keys[0] != keys[1]
        assert b"\x00\x00\x00\x00" not in keys[:10]

    def test_masked_frames_from_the_encoder_parse_in_the_server_role(self, codec):
        data = (encode_frame(OP_TEXT, "grüße".encode(), mask=True)
                + encode_ping(b"hi", mask=True) + encode_pong(b"", mask=True)
                + encode_frame(OP_BINARY, pattern(70000), mask=True)
                + encode_close(1001, "bye", mask=True))
        codec.parses(data, [(OP_TEXT, "grüße".encode()), (OP_PING, b"hi"), (OP_PONG, b""),
                            (OP_BINARY, pattern(70000)), (OP_CLOSE, b"\x03\xe9bye")])

    @pytest.mark.parametrize("n", list(range(71)))
    def test_apply_mask_short_lengths(self, n):
        data = pattern(n, seed=n)
        for kind in BUFFER_KINDS:
            assert apply_mask(as_kind(data, kind), as_kind(KEY, kind)) == xor_mask(data, KEY)

    def test_apply_mask_one_mebibyte(self):
        data = pattern(MiB, seed=5)
        key = b"\x9a\x01\xfe\x33"
        expected = xor_mask(data, key)
        for kind in BUFFER_KINDS:
            out = apply_mask(as_kind(data, kind), key)
            assert type(out) is bytes
            assert out == expected
        assert apply_mask(expected, key) == data

    @pytest.mark.parametrize("start", range(8))
    def test_apply_mask_unaligned_memoryview_slices(self, start):
        base = bytearray(pattern(4096 + 16, seed=1))
        key_base = bytearray(b"..\x5a\xc3\x01\x80..")
        key = memoryview(key_base)[2:6]
        for n in list(range(0, 70)) + [255, 256, 257, 4095]:
            view = memoryview(base)[start:start + n]
            assert apply_mask(view, key) == xor_mask(bytes(view), bytes(key)), (start, n)
        assert bytes(base) == pattern(4096 + 16, seed=1), "apply_mask must not write its input"

    def test_apply_mask_needs_a_4_byte_key(self):
        for bad in (b"", b"abc", b"abcde"):
            with pytest.raises(ValueError):
                apply_mask(b"data", bad)


# --- §5.4 Fragmentation -----------------------------------------------------------------

class TestSection5_4Fragmentation:
    @ROLES
    @pytest.mark.parametrize("opcode", [OP_TEXT, OP_BINARY])
    def test_message_in_fragments(self, codec, client, opcode):
        parts = [b"Hel", b"", b"lo, ", b"world"]
        data = frame(opcode, parts[0], fin=False, client=client)
        for i, part in enumerate(parts[1:], 1):
            data += frame(OP_CONTINUATION, part, fin=i == len(parts) - 1, client=client)
        codec.parses(data, [(opcode, b"Hello, world")], client=client)

    def test_all_fragments_empty(self, codec):
        data = frame(OP_TEXT, b"", fin=False) + frame(OP_CONTINUATION, b"", fin=False) + frame(OP_CONTINUATION, b"")
        codec.parses(data, [(OP_TEXT, b"")])

    def test_large_fragments(self, codec):
        a, b, c = pattern(65536), pattern(126, seed=1), pattern(70000, seed=2)
        data = (frame(OP_BINARY, a, fin=False) + frame(OP_CONTINUATION, b, fin=False)
                + frame(OP_CONTINUATION, c))
        codec.parses(data, [(OP_BINARY, a + b + c)])

    @ROLES
    @pytest.mark.parametrize("control", [OP_PING, OP_PONG])
    def test_control_frame_interleaved_in_a_fragmented_message(self, codec, client, control):
        data = (frame(OP_TEXT, b"frag", fin=False, client=client)
                + frame(control, b"inner", client=client)
                + frame(OP_CONTINUATION, b"men", fin=False, client=client)
                + frame(control, b"", client=client)
                + frame(OP_CONTINUATION, b"ted", client=client)
                + frame(OP_TEXT, b"next", client=client))
        codec.parses(data, [(control, b"inner"), (control, b""), (OP_TEXT, b"fragmented"),
                            (OP_TEXT, b"next")], client=client)

    def test_close_interleaved_in_a_fragmented_message_ends_the_stream(self, codec):
        data = frame(OP_BINARY, b"ab", fin=False) + close_frame(1000)
        codec.parses(data, [(OP_CLOSE, b"\x03\xe8")], between_messages=False)
        codec.fails(data + frame(OP_CONTINUATION, b"cd"), 1002, [(OP_CLOSE, b"\x03\xe8")])

    @ROLES
    @pytest.mark.parametrize("fin", [True, False])
    def test_continuation_without_a_started_message(self, codec, client, fin):
        codec.fails(frame(OP_CONTINUATION, b"x", fin=fin, client=client), 1002, client=client)

    def test_continuation_after_a_complete_message(self, codec):
        data = frame(OP_TEXT, b"done") + frame(OP_CONTINUATION, b"more")
        codec.fails(data, 1002, [(OP_TEXT, b"done")])

    @ROLES
    @pytest.mark.parametrize("first", [OP_TEXT, OP_BINARY])
    @pytest.mark.parametrize("second", [OP_TEXT, OP_BINARY])
    @pytest.mark.parametrize("fin", [True, False])
    def test_new_data_frame_while_a_message_is_open(self, codec, client, first, second, fin):
        data = frame(first, b"a", fin=False, client=client) + frame(second, b"b", fin=fin, client=client)
        codec.fails(data, 1002, client=client)

    def test_new_data_frame_after_a_control_frame_in_an_open_message(self, codec):
        data = frame(OP_TEXT, b"a", fin=False) + frame(OP_PING, b"") + frame(OP_TEXT, b"b")
        codec.fails(data, 1002, [(OP_PING, b"")])

    def test_buffered_while_a_message_is_open_and_zero_after(self):
        pool = BufferPool()
        parser = FrameParser(pool)
        assert parser.buffered == 0
        assert parser.feed(frame(OP_BINARY, b"x" * 100, fin=False)) == []
        assert parser.buffered > 0
        assert pool.bytes_in_use == parser.buffered
        assert parser.feed(frame(OP_PING, b"p")) == [(OP_PING, b"p")]
        assert parser.buffered > 0
        assert parser.feed(frame(OP_CONTINUATION, b"y" * 5000)) == [(OP_BINARY, b"x" * 100 + b"y" * 5000)]
        assert parser.buffered == 0
        assert pool.bytes_in_use == 0
        parser.close()
        assert pool.bytes_in_use == 0

    def test_partial_frame_is_buffered_and_returned_when_complete(self):
        pool = BufferPool()
        parser = FrameParser(pool)
        data = frame(OP_BINARY, pattern(5000))
        assert parser.feed(data[:100]) == []
        assert parser.buffered > 0
        assert parser.feed(data[100:]) == [(OP_BINARY, pattern(5000))]
        assert parser.buffered == 0
        parser.close()
        assert pool.bytes_in_use == 0


# --- §5.5 Control frames ----------------------------------------------------------------

class TestSection5_5ControlFrames:
    @ROLES
    @pytest.mark.parametrize("opcode", [OP_PING, OP_PONG])
    @pytest.mark.parametrize("n", [0, 1, 125])
    def test_control_payload_up_to_125_bytes(self, codec, client, opcode, n):
        payload = pattern(n)  # not UTF-8: ping payloads are arbitrary bytes
        codec.parses(frame(opcode, payload, client=client), [(opcode, payload)], client=client)

    @ROLES
    @pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
    @pytest.mark.parametrize("n", [126, 127, 65535, 65536])
    def test_control_payload_over_125_bytes(self, codec, client, opcode, n):
        payload = b"\x03\xe8" + b"r" * (n - 2) if opcode == OP_CLOSE else pattern(n)
        codec.fails(frame(opcode, payload, client=client), 1002, client=client)

    @ROLES
    @pytest.mark.parametrize("opcode", [OP_PING, OP_PONG, OP_CLOSE])
    def test_fragmented_control_frame(self, codec, client, opcode):
        payload = b"\x03\xe8" if opcode == OP_CLOSE else b"x"
        codec.fails(frame(opcode, payload, fin=False, client=client), 1002, client=client)

    def test_fragmented_control_frame_inside_a_message(self, codec):
        data = frame(OP_TEXT, b"a", fin=False) + frame(OP_PING, b"x", fin=False)
        codec.fails(data, 1002)

    def test_control_frame_split_across_reads_mid_message(self, codec):
        data = (frame(OP_BINARY, pattern(3000), fin=False) + frame(OP_PING, pattern(125, 4))
                + frame(OP_CONTINUATION, b"end"))
        codec.parses(data, [(OP_PING, pattern(125, 4)), (OP_BINARY, pattern(3000) + b"end")])

    @pytest.mark.parametrize("n", [0, 1, 125])
    def test_encode_ping_and_pong_match_the_reference(self, n):
        payload = pattern(n)
        for kind in BUFFER_KINDS:
            assert encode_ping(as_kind(payload, kind)) == ref_encode(OP_PING, payload)
            assert encode_pong(as_kind(payload, kind)) == ref_encode(OP_PONG, payload)
        for encoder, opcode in ((encode_ping, OP_PING), (encode_pong, OP_PONG)):
            data = encoder(payload, mask=True)
            _, key, _ = split_key(data)
            assert data == ref_encode(opcode, payload, mask_key=key)

    @pytest.mark.parametrize("encoder", [encode_ping, encode_pong])
    def test_encode_control_payload_over_125_bytes_is_refused(self, encoder):
        with pytest.raises(ValueError):
            encoder(b"x" * 126)


# --- §5.5.1 Close -----------------------------------------------------------------------

class TestSection5_5_1Close:
    @ROLES
    @pytest.mark.parametrize("payload", [
        b"", b"\x03\xe8", b"\x03\xe8normal", b"\x0f\xa0" + "adiós ✓ 𝄞".encode(), b"\x03\xe9" + b"r" * 123,
    ])
    def test_valid_close_payloads(self, codec, client, payload):
        codec.parses(frame(OP_CLOSE, payload, client=client), [(OP_CLOSE, payload)], client=client)

    def test_closed_only_after_the_close_frame(self):
        pool = BufferPool()
        parser = FrameParser(pool)
        data = close_frame(1000, b"bye")
        assert parser.feed(data[:-1]) == []
        assert not parser.closed
        assert parser.feed(data[-1:]) == [(OP_CLOSE, b"\x03\xe8bye")]
        assert parser.closed
        assert parser.feed(b"") == []
        parser.close()
        assert pool.bytes_in_use == 0

    @ROLES
    def test_one_byte_close_payload(self, codec, client):
        codec.fails(frame(OP_CLOSE, b"\x03", client=client), 1002, client=client)

    @ROLES
    @pytest.mark.parametrize("reason", [b"\xff", b"ok\xc3", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"])
    def test_invalid_utf8_close_reason(self, codec, client, reason):
        codec.fails(close_frame(1000, reason, client=client), 1007, client=client)

    @ROLES
    @pytest.mark.parametrize("after", [
        lambda c: frame(OP_PING, b"", client=c), lambda c: frame(OP_TEXT, b"x", client=c),
        lambda c: close_frame(1000, client=c), lambda c: b"\x00",
    ], ids=["ping", "text", "close", "one-byte"])
    def test_data_after_a_close_frame(self, codec, client, after):
        data = close_frame(1001, client=client)
        codec.fails(data + after(client), 1002, [(OP_CLOSE, b"\x03\xe9")], client=client)

    def test_data_after_a_close_frame_in_a_later_feed(self):
        for kind in BUFFER_KINDS:
            pool = BufferPool()
            parser = FrameParser(pool)
            assert parser.feed(as_kind(close_frame(None), kind)) == [(OP_CLOSE, b"")]
            with pytest.raises(ProtocolError) as err:
                parser.feed(as_kind(frame(OP_PING, b""), kind))
            assert err.value.code == 1002
            assert err.value.events == []
            parser.close()
            assert pool.bytes_in_use == 0

    @pytest.mark.parametrize("payload,expected", [
        (b"", (1005, "")), (b"\x03\xe8", (1000, "")), (b"\x0f\xa0bye", (4000, "bye")),
        (b"\x0b\xb8" + "é€𝄞".encode(), (3000, "é€𝄞")),
    ])
    def test_parse_close(self, payload, expected):
        for kind in BUFFER_KINDS:
            assert parse_close(as_kind(payload, kind)) == expected

    @pytest.mark.parametrize("code,reason", [
        (1000, b""), (1001, b"going away"), (1011, "erreur interne ✗"), (4999, b"r" * 123), (3000, ""),
    ])
    def test_encode_close_matches_the_reference(self, code, reason):
        raw = reason.encode() if isinstance(reason, str) else reason
        data = encode_close(code, reason)
        assert data == ref_encode(OP_CLOSE, ref_close_payload(code, raw))
        masked = encode_close(code, reason, mask=True)
        _, key, _ = split_key(masked)
        assert masked == ref_encode(OP_CLOSE, ref_close_payload(code, raw), mask_key=key)
        assert parse_close(ref_close_payload(code, raw)) == (code, raw.decode())

    def test_encode_close_defaults_and_empty(self):
        assert encode_close() == b"\x88\x02\x03\xe8"
        assert encode_close(None) == b"\x88\x00"
        header_len, key, payload = split_key(encode_close(None, mask=True))
        assert (header_len, len(key), payload) == (6, 4, b"")

    def test_encode_close_refuses_a_reason_over_123_bytes(self):
        with pytest.raises(ValueError):
            encode_close(1000, b"r" * 124)

    def test_encode_close_refuses_a_reason_without_a_code(self):
        with pytest.raises(ValueError):
            encode_close(None, b"why")


# --- §5.6 Data frames: UTF-8 ------------------------------------------------------------

INVALID_UTF8 = [
    b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf", b"\xe0\x80\xaf", b"\xe0\x9f\xbf",
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x80\x80\xaf", b"\xf0\x8f\xbf\xbf", b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\xf0\x9d\x84", b"\xc3",
    b"abc\xc3\x28def", b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
]
VALID_TEXTS = ["", "a", "κόσμε", "€", "𝄞", "\u07ff", "\u0800", "\ud7ff", "\ue000", "\uffff",
               "\U00010000", "\U0010ffff", "mixed ascii and ü and ✓ and 🎉" * 10]
MULTIBYTE = ["é", "\u07ff", "€", "\uffff", "𝄞", "\U0010ffff"]


class TestSection5_6DataFramesUTF8:
    @ROLES
    @pytest.mark.parametrize("text", VALID_TEXTS)
    def test_valid_text(self, codec, client, text):
        payload = text.encode()
        codec.parses(frame(OP_TEXT, payload, client=client), [(OP_TEXT, payload)], client=client)

    @pytest.mark.parametrize("payload", INVALID_UTF8)
    def test_invalid_text_single_frame(self, codec, payload):
        codec.fails(frame(OP_TEXT, payload), 1007)

    @pytest.mark.parametrize("payload", INVALID_UTF8)
    def test_binary_is_never_validated(self, codec, payload):
        codec.parses(frame(OP_BINARY, payload), [(OP_BINARY, payload)])

    @pytest.mark.parametrize("char", MULTIBYTE)
    def test_character_split_across_two_fragments_at_every_position(self, codec, char):
        payload = ("a" + char + "z").encode()
        for cut in range(1, len(payload)):
            data = frame(OP_TEXT, payload[:cut], fin=False) + frame(OP_CONTINUATION, payload[cut:])
            codec.parses(data, [(OP_TEXT, payload)])

    @pytest.mark.parametrize("char", ["€", "𝄞"])
    def test_character_split_into_one_byte_fragments(self, codec, char):
        payload = char.encode()
        data = frame(OP_TEXT, payload[:1], fin=False)
        for i in range(1, len(payload)):
            data += frame(OP_PING, b"") if i == 1 else b""
            data += frame(OP_CONTINUATION, payload[i:i + 1], fin=i == len(payload) - 1)
        codec.parses(data, [(OP_PING, b""), (OP_TEXT, payload)])

    def test_every_three_way_split_of_multibyte_text(self):
        payload = "€𝄞é".encode()
        n = len(payload)
        for i in range(0, n + 1):
            for j in range(i, n + 1):
                data = (frame(OP_TEXT, payload[:i], fin=False) + frame(OP_CONTINUATION, payload[i:j], fin=False)
                        + frame(OP_CONTINUATION, payload[j:]))
                events, err, parser, pool = run([data])
                assert err is None and events == [(OP_TEXT, payload)], (i, j)
                parser.close()
                assert pool.bytes_in_use == 0

    @pytest.mark.parametrize("bad", [b"\xff", b"ok\x80", b"\xe0\x80", b"\xed\xa0", b"\xf0\x8f", b"\xf4\x90",
                                     b"\xc0", b"\xf5", b"a\xc3\x28"])
    def test_invalid_first_fragment_fails_even_if_the_message_never_ends(self, codec, bad):
        # The final fragment never arrives: the error must come with the first fragment.
        codec.fails(frame(OP_TEXT, bad, fin=False), 1007)

    def test_invalid_byte_fails_before_its_frame_is_complete(self):
        data = frame(OP_TEXT, b"ab\xff" + b"c" * 500)
        header_len = 2 + 2 + 4
        for kind in BUFFER_KINDS:
            events, err, parser, pool = run([data[:header_len + 3]], kind=kind)
            assert err is not None and err.code == 1007, kind
            parser.close()
            assert pool.bytes_in_use == 0

    def test_invalid_second_fragment_fails_when_it_arrives(self, codec):
        data = frame(OP_TEXT, b"caf\xc3", fin=False) + frame(OP_CONTINUATION, b"\x28", fin=False)
        codec.fails(data, 1007)

    @pytest.mark.parametrize("prefix", [b"\xc3", b"\xe2\x82", b"\xf0\x9d\x84", b"ok\xf4\x8f"])
    def test_valid_prefix_of_a_character_does_not_fail_early(self, prefix):
        pool = BufferPool()
        parser = FrameParser(pool)
        assert parser.feed(frame(OP_TEXT, prefix, fin=False)) == []
        assert not parser.closed
        parser.close()
        assert pool.bytes_in_use == 0

    @pytest.mark.parametrize("prefix", [b"\xc3", b"\xe2\x82", b"\xf0\x9d\x84"])
    def test_message_ending_inside_a_character(self, codec, prefix):
        data = frame(OP_TEXT, b"x" + prefix, fin=False) + frame(OP_CONTINUATION, b"")
        codec.fails(data, 1007)

    def test_ping_between_fragments_does_not_break_utf8_state(self, codec):
        payload = "€".encode()
        data = (frame(OP_TEXT, payload[:1], fin=False) + frame(OP_PING, b"\xff\xfe")
                + frame(OP_CONTINUATION, payload[1:]))
        codec.parses(data, [(OP_PING, b"\xff\xfe"), (OP_TEXT, payload)])

    @pytest.mark.parametrize("payload", INVALID_UTF8 + [t.encode() for t in VALID_TEXTS])
    def test_validate_utf8_matches_the_reference(self, payload):
        expected = ref_validate_utf8(payload)
        try:
            payload.decode("utf-8")
            assert expected
        except UnicodeDecodeError:
            assert not expected
        for kind in BUFFER_KINDS:
            assert validate_utf8(as_kind(payload, kind)) is expected

    def test_validate_utf8_every_two_byte_sequence(self):
        mismatches = []
        for a in range(256):
            for b in range(256):
                data = bytes((a, b))
                if validate_utf8(data) != ref_validate_utf8(data):
                    mismatches.append(data)
        assert mismatches == []

    def test_validate_utf8_every_three_byte_sequence_with_a_three_byte_lead(self):
        mismatches = []
        for a in range(0xE0, 0xF0):
            for b in range(0x70, 0xD0):
                for c in (0x30, 0x7F, 0x80, 0xBF, 0xC0):
                    data = bytes((a, b, c))
                    if validate_utf8(data) != ref_validate_utf8(data):
                        mismatches.append(data)
        assert mismatches == []

    def test_validate_utf8_finds_a_bad_byte_after_long_ascii_runs(self):
        for n in range(0, 40):
            assert validate_utf8(b"a" * n + "é".encode() + b"b" * n)
            assert not validate_utf8(b"a" * n + b"\x80" + b"b" * n), n
            assert not validate_utf8(b"a" * n + b"\xc3"), n


# --- §5.7 Examples ------------------------------------------------------------------------

class TestSection5_7Examples:
    """The exact frames of RFC 6455 §5.7."""

    HELLO_UNMASKED = bytes([0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
    HELLO_MASKED = bytes([0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    FRAGMENTED = bytes([0x01, 0x03, 0x48, 0x65, 0x6C]) + bytes([0x80, 0x02, 0x6C, 0x6F])
    PING_UNMASKED = bytes([0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
    PONG_MASKED = bytes([0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    BINARY_256 = bytes([0x82, 0x7E, 0x01, 0x00]) + pattern(256)
    BINARY_64K = bytes([0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0]) + pattern(65536)

    def test_single_frame_unmasked_text(self, codec):
        codec.parses(self.HELLO_UNMASKED, [(OP_TEXT, b"Hello")], client=True)
        codec.fails(self.HELLO_UNMASKED, 1002, client=False)

    def test_single_frame_masked_text(self, codec):
        codec.parses(self.HELLO_MASKED, [(OP_TEXT, b"Hello")], client=False)
        codec.fails(self.HELLO_MASKED, 1002, client=True)

    def test_fragmented_unmasked_text(self, codec):
        codec.parses(self.FRAGMENTED, [(OP_TEXT, b"Hello")], client=True)

    def test_unmasked_ping_and_masked_pong(self, codec):
        codec.parses(self.PING_UNMASKED, [(OP_PING, b"Hello")], client=True)
        codec.parses(self.PONG_MASKED, [(OP_PONG, b"Hello")], client=False)

    def test_256_bytes_binary_in_one_unmasked_frame(self, codec):
        codec.parses(self.BINARY_256, [(OP_BINARY, pattern(256))], client=True)

    def test_64_kib_binary_in_one_unmasked_frame(self, codec):
        codec.parses(self.BINARY_64K, [(OP_BINARY, pattern(65536))], client=True)

    def test_the_encoders_produce_the_examples(self):
        assert encode_frame(OP_TEXT, b"Hello") == self.HELLO_UNMASKED
        assert encode_frame(OP_TEXT, b"Hel", fin=False) + encode_frame(OP_CONTINUATION, b"lo") == self.FRAGMENTED
        assert encode_ping(b"Hello") == self.PING_UNMASKED
        assert encode_frame(OP_BINARY, pattern(256)) == self.BINARY_256
        assert encode_frame(OP_BINARY, pattern(65536)) == self.BINARY_64K
        assert apply_mask(b"Hello", KEY) == self.HELLO_MASKED[6:]

    def test_the_reference_produces_the_examples(self):
        assert ref_encode(OP_TEXT, b"Hello") == self.HELLO_UNMASKED
        assert ref_encode(OP_TEXT, b"Hello", mask_key=KEY) == self.HELLO_MASKED
        assert ref_encode(OP_PONG, b"Hello", mask_key=KEY) == self.PONG_MASKED
        assert ref_encode(OP_BINARY, pattern(65536)) == self.BINARY_64K


# --- §7.4 Close codes ---------------------------------------------------------------------

VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
               3000, 3001, 3999, 4000, 4567, 4999]
INVALID_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 5001, 65535]


class TestSection7_4CloseCodes:
    @ROLES
    @pytest.mark.parametrize("code", VALID_CODES)
    def test_valid_code_on_the_wire(self, codec, client, code):
        payload = ref_close_payload(code, b"why")
        codec.parses(frame(OP_CLOSE, payload, client=client), [(OP_CLOSE, payload)], client=client)

    @ROLES
    @pytest.mark.parametrize("code", INVALID_CODES)
    def test_invalid_code_on_the_wire(self, codec, client, code):
        codec.fails(close_frame(code, client=client), 1002, client=client)
        codec.fails(close_frame(code, b"reason", client=client), 1002, client=client)

    def test_is_valid_close_code_over_the_whole_16_bit_range(self):
        wrong = [c for c in range(65536) if is_valid_close_code(c) != ref_valid_close_code(c)]
        assert wrong == []
        assert all(type(is_valid_close_code(c)) is bool for c in (0, 1000, 1005, 4999))

    @pytest.mark.parametrize("code", [-1, 65536, (1 << 32) + 1000, 1 << 64])
    def test_is_valid_close_code_is_false_outside_16_bits(self, code):
        assert is_valid_close_code(code) is False

    @pytest.mark.parametrize("code", VALID_CODES)
    def test_encode_close_accepts_valid_codes(self, code):
        assert encode_close(code) == ref_encode(OP_CLOSE, ref_close_payload(code))

    @pytest.mark.parametrize("code", INVALID_CODES + [-1, 65536, (1 << 32) + 1000])
    def test_encode_close_refuses_codes_that_may_not_be_sent(self, code):
        with pytest.raises(ValueError):
            encode_close(code)


# --- §10.4 Limits ---------------------------------------------------------------------------

class TestSection10_4Limits:
    """max_message_size and max_fragments → 1009, decided from headers before payload."""

    def test_single_frame_at_and_over_the_limit(self, codec):
        codec.parses(frame(OP_BINARY, pattern(1000)), [(OP_BINARY, pattern(1000))], max_message_size=1000)
        codec.fails(frame(OP_BINARY, pattern(1001)), 1009, max_message_size=1000)
        codec.fails(frame(OP_TEXT, b"x" * 1001), 1009, max_message_size=1000)

    def test_default_max_message_size_is_one_mebibyte(self):
        assert _core.DEFAULT_MAX_MESSAGE_SIZE == MiB
        assert _core.DEFAULT_MAX_FRAGMENTS == 1024
        events, err, parser, pool = run([frame(OP_BINARY, pattern(MiB))])
        assert err is None and events == [(OP_BINARY, pattern(MiB))]
        parser.close()
        assert pool.bytes_in_use == 0
        events, err, parser, pool = run([frame(OP_BINARY, pattern(MiB + 1))[:14]])
        assert err is not None and err.code == 1009 and events == []
        parser.close()
        assert pool.bytes_in_use == 0

    @pytest.mark.parametrize("length", [1001, 65536, 1 << 31, (1 << 63) - 1])
    def test_decided_from_the_length_field_before_payload_arrives(self, length):
        header = raw_frame(0x82, length, form=64 if length > 0xFFFF else 16)
        for kind in BUFFER_KINDS:
            events, err, parser, pool = run([header], kind=kind, max_message_size=1000)
            assert err is not None and err.code == 1009, (length, kind)
            assert parser.buffered == 0
            parser.close()
            assert pool.bytes_in_use == 0

    def test_fragments_add_up_against_the_limit(self, codec):
        ok = frame(OP_TEXT, b"a" * 600, fin=False) + frame(OP_CONTINUATION, b"b" * 400)
        codec.parses(ok, [(OP_TEXT, b"a" * 600 + b"b" * 400)], max_message_size=1000)
        over = frame(OP_TEXT, b"a" * 600, fin=False) + frame(OP_CONTINUATION, b"b" * 401)
        codec.fails(over, 1009, max_message_size=1000)

    def test_oversized_fragment_fails_from_its_header(self):
        data = frame(OP_BINARY, b"a" * 600, fin=False) + frame(OP_CONTINUATION, b"b" * 401)
        for kind in BUFFER_KINDS:
            events, err, parser, pool = run([data[:len(data) - 401]], kind=kind, max_message_size=1000)
            assert err is not None and err.code == 1009
            parser.close()
            assert pool.bytes_in_use == 0

    def test_control_frames_do_not_count_against_the_message(self, codec):
        data = (frame(OP_BINARY, b"a" * 50, fin=False) + frame(OP_PING, b"p" * 125)
                + frame(OP_CONTINUATION, b"b" * 50))
        codec.parses(data, [(OP_PING, b"p" * 125), (OP_BINARY, b"a" * 50 + b"b" * 50)], max_message_size=100)

    def test_limit_applies_per_message(self, codec):
        data = frame(OP_BINARY, b"a" * 100) + frame(OP_TEXT, b"b" * 100) + frame(OP_BINARY, b"c" * 100)
        codec.parses(data, [(OP_BINARY, b"a" * 100), (OP_TEXT, b"b" * 100), (OP_BINARY, b"c" * 100)],
                     max_message_size=100)

    @staticmethod
    def fragments(n: int, opcode: int = OP_BINARY) -> bytes:
        data = frame(opcode, b"0", fin=n == 1)
        for i in range(1, n):
            data += frame(OP_CONTINUATION, str(i % 10).encode(), fin=i == n - 1)
        return data

    def test_max_fragments(self, codec):
        expected = [(OP_BINARY, b"".join(str(i % 10).encode() for i in range(4)))]
        codec.parses(self.fragments(4), expected, max_fragments=4)
        codec.fails(self.fragments(5), 1009, max_fragments=4)
        codec.parses(self.fragments(1), [(OP_BINARY, b"0")], max_fragments=1)
        codec.fails(self.fragments(2), 1009, max_fragments=1)

    def test_default_max_fragments(self):
        expected = (OP_TEXT, b"".join(str(i % 10).encode() for i in range(1024)))
        events, err, parser, pool = run([self.fragments(1024, OP_TEXT)])
        assert err is None and events == [expected]
        parser.close()
        events, err, parser, pool = run([self.fragments(1025, OP_TEXT)])
        assert err is not None and err.code == 1009
        parser.close()
        assert pool.bytes_in_use == 0

    def test_fragment_count_ignores_control_frames_and_resets_per_message(self, codec):
        data = (frame(OP_TEXT, b"a", fin=False) + frame(OP_PING, b"") + frame(OP_PONG, b"")
                + frame(OP_CONTINUATION, b"b") + frame(OP_TEXT, b"c", fin=False) + frame(OP_CONTINUATION, b"d"))
        codec.parses(data, [(OP_PING, b""), (OP_PONG, b""), (OP_TEXT, b"ab"), (OP_TEXT, b"cd")],
                     max_fragments=2)

    def test_pool_exhaustion_is_1013_and_nothing_leaks(self):
        pool = BufferPool((128,), limit=128, arena_size=128)
        first = FrameParser(pool, max_message_size=128)
        second = FrameParser(pool, max_message_size=128)
        data = frame(OP_BINARY, pattern(100))
        assert first.feed(data[:20]) == []  # a partial frame borrows the only block
        assert pool.bytes_in_use == 128
        with pytest.raises(ProtocolError) as err:
            second.feed(data[:20])
        assert err.value.code == 1013
        assert second.closed
        second.close()
        assert first.feed(data[20:]) == [(OP_BINARY, pattern(100))]
        first.close()
        assert pool.bytes_in_use == 0
        assert pool.failed_acquires >= 1


# --- Parser lifecycle (the .pyi contract) -----------------------------------------------------

class TestParserLifecycle:
    def test_dead_after_an_error_with_the_same_code_and_reason(self):
        pool = BufferPool()
        parser = FrameParser(pool)
        with pytest.raises(ProtocolError) as first:
            parser.feed(ref_encode(OP_TEXT, b"unmasked"))
        assert first.value.code == 1002 and isinstance(first.value.reason, str) and first.value.reason
        assert parser.closed
        for later in (frame(OP_TEXT, b"fine"), b"", b"\x00", close_frame(1000)):
            with pytest.raises(ProtocolError) as again:
                parser.feed(later)
            assert (again.value.code, again.value.reason) == (first.value.code, first.value.reason)
        assert parser.buffered == 0
        parser.close()
        assert pool.bytes_in_use == 0

    def test_dead_after_an_error_mid_message_and_blocks_come_back(self):
        pool = BufferPool()
        parser = FrameParser(pool)
        assert parser.feed(frame(OP_TEXT, b"a" * 2000, fin=False)) == []
        assert pool.bytes_in_use > 0
        with pytest.raises(ProtocolError) as err:
            parser.feed(frame(OP_TEXT, b"new message"))
        assert err.value.code == 1002
        with pytest.raises(ProtocolError):
            parser.feed(frame(OP_CONTINUATION, b"b"))
        parser.close()
        assert parser.buffered == 0
        assert pool.bytes_in_use == 0

    def test_error_carries_the_events_completed_before_it(self):
        pool = BufferPool()
        parser = FrameParser(pool)
        data = frame(OP_PING, b"1") + frame(OP_TEXT, b"2") + frame(OP_CONTINUATION, b"3")
        with pytest.raises(ProtocolError) as err:
            parser.feed(data)
        assert err.value.events == [(OP_PING, b"1"), (OP_TEXT, b"2")]
        parser.close()
        assert pool.bytes_in_use == 0

    def test_buffered_returns_to_zero_after_each_message(self):
        pool = BufferPool()
        parser = FrameParser(pool)
        messages = [
            frame(OP_TEXT, "é".encode() * 700),
            frame(OP_BINARY, pattern(70000), fin=False) + frame(OP_PING, b"x") + frame(OP_CONTINUATION, b"!"),
            frame(OP_BINARY, b""),
            frame(OP_TEXT, b"a" * 200, fin=False) + frame(OP_CONTINUATION, b"b" * 9000),
        ]
        for data in messages:
            step = max(1, len(data) // 97)
            got = []
            for i in range(0, len(data), step):
                got += parser.feed(data[i:i + step])
            assert got and got[-1][0] in (OP_TEXT, OP_BINARY)
            assert parser.buffered == 0
            assert pool.bytes_in_use == 0
        parser.close()
        assert pool.bytes_in_use == 0

    def test_close_returns_every_block_and_is_idempotent(self):
        pool = BufferPool()
        for partial in (frame(OP_BINARY, pattern(5000))[:300],
                        frame(OP_TEXT, b"a" * 100, fin=False) + frame(OP_PING, pattern(100))[:50],
                        frame(OP_BINARY, pattern(200_000), fin=False)[:150_000]):
            parser = FrameParser(pool)
            parser.feed(partial)
            assert parser.buffered > 0
            parser.close()
            assert parser.buffered == 0
            assert pool.bytes_in_use == 0
            parser.close()
            assert pool.bytes_in_use == 0

    def test_dropping_a_parser_returns_its_blocks(self):
        pool = BufferPool()
        parser = FrameParser(pool)
        parser.feed(frame(OP_BINARY, pattern(5000))[:300])
        assert pool.bytes_in_use > 0
        del parser
        assert pool.bytes_in_use == 0

    def test_empty_input_anywhere_changes_nothing(self):
        pool = BufferPool()
        parser = FrameParser(pool)
        data = frame(OP_TEXT, "añb".encode() * 50, fin=False) + frame(OP_PING, b"x") + frame(OP_CONTINUATION, b"!")
        events = []
        for i in range(len(data)):
            for empty in (b"", bytearray(), memoryview(b"")):
                assert parser.feed(empty) == []
            events += parser.feed(data[i:i + 1])
        assert events == [(OP_PING, b"x"), (OP_TEXT, "añb".encode() * 50 + b"!")]
        parser.close()
        assert pool.bytes_in_use == 0

    @pytest.mark.parametrize("opcode,payload", [
        (OP_PING, pattern(125)), (OP_PONG, pattern(100)), (OP_CLOSE, b"\x03\xe8" + b"r" * 123),
    ], ids=["ping", "pong", "close"])
    def test_split_control_frame_on_a_pool_of_small_blocks(self, opcode, payload):
        """Every block of the pool is under 125 bytes, the pool is far from its ceiling:
        a valid control frame split across reads must parse (or the parser must refuse
        such a pool up front with ValueError), never fail with 1013."""
        for classes in ((64,), (16, 64)):
            pool = BufferPool(classes, limit=4096, arena_size=64)
            try:
                parser = FrameParser(pool, max_message_size=64)
            except ValueError:
                continue  # refusing the configuration up front is fine too
            data = frame(opcode, payload)
            try:
                events = parser.feed(data[:10]) + parser.feed(data[10:])
            finally:
                parser.close()
            assert events == [(opcode, payload)], classes
            assert pool.bytes_in_use == 0

    def test_payloads_are_owned_bytes_not_views_of_the_input(self):
        pool = BufferPool()
        parser = FrameParser(pool)
        data = bytearray(frame(OP_BINARY, b"abcdef") + frame(OP_TEXT, b"xyz"))
        events = parser.feed(memoryview(data))
        data[:] = b"\x00" * len(data)
        assert events == [(OP_BINARY, b"abcdef"), (OP_TEXT, b"xyz")]
        assert all(type(p) is bytes for _, p in events)
        parser.close()
        assert pool.bytes_in_use == 0

    def test_many_parsers_share_one_pool(self):
        pool = BufferPool()
        parsers = [FrameParser(pool) for _ in range(50)]
        data = frame(OP_TEXT, b"a" * 3000, fin=False) + frame(OP_CONTINUATION, b"b" * 3000)
        for p in parsers:
            assert p.feed(data[:1000]) == []
        assert pool.bytes_in_use == sum(p.buffered for p in parsers) > 0
        for p in parsers:
            assert p.feed(data[1000:]) == [(OP_TEXT, b"a" * 3000 + b"b" * 3000)]
            p.close()
        assert pool.bytes_in_use == 0


# --- The encoder against the reference ------------------------------------------------------

class TestEncoderAgainstReference:
    @pytest.mark.parametrize("opcode", [OP_CONTINUATION, OP_TEXT, OP_BINARY])
    @pytest.mark.parametrize("fin", [True, False])
    @pytest.mark.parametrize("n", LENGTHS + (200_000,))
    def test_unmasked_data_frames_are_byte_identical(self, opcode, fin, n):
        payload = pattern(n)
        for kind in BUFFER_KINDS:
            assert encode_frame(opcode, as_kind(payload, kind), fin=fin) == ref_encode(opcode, payload, fin=fin)

    @pytest.mark.parametrize("opcode", [OP_CLOSE, OP_PING, OP_PONG])
    @pytest.mark.parametrize("n", [0, 1, 2, 124, 125])
    def test_unmasked_control_frames_are_byte_identical(self, opcode, n):
        payload = b"\x03\xe8" + pattern(n - 2) if opcode == OP_CLOSE and n >= 2 else pattern(n)
        for kind in BUFFER_KINDS:
            assert encode_frame(opcode, as_kind(payload, kind)) == ref_encode(opcode, payload)

    @pytest.mark.parametrize("rsv", range(8))
    def test_rsv_bits(self, rsv):
        assert encode_frame(OP_BINARY, b"ab", rsv=rsv) == ref_encode(OP_BINARY, b"ab", rsv=rsv)
        data = encode_frame(OP_TEXT, b"ab", rsv=rsv, mask=True)
        _, key, _ = split_key(data)
        assert data == ref_encode(OP_TEXT, b"ab", rsv=rsv, mask_key=key)

    @pytest.mark.parametrize("n", LENGTHS)
    def test_masked_frames_match_the_reference_with_their_key(self, n):
        payload = pattern(n, seed=11)
        for kind in BUFFER_KINDS:
            data = encode_frame(OP_BINARY, as_kind(payload, kind), mask=True)
            _, key, _ = split_key(data)
            assert data == ref_encode(OP_BINARY, payload, mask_key=key)

    def test_default_payload_is_empty(self):
        assert encode_frame(OP_PING) == b"\x89\x00"
        assert encode_ping() == b"\x89\x00"
        assert encode_pong() == b"\x8a\x00"

    def test_encoded_frames_round_trip_through_the_parser(self, codec):
        data = b"".join([
            encode_frame(OP_TEXT, "ünïcödé".encode()), encode_frame(OP_BINARY, pattern(126)),
            encode_frame(OP_TEXT, b"ab", fin=False), encode_ping(b"mid"), encode_frame(OP_CONTINUATION, b"cd"),
            encode_frame(OP_BINARY, pattern(65536)), encode_close(1000, "done"),
        ])
        codec.parses(data, [(OP_TEXT, "ünïcödé".encode()), (OP_BINARY, pattern(126)), (OP_PING, b"mid"),
                            (OP_TEXT, b"abcd"), (OP_BINARY, pattern(65536)), (OP_CLOSE, b"\x03\xe8done")],
                     client=True)

    def test_opcode_constants(self):
        assert (OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG) == (0, 1, 2, 8, 9, 10)
