"""Bad frames and frame limits from a raw socket (README "Bad input" table, RFC 6455 §5,
§7.4.1, §8.1): each gets its close code, its counter, and the server keeps serving the
other connections."""
from __future__ import annotations

import pytest
from rawclient import OP_BINARY, OP_CONTINUATION, OP_TEXT, RawWS

from fastrpc._core import encode_frame

LIMIT = 64 * 1024  # TINY.max_message_size
FRAGMENTS = 16  # TINY.max_fragments


async def assert_serving(srv, other: RawWS, label: str) -> None:
    await other.send_text(label)
    assert await other.recv() == (OP_TEXT, label.encode())
    fresh = await RawWS.open(srv.port)
    try:
        await fresh.send_binary(b"fresh " + label.encode())
        assert await fresh.recv() == (OP_BINARY, b"fresh " + label.encode())
    finally:
        fresh.close()


def test_over_max_message_size_decided_from_header(run, server):
    async def body():
        srv = await server()
        other = await RawWS.open(srv.port)
        bad = await RawWS.open(srv.port)
        try:
            # Only the header of a frame one byte over the limit: no payload is sent,
            # so the 1009 can only come from the length field.
            frame = encode_frame(OP_BINARY, b"\0" * (LIMIT + 1), mask=True)
            header = frame[: len(frame) - (LIMIT + 1)]
            assert len(header) == 14  # 2 + 8 (64-bit length) + 4 (mask key)
            await bad.send_raw(header)
            code, _ = await bad.expect_close()
            assert code == 1009
            m = srv.metrics()
            assert m["closed_too_big"] == 1
            assert m["messages_in"] == 0
            await assert_serving(srv, other, "after 1009")
        finally:
            bad.close()
            other.close()

    run(body())


def test_max_fragments(run, server):
    async def body():
        srv = await server()
        other = await RawWS.open(srv.port)
        ws = await RawWS.open(srv.port)
        try:
            # Exactly max_fragments frames: one message.
            await ws.send_frame(OP_TEXT, b"f0", fin=False)
            for i in range(1, FRAGMENTS - 1):
                await ws.send_frame(OP_CONTINUATION, f"f{i}".encode(), fin=False)
            await ws.send_frame(OP_CONTINUATION, b"end", fin=True)
            expected = b"".join(f"f{i}".encode() for i in range(FRAGMENTS - 1)) + b"end"
            assert await ws.recv() == (OP_TEXT, expected)
            # One more: 1009.
            await ws.send_frame(OP_BINARY, b"g", fin=False)
            for _ in range(FRAGMENTS - 1):
                await ws.send_frame(OP_CONTINUATION, b"g", fin=False)
            await ws.send_frame(OP_CONTINUATION, b"g", fin=True)
            code, _ = await ws.expect_close()
            assert code == 1009
            assert srv.metrics()["closed_too_big"] == 1
            await assert_serving(srv, other, "after too many fragments")
        finally:
            ws.close()
            other.close()

    run(body())


BAD_FRAMES = {
    # RFC 6455 §5.1: a server MUST close on an unmasked client frame.
    "unmasked": (encode_frame(OP_TEXT, b"hello", mask=False), 1002),
    # §5.2: RSV1-3 must be 0 without a negotiated extension.
    "rsv1": (encode_frame(OP_TEXT, b"hello", mask=True, rsv=4), 1002),
    "rsv3": (encode_frame(OP_BINARY, b"hello", mask=True, rsv=1), 1002),
    # §8.1 / §7.4.1: a text message that is not UTF-8 → 1007.
    "invalid_utf8": (encode_frame(OP_TEXT, b"ok \xc3\x28 bad", mask=True), 1007),
    # §5.2: reserved opcode.
    "reserved_opcode": (encode_frame(0x3, b"x", mask=True), 1002),
    # §5.5: control frame that is fragmented.
    "fragmented_ping": (encode_frame(0x9, b"x", mask=True, fin=False), 1002),
    # §5.4: continuation with no message open.
    "orphan_continuation": (encode_frame(OP_CONTINUATION, b"x", mask=True), 1002),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_malformed_frame_close_code(run, server, case):
    async def body():
        frame, expected = BAD_FRAMES[case]
        srv = await server()
        other = await RawWS.open(srv.port)
        bad = await RawWS.open(srv.port)
        try:
            await bad.send_text("before")
            assert await bad.recv() == (OP_TEXT, b"before")
            await bad.send_raw(frame)
            code, _ = await bad.expect_close()
            assert code == expected
            assert srv.metrics()["closed_protocol"] == 1
            await assert_serving(srv, other, f"after {case}")
        finally:
            bad.close()
            other.close()

    run(body())


def test_invalid_utf8_split_across_fragments(run, server):
    async def body():
        srv = await server()
        ws = await RawWS.open(srv.port)
        try:
            # A valid start of a 3-byte sequence, then a byte that cannot continue it.
            await ws.send_frame(OP_TEXT, b"ab\xe2\x82", fin=False)
            await ws.send_frame(OP_CONTINUATION, b"(", fin=True)
            code, _ = await ws.expect_close()
            assert code == 1007
            assert srv.metrics()["closed_protocol"] == 1
        finally:
            ws.close()

    run(body())
