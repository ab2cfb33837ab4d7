"""Differential tests: ``fastrpc._core.FrameParser`` against the pure-Python ``RefParser``.

Valid streams (fragmented text and binary messages with control frames in between,
multibyte UTF-8 cut anywhere, masked towards a server) are generated together with the
events they must produce; mutated and random byte strings must give both parsers the
same events and the same close code. Both may only ever raise ``ProtocolError``.
"""
from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

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
    encode_frame,
    validate_utf8,
)
from fastrpc.errors import ProtocolError
from reference_codec import RefParser, ref_close_payload, ref_encode, ref_mask, ref_validate_utf8

# 250 examples keep the default run fast; FASTRPC_FUZZ_EXAMPLES=20000 fuzzes for longer.
SETTINGS = settings(
    max_examples=int(os.environ.get("FASTRPC_FUZZ_EXAMPLES", "250")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999]

# --- strategies ----------------------------------------------------------------------------

texts = st.text(
    alphabet=st.characters(exclude_categories=("Cs",)),  # no lone surrogates: not encodable
    max_size=60,
)


@st.composite
def big_payloads(draw) -> bytes:
    """Rarely, a payload at a length-encoding edge (deterministic content, fast to draw)."""
    n = draw(st.sampled_from([125, 126, 127, 1000, 65535, 65536, 70000]))
    return random.Random(n).randbytes(n)


@st.composite
def data_payloads(draw, text: bool) -> bytes:
    if draw(st.integers(0, 30)) == 0:
        big = draw(big_payloads())
        return big.hex().encode()[: len(big)] if text else big
    if text:
        return draw(texts).encode("utf-8")
    return draw(st.binary(max_size=300))


@st.composite
def control_frames(draw, allow_close: bool = False) -> tuple[int, bytes]:
    opcode = draw(st.sampled_from([OP_PING, OP_PONG] + ([OP_CLOSE] if allow_close else [])))
    if opcode == OP_CLOSE:
        if draw(st.booleans()):
            return opcode, b""
        reason = draw(texts).encode()[:123]
        while not ref_validate_utf8(reason):  # cut at a character boundary
            reason = reason[:-1]
        return opcode, ref_close_payload(draw(st.sampled_from(VALID_CLOSE_CODES)), reason)
    return opcode, draw(st.binary(max_size=125))


@st.composite
def valid_streams(draw, client: bool) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(bytes on the wire, the events they must produce) for a parser in role ``client``."""
    def key() -> bytes | None:
        return None if client else draw(st.binary(min_size=4, max_size=4))

    wire = bytearray()
    events: list[tuple[int, bytes]] = []
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 3)) == 0:
            opcode, payload = draw(control_frames())
            wire += ref_encode(opcode, payload, mask_key=key())
            events.append((opcode, payload))
            continue
        opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
        message = draw(data_payloads(opcode == OP_TEXT))
        # Cut anywhere, even inside a multibyte character: only the whole must be UTF-8.
        cuts = sorted(draw(st.lists(st.integers(0, len(message)), max_size=4)))
        parts = [message[a:b] for a, b in zip([0] + cuts, cuts + [len(message)])]
        for i, part in enumerate(parts):
            fin = i == len(parts) - 1
            wire += ref_encode(opcode if i == 0 else OP_CONTINUATION, part, fin=fin, mask_key=key())
            if not fin and draw(st.integers(0, 2)) == 0:
                ctl_op, ctl_payload = draw(control_frames())
                wire += ref_encode(ctl_op, ctl_payload, mask_key=key())
                events.append((ctl_op, ctl_payload))
        events.append((opcode, message))
    if draw(st.booleans()):
        opcode, payload = draw(control_frames(allow_close=True))
        wire += ref_encode(opcode, payload, mask_key=key())
        events.append((opcode, payload))
    return bytes(wire), events


@st.composite
def splits(draw, data: bytes) -> list[bytes]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=10))))
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def mutate(draw, data: bytes) -> bytes:
    """A few edits that hit headers more often than payloads."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "byte", "insert", "delete", "truncate", "header", "append"]))
        pos = draw(st.integers(0, max(0, len(out) - 1)))
        if kind == "flip" and out:
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and out:
            out[pos] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete" and out:
            del out[pos:pos + draw(st.integers(1, 4))]
        elif kind == "truncate":
            del out[pos:]
        elif kind == "header" and out:
            # Rewrite the first byte of a frame-looking position: opcode, RSV, FIN.
            out[0 if draw(st.booleans()) else pos] = draw(st.integers(0, 255))
        elif kind == "append":
            out += draw(st.binary(max_size=20))
    return bytes(out)


# --- running both parsers --------------------------------------------------------------------

def outcome(parser, chunks, kind: str):
    """(events, close code or None); any exception but ProtocolError propagates."""
    events: list[tuple[int, bytes]] = []
    for chunk in chunks:
        if kind == "bytearray":
            chunk = bytearray(chunk)
        elif kind == "memoryview":
            chunk = memoryview(b"\x00" + chunk)[1:]
        try:
            events += parser.feed(chunk)
        except ProtocolError as err:
            events += err.events
            return events, err.code
    return events, None


def both(chunks, *, client: bool, kind: str = "bytes", **limits):
    pool = BufferPool()
    core = FrameParser(pool, client=client, **limits)
    got = outcome(core, chunks, kind)
    if got[1] is not None:
        assert core.closed
    core.close()  # the input may end mid-message: close() must give every block back
    assert pool.bytes_in_use == 0
    ref = outcome(RefParser(client=client, **limits), chunks, "bytes")
    event(f"close code {ref[1]}")  # shown by --hypothesis-show-statistics
    return got, ref


roles = st.booleans()
kinds = st.sampled_from(["bytes", "bytearray", "memoryview"])


# --- properties ---------------------------------------------------------------------------

@SETTINGS
@given(st.data(), roles, kinds)
def test_valid_streams_parse_to_the_generated_events(data, client, kind):
    wire, expected = data.draw(valid_streams(client))
    chunks = data.draw(splits(wire))
    got, ref = both(chunks, client=client, kind=kind)
    assert ref == (expected, None)
    assert got == (expected, None)


@SETTINGS
@given(st.data(), roles)
def test_valid_streams_leave_nothing_buffered_between_messages(data, client):
    wire, expected = data.draw(valid_streams(client))
    pool = BufferPool()
    parser = FrameParser(pool, client=client)
    events = []
    for chunk in data.draw(splits(wire)):
        events += parser.feed(chunk)
    assert events == expected
    assert parser.buffered == 0
    assert pool.bytes_in_use == 0
    parser.close()
    assert pool.bytes_in_use == 0


@SETTINGS
@given(st.data(), roles, kinds)
def test_mutated_streams_agree(data, client, kind):
    wire, _ = data.draw(valid_streams(client))
    bad = mutate(data.draw, wire)
    chunks = data.draw(splits(bad))
    got, ref = both(chunks, client=client, kind=kind)
    assert got == ref


@SETTINGS
@given(st.data(), roles,
       st.integers(1, 400), st.integers(1, 6))
def test_mutated_streams_agree_under_tight_limits(data, client, max_message_size, max_fragments):
    wire, _ = data.draw(valid_streams(client))
    if data.draw(st.booleans()):
        wire = mutate(data.draw, wire)
    chunks = data.draw(splits(wire))
    got, ref = both(chunks, client=client, max_message_size=max_message_size, max_fragments=max_fragments)
    assert got == ref


@SETTINGS
@given(st.data(), roles, st.binary(max_size=200))
def test_random_bytes_agree(data, client, raw):
    chunks = data.draw(splits(raw))
    got, ref = both(chunks, client=client)
    assert got == ref


@st.composite
def frame_soup(draw, client: bool) -> bytes:
    """Frames with any opcode, RSV, FIN and mask choice, valid or not."""
    out = bytearray()
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.integers(0, 9)):
            opcode = draw(st.sampled_from([OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG]))
        else:
            opcode = draw(st.integers(0, 15))
        payload = draw(st.one_of(st.binary(max_size=130), texts.map(lambda t: t.encode())))
        masked = (draw(st.integers(0, 19)) > 0) != client  # right for the role 95% of the time
        key = draw(st.binary(min_size=4, max_size=4)) if masked else None
        rsv = 0 if draw(st.integers(0, 9)) else draw(st.integers(1, 7))
        out += ref_encode(opcode, payload, fin=draw(st.integers(0, 3)) > 0, mask_key=key, rsv=rsv)
    return bytes(out)


@SETTINGS
@given(st.data(), roles)
def test_frame_soup_agrees(data, client):
    wire = data.draw(frame_soup(client))
    chunks = data.draw(splits(wire))
    got, ref = both(chunks, client=client, max_fragments=data.draw(st.integers(1, 4)))
    assert got == ref


@SETTINGS
@given(st.data(), roles)
def test_text_with_invalid_utf8_fails_at_the_same_point(data, client):
    """Valid text with invalid bytes spliced in, cut into fragments: same events, same
    close code (1007), in the same ``feed`` call."""
    text = data.draw(texts).encode()
    junk = data.draw(st.binary(min_size=1, max_size=4))
    at = data.draw(st.integers(0, len(text)))
    message = text[:at] + junk + text[at:]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=4)))
    parts = [message[a:b] for a, b in zip([0] + cuts, cuts + [len(message)])]
    key = None if client else b"\x11\x22\x33\x44"
    wire = b"".join(
        ref_encode(OP_TEXT if i == 0 else OP_CONTINUATION, part, fin=i == len(parts) - 1, mask_key=key)
        for i, part in enumerate(parts)
    )
    chunks = data.draw(splits(wire))
    pool = BufferPool()
    core, ref = FrameParser(pool, client=client), RefParser(client=client)
    for i, chunk in enumerate(chunks):
        results = []
        for parser in (core, ref):
            try:
                results.append(("ok", parser.feed(chunk)))
            except ProtocolError as err:
                results.append(("error", err.code, err.events))
        assert results[0] == results[1], f"chunk {i}"
        if results[0][0] == "error":
            break
    if ref_validate_utf8(message):
        assert results[0][0] == "ok"
    else:
        assert results[0][:2] == ("error", 1007)
    core.close()
    assert pool.bytes_in_use == 0


@SETTINGS
@given(st.binary(max_size=64))
def test_validate_utf8_agrees_with_the_reference_and_python(raw):
    try:
        raw.decode("utf-8")
        python = True
    except UnicodeDecodeError:
        python = False
    assert validate_utf8(raw) is python
    assert ref_validate_utf8(raw) is python


code_points = st.one_of(
    st.integers(0, 0x7F), st.integers(0x80, 0x7FF), st.integers(0xD780, 0xE080),  # around surrogates
    st.integers(0x800, 0xFFFF), st.integers(0x10000, 0x10FFFF),
)


@SETTINGS
@given(st.lists(code_points, max_size=30).map(lambda cps: "".join(map(chr, cps)).encode("utf-8", "surrogatepass")),
       st.integers(0, 3))
def test_validate_utf8_on_encoded_text_with_cuts(raw, cut):
    """Surrogates encoded anyway (invalid), and text cut short at the end."""
    raw = raw[: len(raw) - cut] if cut else raw
    try:
        raw.decode("utf-8")
        python = True
    except UnicodeDecodeError:
        python = False
    assert validate_utf8(raw) is python


@SETTINGS
@given(st.binary(max_size=200), st.binary(min_size=4, max_size=4), st.integers(0, 7))
def test_apply_mask_agrees_with_the_reference(raw, key, offset):
    view = memoryview(b"\x00" * offset + raw)[offset:]
    assert apply_mask(view, key) == ref_mask(raw, key)


@SETTINGS
@given(st.integers(0, 15), st.binary(max_size=300), st.booleans(), st.integers(0, 7))
def test_encode_frame_agrees_with_the_reference(opcode, payload, fin, rsv):
    assert encode_frame(opcode, payload, fin=fin, rsv=rsv) == ref_encode(opcode, payload, fin=fin, rsv=rsv)
    masked = encode_frame(opcode, payload, fin=fin, rsv=rsv, mask=True)
    p = 2 + {126: 2, 127: 8}.get(masked[1] & 0x7F, 0)
    assert masked[1] & 0x80
    assert masked == ref_encode(opcode, payload, fin=fin, rsv=rsv, mask_key=masked[p:p + 4])
