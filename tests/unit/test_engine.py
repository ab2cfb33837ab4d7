"""Engine: the sans-I/O connection protocol of both roles (``fastrpc/_engine.pxi``).

No sockets: bytes go in with ``receive_data``/``receive_eof`` and come out of
``data_to_send``; timers are ``sweep(now=...)`` with explicit uint32 millisecond stamps.
Two engines (a server and a client) are joined in memory by ``Link``, which moves bytes
both ways until both sides are quiet, and delivers EOF to a side whose peer ended (as
TCP would). Every engine made through the ``peer`` fixture is checked at teardown: once
every connection is aborted, its pool must have no block in use (no orphaned block).

Classes by subject; RFC sections where one applies:

* ``TestSweep*``: the timers (a port of every case of the deleted ``ConnTable.scan``
  tests onto the real ``Engine.sweep``).
* ``TestRFC6455_*``: masking (§5.1, §5.3), data frames (§5.6), ping/pong (§5.5.2-3),
  the closing handshake (§5.5.1, §7), the opening handshake seen by the client (§4.1).
* ``TestEveryByteSplit``: whole exchanges split at every byte and fed byte by byte.
* ``TestParserStateOutOfTheSlot``: the memory design (72-byte slot, parser state in a
  pooled block only while a frame or message is partial).
* ``TestRFC9112_HTTPPhase`` and ``TestRFC9112_3_RequestLine``: the HTTP phase.
* ``TestGenerations`` and ``TestMaskKeysAfterFork``.
"""
from __future__ import annotations

import ctypes
import functools
import os
import random
import re
import select
import struct
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrpc import _core
from fastrpc._core import (
    HTTP_BODY,
    HTTP_CLOSE,
    HTTP_DEFER,
    HTTP_KEEP_ALIVE,
    HTTP_UPGRADE,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    BufferPool,
    ConnTable,
    Engine,
    monotonic_ms,
)
from fastrpc.errors import TableFull
from fastrpc.handshake import accept_key
from reference_codec import RefParser, ref_close_payload, ref_encode, ref_mask

WRAP = 1 << 32
KiB = 1024
MiB = 1024 * KiB

# Slot states (SLOT_* in fastrpc/_core.pxd; a cdef enum is not importable).
FREE, HANDSHAKE, UPGRADING, OPEN, CLOSING, CONNECTING, HTTP_BODY_STATE, HTTP_WAIT = range(8)

WS_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3
UPGRADE_REQUEST = (
    b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: " + WS_KEY.encode() + b"\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
KEYS = [bytes([0x37, 0xFA, 0x21, 0x3D]), b"\x00\x00\x00\x00", b"\xff\x01\x80\x7f", b"abcd"]
LENGTHS = (0, 1, 125, 126, 127, 65535, 65536, 200000)

# A pool with small classes, so exact block accounting is easy to state (and 100,000
# pending close frames fit under the ceiling).
SMALL_CLASSES = (64, 256, 1 * KiB, 8 * KiB, 64 * KiB, 1 * MiB)


def small_pool(limit: int = 256 * MiB) -> BufferPool:
    return BufferPool(size_classes=SMALL_CLASSES, limit=limit)


def block(pool: BufferPool, n: int) -> int:
    """Bytes of the block the pool hands out for a request of n bytes."""
    return next(c for c in pool.size_classes if c >= n)


@functools.lru_cache(maxsize=64)
def pattern(n: int, seed: int = 0) -> bytes:
    """n bytes covering every byte value, deterministic."""
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


@functools.lru_cache(maxsize=64)
def text(n: int, seed: int = 0) -> bytes:
    """n bytes of ASCII text, deterministic."""
    return bytes(0x20 + (i * 7 + seed) % 95 for i in range(n))


def response_101(head: bytes) -> bytes:
    """The 101 for an upgrade request head (RFC 6455 §4.2.2), built by hand: no Date
    header, so two runs answer byte for byte the same."""
    key = re.search(rb"(?im)^sec-websocket-key:[ \t]*(\S+)", head).group(1).decode()
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n")


RESPONSE_101 = response_101(UPGRADE_REQUEST)


def http_response(status: int, body: bytes = b"", keep_alive: bool = True) -> bytes:
    return (f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n".encode()
            + (b"" if keep_alive else b"Connection: close\r\n") + b"\r\n" + body)


def masked(opcode: int, payload: bytes = b"", *, fin: bool = True, key: bytes = KEYS[0]) -> bytes:
    """A frame as a client sends it (RFC 6455 §5.3)."""
    return ref_encode(opcode, payload, fin=fin, mask_key=key)


def unmasked(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A frame as a server sends it."""
    return ref_encode(opcode, payload, fin=fin)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return ref_close_payload(code, reason)


class Wire(NamedTuple):
    """One frame as it is on the wire: the header fields and the unmasked payload."""

    fin: bool
    rsv: int
    opcode: int
    mask: bytes | None
    length_field: int  # the 7-bit length field: n, 126 or 127
    payload: bytes


def wire_frames(data: bytes) -> list[Wire]:
    """Split bytes into frames (RFC 6455 §5.2); every frame must be complete."""
    data = bytes(data)
    out = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 2, "truncated header"
        b0, b1 = data[pos], data[pos + 1]
        pos += 2
        n = b1 & 0x7F
        field = n
        if n == 126:
            n = int.from_bytes(data[pos:pos + 2], "big")
            pos += 2
        elif n == 127:
            n = int.from_bytes(data[pos:pos + 8], "big")
            pos += 8
        key = None
        if b1 & 0x80:
            key = data[pos:pos + 4]
            pos += 4
        payload = data[pos:pos + n]
        assert len(payload) == n, "truncated payload"
        pos += n
        out.append(Wire(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, key, field,
                        ref_mask(payload, key) if key is not None else payload))
    return out


def after_head(data: bytes) -> bytes:
    """The bytes after an HTTP head."""
    end = bytes(data).index(b"\r\n\r\n") + 4
    return bytes(data)[end:]


class Peer:
    """One Engine with every callback recorded, in order, in ``events``.

    Server role by default: an upgrade request is answered 101 (``response_101``),
    anything else is up to ``http(cid, head)``. Client role (``client=True``):
    ``on_response`` accepts a 101 carrying the accept key of ``WS_KEY``. ``reply``:
    what on_text / on_binary return (None: no reply). ``hooks``: payload -> callable(cid)
    run from the message handler before it records the message (to close, abort, etc.).
    ``on_event`` is recorded too, apart, in ``conn_events`` as ``(reason name, code,
    detail, ip, port)``: every test runs the event path.
    """

    def __init__(self, *, client: bool = False, pool: BufferPool | None = None,
                 max_open: int = 8, max_pending: int = 8, max_clients: int = 8,
                 max_per_ip: int = 256, **limits) -> None:
        self.pool = pool if pool is not None else BufferPool()
        self.client = client
        self.engine = Engine(self.pool, 0 if client else max_open, 0 if client else max_pending,
                             max_per_ip, max_clients=max_clients if client else 0, **limits)
        self.events: list[tuple] = []
        self.conn_events: list[tuple] = []
        self.http = None
        self.body = None
        self.accept = None
        self.reply = None
        self.hooks: dict[bytes, object] = {}
        e = self.engine
        e.on_handshake = self._on_handshake
        e.on_body = self._on_body
        e.on_response = self._on_response
        e.on_text = functools.partial(self._on_message, "text")
        e.on_binary = functools.partial(self._on_message, "binary")
        e.on_close = self._on_close
        e.on_event = self._on_event

    def _on_event(self, reason, code, detail, ip, port):
        self.conn_events.append((_core.COUNTER_NAMES[reason], code, detail, ip, port))

    def _on_handshake(self, cid, head, ip, port):
        self.events.append(("handshake", cid, head))
        if self.http is not None:
            return self.http(cid, head)
        return response_101(head), HTTP_UPGRADE

    def _on_body(self, cid, body):
        self.events.append(("body", cid, body))
        return self.body(cid, body)

    def _on_response(self, cid, head):
        self.events.append(("response", cid, head))
        if self.accept is not None:
            return self.accept(cid, head)
        return head.startswith(b"HTTP/1.1 101 ") and \
            f"Sec-WebSocket-Accept: {accept_key(WS_KEY)}\r\n".encode() in head

    def _on_message(self, kind, cid, payload):
        hook = self.hooks.get(bytes(payload))
        if hook is not None:
            hook(cid)
        self.events.append((kind, cid, payload))
        return self.reply(cid, payload) if self.reply is not None else None

    def _on_close(self, cid, code):
        self.events.append(("close", cid, code))

    def of(self, kind: str) -> list[tuple]:
        return [e[1:] for e in self.events if e[0] == kind]

    def counter(self, name: str) -> int:
        return self.engine.counters_dict()[name]


@pytest.fixture
def peer():
    """Make Peers; at teardown every connection is aborted and the pool must be empty."""
    made: list[Peer] = []

    def make(**kw) -> Peer:
        p = Peer(**kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.engine.abort_all()
        assert len(p.engine) == 0
        assert p.pool.bytes_in_use == 0, "a block outlived every connection"


class Link:
    """A server connection and a client connection joined in memory."""

    def __init__(self, server: Peer, client: Peer, *, request: bytes = UPGRADE_REQUEST,
                 handshake: bool = True) -> None:
        self.s, self.c = server, client
        self.scid = server.engine.open_connection("192.0.2.10", 50000)
        self.ccid = client.engine.open_connection("198.51.100.20", 443, request=request)
        self.c2s = bytearray()
        self.s2c = bytearray()
        self._eof = {"s": "", "c": ""}
        if handshake:
            self.pump()
            assert server.engine.state(self.scid) == OPEN
            assert client.engine.state(self.ccid) == OPEN

    def _move(self, name, src, scid, dst, dcid, wire) -> bool:
        if self._eof[name] == "due":
            # src closed its socket after writing; dst has written its own answer since
            # (as a driver writes after each read): now it reads EOF.
            self._eof[name] = "sent"
            dst.engine.receive_eof(dcid)
            return True
        out = src.engine.data_to_send(scid)
        moved = False
        if out:
            wire += out
            dst.engine.receive_data(dcid, out)
            moved = True
        if scid not in src.engine and not self._eof[name]:
            self._eof[name] = "due"
            moved = True
        return moved

    def pump(self, rounds: int = 1000) -> None:
        """Move bytes both ways until both sides are quiet (bounded)."""
        for _ in range(rounds):
            moved = self._move("c", self.c, self.ccid, self.s, self.scid, self.c2s)
            moved |= self._move("s", self.s, self.scid, self.c, self.ccid, self.s2c)
            if not moved:
                return
        raise AssertionError("the engines are still talking")

    def client_frames(self) -> list[Wire]:
        return wire_frames(self.c2s[len(UPGRADE_REQUEST):])

    def server_frames(self) -> list[Wire]:
        return wire_frames(after_head(self.s2c))


def upgrade(p: Peer, ip: str = "192.0.2.1", port: int = 40000) -> int:
    """A server connection of ``p`` taken through its handshake by a scripted client."""
    cid = p.engine.open_connection(ip, port)
    assert p.engine.receive_data(cid, UPGRADE_REQUEST)
    assert p.engine.data_to_send(cid) == RESPONSE_101
    assert p.engine.state(cid) == OPEN
    return cid


def ping_of(data: bytes) -> bytes:
    """The payload of the single unmasked ping in ``data``."""
    [f] = wire_frames(data)
    assert (f.fin, f.opcode, f.mask) == (True, OP_PING, None)
    return f.payload


def close_of(data: bytes) -> tuple[int, bytes]:
    """(code, reason) of the single close frame in ``data`` (any masking)."""
    [f] = wire_frames(data)
    assert (f.fin, f.opcode) == (True, OP_CLOSE)
    return int.from_bytes(f.payload[:2], "big"), f.payload[2:]


def stamp(now: int) -> bytes:
    """The payload of a keepalive ping sent by sweep(now=now): the stamp, native order."""
    return struct.pack("=I", now % WRAP)


# --- timers: Engine.sweep ----------------------------------------------------------------
#
# The stamps: last_message (a whole message: idle timeout), last_receive (any bytes: ping
# interval), ping_sent (the ping, the close, or the start of the HTTP phase: pong, close
# and handshake timeouts). A new connection's stamps are monotonic_ms() at open; tests
# that need exact stamps pin them with the engine's ConnTable (touch / mark_ping_sent).
# Every comparison is elapsed(now, stamp) >= timeout on uint32 differences.

LONG = 1_000_000  # a timeout far longer than any pause of the test between two clock reads


def http_keep_alive(p):
    p.http = lambda cid, head: (http_response(200), HTTP_KEEP_ALIVE)
    cid = p.engine.open_connection()
    p.engine.receive_data(cid, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
    assert p.engine.data_to_send(cid) == http_response(200)
    return cid


def http_body(p):
    p.http = lambda cid, head: (100, HTTP_BODY)
    cid = p.engine.open_connection()
    p.engine.receive_data(cid, b"POST /a HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
    assert p.engine.state(cid) == HTTP_BODY_STATE
    return cid


def client_waiting(p, partial=b""):
    cid = p.engine.open_connection("192.0.2.1", 80, request=UPGRADE_REQUEST)
    assert p.engine.data_to_send(cid) == UPGRADE_REQUEST
    if partial:
        p.engine.receive_data(cid, partial)
    assert p.engine.state(cid) == HANDSHAKE
    return cid


HANDSHAKE_SETUPS = {
    "no byte yet": (False, lambda p: p.engine.open_connection()),
    "partial head": (False, lambda p: (c := p.engine.open_connection(),
                                       p.engine.receive_data(c, UPGRADE_REQUEST[:40]))[0]),
    "keep-alive wait": (False, http_keep_alive),
    "request body": (False, http_body),
    "client waiting for the 101": (True, client_waiting),
    "client with half a 101": (True, lambda p: client_waiting(p, RESPONSE_101[:30])),
}


class TestSweepHandshakeTimeout:
    """The HTTP phase of both roles is bounded by handshake_timeout_ms from its start
    (accept, connect, or the last keep-alive response); bytes arriving meanwhile do not
    extend it (a slow head is not a reason to wait longer)."""

    @pytest.mark.parametrize("name", list(HANDSHAKE_SETUPS))
    def test_dropped_after_the_timeout(self, peer, name):
        client, setup = HANDSHAKE_SETUPS[name]
        p = peer(client=client)
        t0 = monotonic_ms()
        cid = setup(p)
        t1 = monotonic_ms()
        state = p.engine.state(cid)
        p.engine.sweep(handshake_timeout_ms=LONG, now=(t0 + LONG - 1) % WRAP)
        assert p.engine.state(cid) == state
        p.engine.sweep(handshake_timeout_ms=LONG, now=(t1 + LONG) % WRAP)
        assert cid not in p.engine and len(p.engine) == 0
        assert p.counter("handshake_timeout") == 1
        assert p.engine.data_to_send(cid) == b""
        assert p.pool.bytes_in_use == 0
        if client:
            assert p.of("close") == [(cid, 1006)]
            assert p.counter("client_failed") == 1 and p.engine.n_clients == 0
        else:
            assert p.of("close") == []  # never upgraded: no on_close
            assert p.engine.n_pending == 0

    def test_bytes_received_do_not_extend_it(self, peer):
        p = peer()
        cid = p.engine.open_connection()
        p.engine.table.mark_ping_sent(cid, 1000)  # the start of the HTTP phase
        for i in range(0, 60, 6):
            p.engine.receive_data(cid, UPGRADE_REQUEST[i:i + 6])
            p.engine.sweep(handshake_timeout_ms=500, now=1499)
            assert p.engine.state(cid) == HANDSHAKE
        p.engine.sweep(handshake_timeout_ms=500, now=1500)
        assert cid not in p.engine

    def test_a_deferred_request_has_no_timeout_here(self, peer):
        p = peer()
        p.http = lambda cid, head: (None, HTTP_DEFER)
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, b"GET / HTTP/1.1\r\n\r\n")
        assert p.engine.state(cid) == HTTP_WAIT
        p.engine.sweep(handshake_timeout_ms=1, idle_timeout_ms=1, ping_interval_ms=1,
                       pong_timeout_ms=1, close_timeout_ms=1, now=(monotonic_ms() + LONG) % WRAP)
        assert p.engine.state(cid) == HTTP_WAIT
        assert p.engine.respond(cid, http_response(204), keep_alive=False)
        assert p.engine.data_to_send(cid) == http_response(204)
        assert cid not in p.engine

    def test_open_connections_are_not_timed_as_handshakes(self, peer):
        p = peer()
        cid = upgrade(p)
        p.engine.sweep(handshake_timeout_ms=1, now=(monotonic_ms() + LONG) % WRAP)
        assert p.engine.state(cid) == OPEN and p.counter("handshake_timeout") == 0

    def test_stamp_at_the_top_of_the_range(self, peer):
        p = peer()
        cid = p.engine.open_connection()
        p.engine.table.mark_ping_sent(cid, WRAP - 1)
        p.engine.sweep(handshake_timeout_ms=2, now=WRAP - 1)
        p.engine.sweep(handshake_timeout_ms=2, now=0)  # 1 ms later, across the wrap
        assert p.engine.state(cid) == HANDSHAKE
        p.engine.sweep(handshake_timeout_ms=2, now=1)
        assert cid not in p.engine and p.counter("handshake_timeout") == 1


class TestSweepIdle:
    """idle_timeout_ms without a whole message → our close frame 1001 "idle timeout";
    the connection is CLOSING until the peer's close frame (or the close timeout)."""

    def test_idle(self, peer):
        p = peer()
        e = p.engine
        a, b = upgrade(p), upgrade(p)
        e.table.touch(a, 1000)
        e.table.touch(b, 1000)
        e.table.touch(b, 5000)  # a whole message
        e.table.touch(a, 5500, message=False)  # bytes only: does not reset idleness
        e.sweep(idle_timeout_ms=10_000, now=1000 + 9_999)
        assert e.data_to_send(a) == e.data_to_send(b) == b""
        e.sweep(idle_timeout_ms=10_000, now=1000 + 10_000)
        assert close_of(e.data_to_send(a)) == (1001, b"idle timeout")
        assert e.data_to_send(b) == b""
        assert (e.state(a), e.state(b)) == (CLOSING, OPEN)
        assert p.counter("closed_idle") == 1
        e.table.mark_ping_sent(a, 11_000)  # pin the close stamp (sweep wrote the real clock)
        e.sweep(idle_timeout_ms=10_000, now=5000 + 10_000)
        assert close_of(e.data_to_send(b)) == (1001, b"idle timeout")
        assert e.data_to_send(a) == b""  # closing already: not closed twice
        assert (e.state(a), e.state(b)) == (CLOSING, CLOSING)
        assert p.counter("closed_idle") == 2
        # Closing is not removal: each ends with the peer's close frame.
        assert len(e) == 2 and p.of("close") == []
        for cid in (a, b):
            e.receive_data(cid, masked(OP_CLOSE, close_payload(1001)))
            assert e.data_to_send(cid) == b""  # our close was sent: nothing to echo
            assert cid not in e
        assert p.of("close") == [(a, 1001), (b, 1001)]
        assert e.n_open == 0 and p.counter("closed_peer") == 0

    def test_a_whole_message_resets_idleness(self, peer):
        p = peer()
        e = p.engine
        cid = upgrade(p)
        t0 = monotonic_ms()
        e.receive_data(cid, masked(OP_TEXT, b"alive"))
        t1 = monotonic_ms()
        e.sweep(idle_timeout_ms=LONG, now=(t0 + LONG - 1) % WRAP)
        assert e.state(cid) == OPEN
        e.sweep(idle_timeout_ms=LONG, now=(t1 + LONG) % WRAP)
        assert e.state(cid) == CLOSING

    def test_part_of_a_message_does_not_reset_idleness(self, peer):
        p = peer()
        e = p.engine
        cid = upgrade(p)
        e.table.touch(cid, 0)
        e.receive_data(cid, masked(OP_TEXT, b"a", fin=False))  # bytes, no whole message
        e.sweep(idle_timeout_ms=LONG, now=LONG)
        assert close_of(e.data_to_send(cid))[0] == 1001

    def test_client_connections_too(self, peer):
        p = peer(client=True)
        cid = client_waiting(p)
        p.engine.receive_data(cid, RESPONSE_101)
        p.engine.table.touch(cid, 0)
        p.engine.sweep(idle_timeout_ms=100, now=100)
        [f] = wire_frames(p.engine.data_to_send(cid))
        assert f.opcode == OP_CLOSE and f.mask is not None  # a client's frames are masked
        assert f.payload == close_payload(1001, b"idle timeout")

    def test_the_idle_close_is_stamped_with_the_sweep_clock(self, peer):
        p = peer()
        e = p.engine
        cid = upgrade(p)
        t = (monotonic_ms() + (1 << 31)) % WRAP  # a clock far from the real one
        e.table.touch(cid, t)
        e.sweep(idle_timeout_ms=1000, close_timeout_ms=5000, now=(t + 1000) % WRAP)
        assert e.state(cid) == CLOSING
        e.sweep(idle_timeout_ms=1000, close_timeout_ms=5000, now=(t + 1001) % WRAP)
        assert e.state(cid) == CLOSING  # 1 ms into a 5 s close timeout


class TestSweepPing:
    """ping_interval_ms without any received byte and no ping outstanding → a ping whose
    4-byte payload is the sweep's clock; it is outstanding until any byte arrives."""

    def test_ping_due_marks_the_ping_sent(self, peer):
        p = peer()
        e = p.engine
        a, b = upgrade(p), upgrade(p)
        e.table.touch(a, 0)
        e.table.touch(b, 0)
        e.table.touch(b, 2000, message=False)  # any received bytes postpone the ping
        e.sweep(ping_interval_ms=3000, now=2999)
        assert e.data_to_send(a) == e.data_to_send(b) == b""
        e.sweep(ping_interval_ms=3000, now=3000)
        assert ping_of(e.data_to_send(a)) == stamp(3000)
        assert e.data_to_send(b) == b""
        assert e.table.info(a)["ping_outstanding"] is True
        assert e.table.info(b)["ping_outstanding"] is False
        assert p.counter("pings_sent") == 1
        # Outstanding: not due again.
        e.sweep(ping_interval_ms=3000, now=5001)
        assert ping_of(e.data_to_send(b)) == stamp(5001)
        assert e.data_to_send(a) == b""
        e.sweep(ping_interval_ms=3000, now=9000)
        assert e.data_to_send(a) == e.data_to_send(b) == b""
        assert p.counter("pings_sent") == 2
        assert (e.state(a), e.state(b)) == (OPEN, OPEN)

    def test_any_received_byte_ends_the_outstanding_ping(self, peer):
        p = peer()
        e = p.engine
        cid = upgrade(p)
        e.table.touch(cid, 0)
        e.sweep(ping_interval_ms=10, now=10)
        payload = ping_of(e.data_to_send(cid))
        e.receive_data(cid, masked(OP_PONG, payload)[:3])  # part of the pong is enough
        assert e.table.info(cid)["ping_outstanding"] is False
        e.receive_data(cid, masked(OP_PONG, payload)[3:])
        assert e.table.info(cid)["ping_outstanding"] is False


class TestSweepPongTimeout:
    """A ping outstanding for pong_timeout_ms → dropped: the slot is freed at once,
    on_close(cid, 1006), counter closed_pong_timeout."""

    def test_dead_after_pong_timeout(self, peer):
        p = peer()
        e = p.engine
        a, b = upgrade(p), upgrade(p)
        e.table.touch(a, 0)
        e.table.touch(b, 0)
        e.sweep(ping_interval_ms=30_000, pong_timeout_ms=10_000, now=30_001)
        pa, pb = ping_of(e.data_to_send(a)), ping_of(e.data_to_send(b))
        assert pa == pb == stamp(30_001) and p.counter("pings_sent") == 2
        e.receive_data(b, masked(OP_PONG, pb))  # b answers
        assert e.table.info(b)["ping_outstanding"] is False
        e.table.touch(b, 31_000, message=False)  # pin the receive stamp to the test clock
        e.sweep(ping_interval_ms=30_000, pong_timeout_ms=10_000, now=40_000)  # 9,999 ms
        assert e.state(a) == OPEN and p.of("close") == []
        e.sweep(ping_interval_ms=30_000, pong_timeout_ms=10_000, now=40_001)  # 10,000 ms
        assert a not in e and e.data_to_send(a) == b""
        assert p.of("close") == [(a, 1006)]
        assert p.counter("closed_pong_timeout") == 1
        assert e.state(b) == OPEN and e.data_to_send(b) == b""
        # Dropped once: later sweeps find nothing more.
        e.sweep(pong_timeout_ms=10_000, now=40_003)
        e.sweep(ping_interval_ms=30_000, now=40_003)
        assert p.counter("closed_pong_timeout") == 1 and p.of("close") == [(a, 1006)]
        assert e.data_to_send(b) == b"" and e.n_open == 1

    def test_mark_ping_sent_counts_for_pong_timeout(self, peer):
        p = peer()
        e = p.engine
        a = upgrade(p)
        e.table.mark_ping_sent(a, 100)
        assert e.table.info(a)["ping_outstanding"] is True
        e.sweep(pong_timeout_ms=500, now=100 + 499)
        assert e.state(a) == OPEN
        e.sweep(pong_timeout_ms=500, now=100 + 500)
        assert a not in e and p.of("close") == [(a, 1006)]

    def test_the_peer_sees_eof(self, peer):
        link = Link(peer(), peer(client=True))
        link.s.engine.table.mark_ping_sent(link.scid, 0)
        link.s.engine.sweep(pong_timeout_ms=1, now=1)
        link.pump()
        assert link.s.of("close") == [(link.scid, 1006)]
        assert link.c.of("close") == [(link.ccid, 1006)]
        assert link.c.counter("closed_eof") == 1


class TestSweepCloseTimeout:
    """Our close frame unanswered for close_timeout_ms → dropped, on_close(cid, 1006)."""

    def test_close_timeout(self, peer):
        p = peer()
        e = p.engine
        cid = upgrade(p)
        t0 = monotonic_ms()
        assert e.close(cid, 1000)
        t1 = monotonic_ms()
        assert close_of(e.data_to_send(cid)) == (1000, b"")
        e.sweep(close_timeout_ms=LONG, now=(t0 + LONG - 1) % WRAP)
        assert e.state(cid) == CLOSING
        e.sweep(close_timeout_ms=LONG, now=(t1 + LONG) % WRAP)
        assert cid not in e
        assert p.of("close") == [(cid, 1006)]
        assert p.counter("closed_close_timeout") == 1 and p.counter("closed_by_server") == 1

    def test_across_the_wrap(self, peer):
        p = peer()
        e = p.engine
        cid = upgrade(p)
        e.close(cid)
        e.data_to_send(cid)
        e.table.mark_ping_sent(cid, WRAP - 10)  # pin the close stamp
        for now in (WRAP - 10, WRAP - 1, 0, 89):  # up to 99 ms
            e.sweep(close_timeout_ms=100, now=now)
            assert e.state(cid) == CLOSING
        e.sweep(close_timeout_ms=100, now=90)
        assert cid not in e and p.of("close") == [(cid, 1006)]

    def test_a_refusal_never_written_is_dropped_too(self, peer):
        p = peer()
        p.http = lambda cid, head: (http_response(404), HTTP_CLOSE)
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, b"GET /x HTTP/1.1\r\n\r\n")
        assert p.engine.state(cid) == CLOSING  # the answer waits for data_to_send
        p.engine.sweep(close_timeout_ms=LONG, now=(monotonic_ms() + 2 * LONG) % WRAP)
        assert cid not in p.engine and p.of("close") == []
        assert p.counter("closed_close_timeout") == 1


def zero_setup(check: str, p: Peer) -> tuple[int, object]:
    """A connection that the check would act on at now = 1 << 30; and a predicate telling
    whether it acted."""
    e = p.engine
    if check == "handshake_timeout_ms":
        cid = e.open_connection()
        e.table.mark_ping_sent(cid, 0)
        return cid, lambda: cid not in e
    cid = upgrade(p)
    e.table.touch(cid, 0)
    if check == "idle_timeout_ms":
        return cid, lambda: e.state(cid) == CLOSING
    if check == "ping_interval_ms":
        return cid, lambda: e.data_to_send(cid) != b""
    if check == "pong_timeout_ms":
        e.table.mark_ping_sent(cid, 0)
        return cid, lambda: cid not in e
    assert check == "close_timeout_ms"
    e.close(cid)
    e.data_to_send(cid)
    e.table.mark_ping_sent(cid, 0)
    return cid, lambda: cid not in e


ZERO_CHECKS = [
    "handshake_timeout_ms", "idle_timeout_ms", "ping_interval_ms", "pong_timeout_ms",
]


class TestSweepZeroDisables:
    @pytest.mark.parametrize("check", ZERO_CHECKS)
    def test_zero_disables_each_check(self, peer, check):
        later = 1 << 30
        p = peer()
        _, acted = zero_setup(check, p)
        others = {k: 0 for k in ("handshake_timeout_ms", "idle_timeout_ms",
                                 "ping_interval_ms", "pong_timeout_ms")}
        others["close_timeout_ms"] = 1 << 31  # the default 5000 would act on a CLOSING one
        p.engine.sweep(**{**others, check: 0}, now=later)
        assert not acted()
        p.engine.sweep(**{**others, check: 1000}, now=later)
        assert acted()

    def test_close_timeout_zero_drops_at_the_next_sweep(self, peer):
        """close_timeout_ms is the one check 0 does not disable: 0 means "do not wait for
        the peer's close frame" (Limits.close_timeout=0); "forever" is 2**32 - 1."""
        p = peer()
        cid, acted = zero_setup("close_timeout_ms", p)
        p.engine.sweep(close_timeout_ms=2**32 - 1, now=1 << 30)
        assert not acted()
        p.engine.sweep(close_timeout_ms=0, now=1 << 30)
        assert acted() and p.counter("closed_close_timeout") == 1

    def test_nothing_enabled_nothing_happens(self, peer):
        p = peer()
        e = p.engine
        a, b = upgrade(p), upgrade(p)
        h = e.open_connection()
        for cid in (a, b):
            e.table.touch(cid, 0)
        e.table.mark_ping_sent(b, 0)
        before = e.counters_dict()
        e.sweep(now=1 << 31)
        assert e.counters_dict() == before
        assert [e.state(c) for c in (a, b, h)] == [OPEN, OPEN, HANDSHAKE]
        assert e.data_to_send(a) == e.data_to_send(b) == e.data_to_send(h) == b""


class TestSweepWrapAround:
    """The uint32 ms stamps wrap every 49.7 days; every comparison is on differences."""

    NEAR = WRAP - 500

    def three(self, p):
        e = p.engine
        a, b, c = upgrade(p), upgrade(p), upgrade(p)
        e.table.touch(a, self.NEAR)  # 500 ms before the wrap
        e.table.touch(b, WRAP - 1)
        e.table.touch(c, self.NEAR)
        e.table.touch(c, 100)  # after the wrap
        return a, b, c  # at now = 1000: 1500, 1001 and 900 ms old

    @pytest.mark.parametrize("timeout,expected", [(1600, ""), (1400, "a"), (1001, "ab"),
                                                  (950, "ab"), (900, "abc")])
    def test_idle(self, peer, timeout, expected):
        p = peer()
        cids = dict(zip("abc", self.three(p)))
        p.engine.sweep(idle_timeout_ms=timeout, now=1000)
        closed = "".join(k for k, c in cids.items() if p.engine.state(c) == CLOSING)
        assert closed == expected
        for k, c in cids.items():
            out = p.engine.data_to_send(c)
            assert (close_of(out)[0] if out else None) == (1001 if k in expected else None)

    @pytest.mark.parametrize("interval,expected", [(1600, ""), (1200, "a"), (1000, "ab")])
    def test_ping(self, peer, interval, expected):
        p = peer()
        cids = dict(zip("abc", self.three(p)))
        p.engine.sweep(ping_interval_ms=interval, now=1000)
        for k, c in cids.items():
            out = p.engine.data_to_send(c)
            assert (ping_of(out) if out else None) == (stamp(1000) if k in expected else None)
            assert p.engine.table.info(c)["ping_outstanding"] is (k in expected)

    def test_pong_after_a_ping_sent_before_the_wrap(self, peer):
        p = peer()
        a, _, _ = self.three(p)
        p.engine.sweep(ping_interval_ms=1200, now=1000)
        assert ping_of(p.engine.data_to_send(a)) == stamp(1000)
        p.engine.sweep(pong_timeout_ms=300, now=1000 + 299)
        assert p.engine.state(a) == OPEN
        p.engine.sweep(pong_timeout_ms=300, now=1000 + 300)
        assert a not in p.engine and p.of("close") == [(a, 1006)]

    def test_wrap_around_ping_and_pong(self, peer):
        p = peer()
        e = p.engine
        a = upgrade(p)
        e.table.touch(a, WRAP - 300)
        e.sweep(ping_interval_ms=1000, now=WRAP - 1)
        e.sweep(ping_interval_ms=1000, now=699)  # 999 ms
        assert e.data_to_send(a) == b""
        e.sweep(ping_interval_ms=1000, now=700)  # 1000 ms
        assert ping_of(e.data_to_send(a)) == stamp(700)
        e.table.touch(a, 800, message=False)
        e.table.mark_ping_sent(a, WRAP - 100)
        e.sweep(pong_timeout_ms=200, now=WRAP - 1)
        e.sweep(pong_timeout_ms=200, now=99)  # 199 ms
        assert e.state(a) == OPEN
        e.sweep(pong_timeout_ms=200, now=100)  # 200 ms
        assert a not in e and p.counter("closed_pong_timeout") == 1

    def test_stamps_at_the_top_of_the_range(self, peer):
        p = peer()
        e = p.engine
        a = upgrade(p)
        e.table.touch(a, WRAP - 1)
        assert e.table.info(a)["last_message"] == WRAP - 1
        e.sweep(idle_timeout_ms=1, now=WRAP - 1)
        assert e.state(a) == OPEN
        e.sweep(idle_timeout_ms=1, now=0)
        assert close_of(e.data_to_send(a))[0] == 1001


class TestSweepLargeTables:
    def test_sweep_over_100000_slots(self, peer):
        n = 100_000
        p = peer(pool=small_pool(), max_open=n, max_pending=n, max_per_ip=n)
        e = p.engine
        base = WRAP - 20_000  # the stamps cross the wrap
        stamps = {}
        cids = []
        for i in range(n):
            cid = upgrade(p, port=i % 65536)
            t = (base + (i % 1000) * 37) % WRAP
            e.table.touch(cid, t)
            cids.append(cid)
            stamps[cid] = t
        assert len(e) == n == e.n_open
        removed = set(cids[::7]) | {cids[0], cids[-1]}
        for cid in removed:
            assert e.abort(cid)
        live = [c for c in cids if c not in removed]
        pinged = set(live[::11])
        for cid in pinged:
            e.table.mark_ping_sent(cid, (base + 30_000) % WRAP)
        now = (base + 40_000) % WRAP
        closes_before = len(p.of("close"))
        # Pong timeouts first: the only check that removes at once.
        e.sweep(pong_timeout_ms=10_001, now=now)
        assert len(e) == len(live)
        e.sweep(pong_timeout_ms=9_999, now=now)
        assert {c for c, _ in p.of("close")[closes_before:]} == pinged
        assert p.counter("closed_pong_timeout") == len(pinged)
        assert all(c not in e for c in pinged)
        live = [c for c in live if c not in pinged]
        assert len(e) == len(live)
        # Pings.
        ping_interval = 25_001
        e.sweep(ping_interval_ms=ping_interval, now=now)
        expected_ping = {c for c in live if (now - stamps[c]) % WRAP >= ping_interval}
        assert 0 < len(expected_ping) < len(live)
        got = {c for c in live if e.data_to_send(c)}
        assert got == expected_ping and p.counter("pings_sent") == len(expected_ping)
        e.sweep(ping_interval_ms=ping_interval, now=now)
        assert p.counter("pings_sent") == len(expected_ping)  # all outstanding now
        # Idle closes.
        idle_timeout = 28_501  # between two stamps: no connection sits on the boundary
        e.sweep(idle_timeout_ms=idle_timeout, now=now)
        expected_idle = {c for c in live if (now - stamps[c]) % WRAP >= idle_timeout}
        assert 0 < len(expected_idle) < len(live)
        closing = set()
        for c in live:
            out = e.data_to_send(c)
            if out:
                assert close_of(out) == (1001, b"idle timeout")
                closing.add(c)
        assert closing == expected_idle
        assert {c for c in live if e.state(c) == CLOSING} == expected_idle
        assert p.counter("closed_idle") == len(expected_idle)
        assert p.counter("closed_nomem") == 0 and len(e) == len(live)

    @pytest.mark.parametrize("state", ["open", "handshake"])
    def test_a_connection_in_the_last_slot_alone_is_found(self, peer, state):
        n = 100_000
        p = peer(pool=small_pool(), max_open=1, max_pending=n)
        e = p.engine
        cids = [e.open_connection(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}") for i in range(n)]
        assert {c & 0xFFFFFFFF for c in cids} == set(range(n))
        for cid in cids[:-1]:
            e.abort(cid)
        last = cids[-1]
        assert last & 0xFFFFFFFF == n - 1 and len(e) == 1
        if state == "open":
            assert e.receive_data(last, UPGRADE_REQUEST)
            assert e.data_to_send(last) == RESPONSE_101
            e.table.touch(last, 0)
            e.sweep(idle_timeout_ms=50, now=100)
            assert close_of(e.data_to_send(last))[0] == 1001
        else:
            e.table.mark_ping_sent(last, 0)
            e.sweep(handshake_timeout_ms=50, now=100)
            assert last not in e and p.counter("handshake_timeout") == 1


# --- a server engine and a client engine talking in memory ------------------------------

@pytest.fixture
def link(peer):
    return Link(peer(), peer(client=True))


class TestRFC6455_4_1_OpeningHandshake:
    """The client sends its upgrade request; the server's response head goes to
    on_response, whose answer opens or drops the client connection."""

    def test_handshake(self, link):
        assert bytes(link.c2s) == UPGRADE_REQUEST
        assert bytes(link.s2c) == RESPONSE_101
        assert link.s.of("handshake") == [(link.scid, UPGRADE_REQUEST)]
        assert link.c.of("response") == [(link.ccid, RESPONSE_101)]
        assert link.s.counter("upgraded") == 1 and link.c.counter("client_opened") == 1
        assert (link.s.engine.n_open, link.s.engine.n_pending, link.c.engine.n_clients) == (1, 0, 1)
        assert link.s.engine.connections() == [link.scid]
        assert link.c.engine.connections() == []  # server connections only
        assert link.s.pool.bytes_in_use == link.c.pool.bytes_in_use == 0

    @pytest.mark.parametrize("how", ["false", "raises"])
    def test_on_response_refusing_drops_the_client(self, peer, how, caplog):
        s, c = peer(), peer(client=True)

        def refuse(cid, head):
            if how == "raises":
                raise RuntimeError("bad accept key")
            return False

        c.accept = refuse
        link = Link(s, c, handshake=False)
        link.pump()
        assert link.ccid not in c.engine and c.engine.n_clients == 0
        assert c.of("close") == [(link.ccid, 1006)]
        assert c.counter("client_failed") == 1 and c.counter("client_opened") == 0
        # The client closed its socket: the server, upgraded already, reads EOF.
        assert s.of("close") == [(link.scid, 1006)] and s.counter("closed_eof") == 1
        if how == "raises":
            assert "on_response" in caplog.text

    def test_server_refusal_reaches_on_response(self, peer):
        s, c = peer(), peer(client=True)
        refusal = http_response(403, b"no\n", keep_alive=False)
        s.http = lambda cid, head: (refusal, HTTP_CLOSE)
        link = Link(s, c, handshake=False)
        link.pump()
        assert bytes(link.s2c) == refusal
        assert c.of("response") == [(link.ccid, refusal[:-len(b"no\n")])]
        assert c.of("close") == [(link.ccid, 1006)] and c.counter("client_failed") == 1
        assert s.of("close") == [] and s.counter("refused_http") == 1
        assert len(s.engine) == len(c.engine) == 0

    def test_data_sent_right_after_the_101_in_the_same_bytes(self, peer):
        s, c = peer(), peer(client=True)
        link = Link(s, c, handshake=False)
        link.c.engine.data_to_send(link.ccid)  # the request, delivered by hand
        s.engine.receive_data(link.scid, UPGRADE_REQUEST)
        assert s.engine.send(link.scid, b"first")
        assert s.engine.send(link.scid, b"\x00\x01", binary=True)
        out = s.engine.data_to_send(link.scid)
        assert out == RESPONSE_101 + unmasked(OP_TEXT, b"first") + unmasked(OP_BINARY, b"\x00\x01")
        c.engine.receive_data(link.ccid, out)  # one read: the head and two frames
        assert c.events == [("response", link.ccid, RESPONSE_101), ("text", link.ccid, b"first"),
                            ("binary", link.ccid, b"\x00\x01")]

    def test_frames_sent_right_after_the_request_in_the_same_bytes(self, peer):
        s = peer()
        cid = s.engine.open_connection()
        s.engine.receive_data(cid, UPGRADE_REQUEST + masked(OP_TEXT, b"eager"))
        assert s.events == [("handshake", cid, UPGRADE_REQUEST), ("text", cid, b"eager")]

    def test_a_large_message_right_after_the_101(self, peer):
        c = peer(client=True)
        cid = c.engine.open_connection(request=UPGRADE_REQUEST)
        c.engine.data_to_send(cid)
        c.engine.receive_data(cid, RESPONSE_101 + unmasked(OP_BINARY, pattern(65536)))
        assert c.of("binary") == [(cid, pattern(65536))]

    def test_a_large_frame_right_after_the_request(self, peer):
        s = peer()
        cid = s.engine.open_connection()
        s.engine.receive_data(cid, UPGRADE_REQUEST + masked(OP_TEXT, text(10_000)))
        assert s.of("text") == [(cid, text(10_000))]

    def test_send_before_the_101_is_refused(self, peer):
        c = peer(client=True)
        cid = c.engine.open_connection(request=UPGRADE_REQUEST)
        assert c.engine.send(cid, b"early") is False
        assert c.engine.data_to_send(cid) == UPGRADE_REQUEST

    def test_client_table_full(self, peer):
        c = peer(client=True, max_clients=2)
        c.engine.open_connection(request=UPGRADE_REQUEST)
        c.engine.open_connection(request=UPGRADE_REQUEST)
        with pytest.raises(TableFull):
            c.engine.open_connection(request=UPGRADE_REQUEST)
        with pytest.raises(TableFull):
            c.engine.open_connection()  # no server role in a client-only engine
        assert c.engine.n_clients == 2

    def test_a_request_that_cannot_be_queued_leaves_no_trace(self, peer):
        c = peer(client=True, max_pending_output=100)
        before = c.engine.counters_dict()
        with pytest.raises((ValueError, MemoryError)):
            c.engine.open_connection(request=b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 40 + b"\r\n")
        assert len(c.engine) == 0 and c.engine.n_clients == 0
        assert c.events == []  # no on_close for an id the caller never had
        assert c.engine.counters_dict() == before


class TestRFC6455_5_1_Masking:
    """§5.1: a client masks every frame it sends, a server masks none; §5.3: each frame
    with a fresh, unpredictable key; §5.1: a peer that breaks the rule is failed (1002)."""

    def test_client_frames_are_masked_each_with_its_own_key(self, link):
        for i in range(16):
            assert link.c.engine.send(link.ccid, text(i * 9), binary=bool(i & 1))
        link.c.engine.sweep(ping_interval_ms=1, now=(monotonic_ms() + LONG) % WRAP)  # a ping
        link.pump()
        assert link.c.engine.close(link.ccid, 1000)
        link.pump()
        frames = link.client_frames()
        assert [f.opcode for f in frames] == [OP_BINARY if i & 1 else OP_TEXT for i in range(16)] \
            + [OP_PING, OP_CLOSE]
        assert all(f.mask is not None for f in frames)
        keys = [f.mask for f in frames]
        assert len(set(keys)) == len(keys)
        assert [f.payload for f in frames[:16]] == [text(i * 9) for i in range(16)]
        # The reference parser in the server role agrees, byte for byte.
        events = RefParser(client=False).feed(bytes(link.c2s[len(UPGRADE_REQUEST):]))
        assert [e[1] for e in events[:16]] == [text(i * 9) for i in range(16)]

    def test_server_frames_are_not_masked(self, link):
        for i in range(4):
            link.s.engine.send(link.scid, text(i * 50), binary=bool(i & 1))
        link.s.engine.sweep(ping_interval_ms=1, now=(monotonic_ms() + LONG) % WRAP)
        link.pump()
        link.s.engine.close(link.scid, 1001)
        link.pump()
        frames = link.server_frames()
        assert [f.opcode for f in frames] == [OP_TEXT, OP_BINARY, OP_TEXT, OP_BINARY, OP_PING, OP_CLOSE]
        assert all(f.mask is None and f.rsv == 0 and f.fin for f in frames)
        assert [m[1:] for m in link.c.events if m[0] in ("text", "binary")] == \
            [(link.ccid, text(i * 50)) for i in range(4)]

    def test_sends_held_and_released(self, link):
        """``hold_sends`` nests as a flag (False: held already, do not release);
        what is sent meanwhile comes out whole, in order, after ``release_sends``."""
        e = link.c.engine
        assert e.hold_sends() is True
        assert e.hold_sends() is False
        assert e.send(link.ccid, b"one") and e.send(link.ccid, b"two")
        e.release_sends()
        assert e.hold_sends() is True
        e.release_sends()
        link.pump()
        assert [m[1:] for m in link.s.events if m[0] == "text"] == [(link.scid, b"one"), (link.scid, b"two")]

    def test_a_masked_server_frame_is_refused_by_the_client_with_1002(self, link):
        link.c.engine.receive_data(link.ccid, masked(OP_TEXT, b"masked"))
        assert link.c.of("text") == []
        link.pump()
        assert close_of(bytes(link.c2s[len(UPGRADE_REQUEST):])) == (1002, b"frame masked")
        assert link.c.of("close") == [(link.ccid, 1002)]
        assert link.c.counter("closed_protocol") == 1
        assert link.s.of("close") == [(link.scid, 1002)]  # the server read the client's close
        assert len(link.s.engine) == len(link.c.engine) == 0

    def test_an_unmasked_client_frame_is_refused_by_the_server_with_1002(self, link):
        link.s.engine.receive_data(link.scid, unmasked(OP_TEXT, b"plain"))
        assert link.s.of("text") == []
        link.pump()
        assert close_of(after_head(link.s2c)) == (1002, b"frame not masked")
        assert link.s.of("close") == [(link.scid, 1002)] and link.c.of("close") == [(link.ccid, 1002)]
        assert link.s.counter("closed_protocol") == 1


def header_size(n: int, mask: bool) -> int:
    return (2 if n < 126 else 4 if n < 65536 else 10) + (4 if mask else 0)


class TestRFC6455_5_6_DataFrames:
    """Text and binary messages both ways at the length-encoding edges (§5.2: 7-bit,
    16-bit and 64-bit lengths, each in its minimal form)."""

    @pytest.mark.parametrize("n", LENGTHS)
    @pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
    @pytest.mark.parametrize("direction", ["c2s", "s2c"])
    def test_message(self, link, direction, binary, n):
        payload = pattern(n) if binary else text(n)
        src, dst = (link.c, link.s) if direction == "c2s" else (link.s, link.c)
        scid, dcid = (link.ccid, link.scid) if direction == "c2s" else (link.scid, link.ccid)
        assert src.engine.send(scid, payload, binary=binary)
        link.pump()
        assert dst.events[-1] == ("binary" if binary else "text", dcid, payload)
        frames = link.client_frames() if direction == "c2s" else link.server_frames()
        [f] = frames
        assert (f.fin, f.opcode, f.payload) == (True, OP_BINARY if binary else OP_TEXT, payload)
        assert f.length_field == (n if n < 126 else 126 if n < 65536 else 127)
        wire = link.c2s[len(UPGRADE_REQUEST):] if direction == "c2s" else after_head(link.s2c)
        assert len(wire) == header_size(n, direction == "c2s") + n
        assert src.counter("messages_out") == 1 and dst.counter("messages_in") == 1
        assert link.s.pool.bytes_in_use == link.c.pool.bytes_in_use == 0

    @pytest.mark.parametrize("n", [0, 126, 65536])
    def test_a_returned_value_is_the_reply(self, link, n):
        link.s.reply = lambda cid, payload: payload[::-1]
        link.c.engine.send(link.ccid, text(n))
        link.c.engine.send(link.ccid, pattern(n), binary=True)
        link.pump()
        assert link.c.of("text") == [(link.ccid, text(n)[::-1])]
        assert link.c.of("binary") == [(link.ccid, pattern(n)[::-1])]

    def test_invalid_utf8_from_the_server_fails_the_client_with_1007(self, link):
        link.s.engine.send(link.scid, b"\xc3\x28")  # not UTF-8: the server does not check
        link.pump()
        assert link.c.of("text") == []
        assert link.c.of("close") == [(link.ccid, 1007)] and link.s.of("close") == [(link.scid, 1007)]


class TestRFC6455_5_5_PingPong:
    """§5.5.2/§5.5.3: a ping is answered with a pong carrying the same payload, in both
    roles (masked by the client, not by the server)."""

    @pytest.mark.parametrize("n", [0, 1, 4, 125])
    def test_the_server_answers_a_ping(self, peer, n):
        p = peer()
        cid = upgrade(p)
        p.engine.receive_data(cid, masked(OP_PING, pattern(n)))
        assert p.engine.data_to_send(cid) == unmasked(OP_PONG, pattern(n))

    @pytest.mark.parametrize("n", [0, 1, 4, 125])
    def test_the_client_answers_a_ping(self, link, n):
        link.c.engine.receive_data(link.ccid, unmasked(OP_PING, pattern(n)))
        [f] = wire_frames(link.c.engine.data_to_send(link.ccid))
        assert (f.fin, f.opcode, f.payload) == (True, OP_PONG, pattern(n))
        assert f.mask is not None

    @pytest.mark.parametrize("pinger", ["server", "client"])
    def test_keepalive_round_trip(self, link, pinger):
        src, scid = (link.s, link.scid) if pinger == "server" else (link.c, link.ccid)
        now = (monotonic_ms() + LONG) % WRAP
        src.engine.sweep(ping_interval_ms=1, now=now)
        assert src.engine.table.info(scid)["ping_outstanding"] is True
        assert src.counter("pings_sent") == 1
        link.pump()
        assert src.engine.table.info(scid)["ping_outstanding"] is False
        ping_frames = link.server_frames() if pinger == "server" else link.client_frames()
        pong_frames = link.client_frames() if pinger == "server" else link.server_frames()
        assert [(f.opcode, f.payload) for f in ping_frames] == [(OP_PING, stamp(now))]
        assert [(f.opcode, f.payload) for f in pong_frames] == [(OP_PONG, stamp(now))]
        assert (ping_frames[0].mask is None) == (pinger == "server")
        assert (pong_frames[0].mask is None) == (pinger == "client")
        assert link.s.of("text") == link.c.of("text") == []

    def test_no_pong_once_our_close_is_sent(self, link):
        link.s.engine.close(link.scid)
        link.s.engine.data_to_send(link.scid)
        link.s.engine.receive_data(link.scid, masked(OP_PING, b"late"))
        assert link.s.engine.data_to_send(link.scid) == b""


class TestRFC6455_7_ClosingHandshake:
    """§5.5.1, §7.1: either side sends a close frame, the other echoes the code and
    closes; both slots are freed and on_close gets the code received."""

    @pytest.mark.parametrize("code,reason", [(1000, b""), (1001, b"going"), (4000, b"app"),
                                             (3999, "é€".encode())])
    @pytest.mark.parametrize("closer", ["client", "server"])
    def test_started_by_either_side(self, link, closer, code, reason):
        a, acid, b, bcid = ((link.c, link.ccid, link.s, link.scid) if closer == "client"
                            else (link.s, link.scid, link.c, link.ccid))
        assert a.engine.close(acid, code, reason)
        assert a.engine.state(acid) == CLOSING
        assert a.engine.send(acid, b"after close") is False
        link.pump()
        first = link.client_frames() if closer == "client" else link.server_frames()
        echo = link.server_frames() if closer == "client" else link.client_frames()
        assert [(f.opcode, f.payload) for f in first] == [(OP_CLOSE, close_payload(code, reason))]
        assert [(f.opcode, f.payload) for f in echo] == [(OP_CLOSE, close_payload(code))]
        assert a.of("close") == [(acid, code)] and b.of("close") == [(bcid, code)]
        assert a.counter("closed_by_server") == 1 and b.counter("closed_peer") == 1
        for p in (a, b):
            assert len(p.engine) == 0 and p.pool.bytes_in_use == 0
        assert link.s.engine.n_open == 0 and link.c.engine.n_clients == 0

    def test_an_empty_close_frame_is_1005(self, link):
        link.c.engine.receive_data(link.ccid, unmasked(OP_CLOSE))
        link.pump()
        assert [(f.opcode, f.payload) for f in link.client_frames()] == [(OP_CLOSE, b"")]
        assert link.c.of("close") == [(link.ccid, 1005)]
        assert link.s.of("close") == [(link.scid, 1005)]  # the echo: empty as well
        assert [(f.opcode, f.payload) for f in link.server_frames()] == [(OP_CLOSE, b"")]

    def test_simultaneous_close(self, link):
        link.s.engine.close(link.scid, 4001)
        link.c.engine.close(link.ccid, 4002)
        link.pump()
        assert link.s.of("close") == [(link.scid, 4002)]
        assert link.c.of("close") == [(link.ccid, 4001)]
        assert len(link.server_frames()) == 1
        assert len(link.client_frames()) == 1  # neither echoed: each had sent its own

    @pytest.mark.parametrize("side", ["client", "server"])
    def test_abort_is_eof_for_the_peer(self, link, side):
        a, acid, b, bcid = ((link.c, link.ccid, link.s, link.scid) if side == "client"
                            else (link.s, link.scid, link.c, link.ccid))
        assert a.engine.abort(acid)
        assert a.engine.abort(acid) is False
        link.pump()
        assert a.of("close") == [(acid, 1006)] and b.of("close") == [(bcid, 1006)]
        assert b.counter("closed_eof") == 1
        assert link.server_frames() == link.client_frames() == []

    def test_messages_after_the_peer_close_are_not_delivered(self, link):
        link.s.engine.receive_data(link.scid, masked(OP_CLOSE, close_payload(1000))
                                   + masked(OP_TEXT, b"too late"))
        assert close_of(link.s.engine.data_to_send(link.scid)) == (1000, b"")
        assert link.s.of("text") == []
        assert link.s.of("close") == [(link.scid, 1000)] and link.scid not in link.s.engine

    def test_a_long_reason_is_cut_at_a_character_boundary(self, link):
        link.s.engine.close(link.scid, 1000, "é" * 100)  # 200 bytes
        link.pump()
        [f] = link.server_frames()
        f.payload[2:].decode("utf-8")
        assert link.c.of("close") == [(link.ccid, 1000)]

    def test_a_code_that_may_not_be_sent_is_refused(self, link):
        for code in (0, 999, 1004, 1005, 1006, 1015, 2999, 5000):
            with pytest.raises(ValueError):
                link.s.engine.close(link.scid, code)
            assert link.s.engine.state(link.scid) == OPEN


# --- every byte split ---------------------------------------------------------------------

# One whole exchange per role: the opening head, then data frames of each kind and length
# form, a message fragmented across three frames with a UTF-8 character cut between two
# of them and a ping between fragments, empty payloads, and the close.
def exchange_frames(mask: bool) -> list[bytes]:
    def f(opcode, payload=b"", fin=True, k=0):
        return ref_encode(opcode, payload, fin=fin, mask_key=KEYS[k % 4] if mask else None)
    return [
        f(OP_TEXT, b"hello", k=0),
        f(OP_BINARY, pattern(126), k=1),
        f(OP_TEXT, b"fr\xc3", fin=False, k=2),
        f(OP_PING, b"mid", k=3),
        f(OP_CONTINUATION, b"\xa9g\xe2\x82", fin=False, k=0),
        f(OP_CONTINUATION, b"\xacment", k=1),
        f(OP_TEXT, b"", k=2),
        f(OP_TEXT, "é€😀".encode(), k=3),
        f(OP_PING, b"", k=0),
        f(OP_BINARY, pattern(100), fin=False, k=1),
        f(OP_CONTINUATION, pattern(100, 1), fin=False, k=2),
        f(OP_CONTINUATION, pattern(100, 2), k=3),
        f(OP_CLOSE, close_payload(1000, b"done"), k=0),
    ]


EXCHANGE_MESSAGES = [
    ("text", b"hello"), ("binary", pattern(126)), ("text", "frég€ment".encode()), ("text", b""),
    ("text", "é€😀".encode()), ("binary", pattern(100) + pattern(100, 1) + pattern(100, 2)),
]
# What the peer sends back: each message echoed (reply), the pongs, the close echo.
EXCHANGE_ANSWERS = [
    (OP_TEXT, b"hello"), (OP_BINARY, pattern(126)), (OP_PONG, b"mid"),
    (OP_TEXT, "frég€ment".encode()), (OP_TEXT, b""), (OP_TEXT, "é€😀".encode()), (OP_PONG, b""),
    (OP_BINARY, pattern(100) + pattern(100, 1) + pattern(100, 2)), (OP_CLOSE, close_payload(1000)),
]
SERVER_INPUT = UPGRADE_REQUEST + b"".join(exchange_frames(mask=True))
CLIENT_INPUT = RESPONSE_101 + b"".join(exchange_frames(mask=False))


def echo(cid, payload):
    return payload


def run_server(chunks) -> tuple[list, bytes]:
    """Feed the chunks to a fresh server connection; its events and everything it wrote."""
    p = Peer()
    p.reply = echo
    cid = p.engine.open_connection()
    out = bytearray()
    for chunk in chunks:
        p.engine.receive_data(cid, chunk)
        out += p.engine.data_to_send(cid)
    assert len(p.engine) == 0 and p.pool.bytes_in_use == 0
    return [e[:1] + e[2:] for e in p.events], bytes(out)


def run_client(chunks) -> tuple[list, list[Wire]]:
    p = Peer(client=True)
    p.reply = echo
    cid = p.engine.open_connection(request=UPGRADE_REQUEST)
    assert p.engine.data_to_send(cid) == UPGRADE_REQUEST
    out = bytearray()
    for chunk in chunks:
        p.engine.receive_data(cid, chunk)
        out += p.engine.data_to_send(cid)
    assert len(p.engine) == 0 and p.pool.bytes_in_use == 0
    return [e[:1] + e[2:] for e in p.events], wire_frames(out)


def splits(data: bytes, cuts) -> list[bytes]:
    cuts = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:]) if b > a]


class TestEveryByteSplit:
    """Whole delivery, a split at every byte position, byte by byte, and random splits
    all give the same events and the same bytes back."""

    SERVER_EVENTS = [("handshake", UPGRADE_REQUEST), *EXCHANGE_MESSAGES, ("close", 1000)]
    SERVER_OUTPUT = RESPONSE_101 + b"".join(unmasked(op, pl) for op, pl in EXCHANGE_ANSWERS)
    CLIENT_EVENTS = [("response", RESPONSE_101), *EXCHANGE_MESSAGES, ("close", 1000)]

    def check_client(self, events, frames):
        assert events == self.CLIENT_EVENTS
        assert [(f.opcode, f.payload) for f in frames] == EXCHANGE_ANSWERS
        assert all(f.fin and f.mask is not None for f in frames)

    def test_server_whole(self):
        assert run_server([SERVER_INPUT]) == (self.SERVER_EVENTS, self.SERVER_OUTPUT)

    def test_server_split_at_every_byte(self):
        for i in range(1, len(SERVER_INPUT)):
            got = run_server(splits(SERVER_INPUT, [i]))
            assert got == (self.SERVER_EVENTS, self.SERVER_OUTPUT), f"split at {i}"

    def test_server_byte_by_byte(self):
        assert run_server(splits(SERVER_INPUT, range(len(SERVER_INPUT)))) == \
            (self.SERVER_EVENTS, self.SERVER_OUTPUT)

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.integers(1, len(SERVER_INPUT) - 1), max_size=12))
    def test_server_random_splits(self, cuts):
        assert run_server(splits(SERVER_INPUT, cuts)) == (self.SERVER_EVENTS, self.SERVER_OUTPUT)

    @pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
    def test_server_buffer_types(self, kind):
        assert run_server([kind(c) for c in splits(SERVER_INPUT, [60, 200, 401])]) == \
            (self.SERVER_EVENTS, self.SERVER_OUTPUT)

    def test_client_whole(self):
        self.check_client(*run_client([CLIENT_INPUT]))

    def test_client_split_at_every_byte(self):
        for i in range(1, len(CLIENT_INPUT)):
            self.check_client(*run_client(splits(CLIENT_INPUT, [i])))

    def test_client_byte_by_byte(self):
        self.check_client(*run_client(splits(CLIENT_INPUT, range(len(CLIENT_INPUT)))))

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.integers(1, len(CLIENT_INPUT) - 1), max_size=12))
    def test_client_random_splits(self, cuts):
        self.check_client(*run_client(splits(CLIENT_INPUT, cuts)))


# --- the parser state out of the slot -------------------------------------------------------
#
# A slot is 72 bytes and holds no parser state; while parsing, the FrameState lives on
# the C stack, and it goes to a pooled block (pstate) only when a frame or message is
# left partial. With SMALL_CLASSES the accounting is exact: the state takes a 64-byte
# block, a control payload in progress a 256-byte one (125 bytes asked), a message the
# block of its size so far plus the current frame's declared length.

F1000 = masked(OP_TEXT, text(1000))  # header: 2 + 2 (length) + 4 (key) = 8 bytes
PING100 = masked(OP_PING, pattern(100))
FRAG1 = masked(OP_TEXT, text(300), fin=False)
FRAG_END = masked(OP_CONTINUATION, text(10, 1))
STATE = 64  # block(pool, FRAME_STATE_SIZE) with SMALL_CLASSES

# name: (bytes leaving something partial, the rest of the current frame, bytes in use)
PARTIALS = {
    "one header byte": (F1000[:1], F1000[1:], STATE),
    "half a header": (F1000[:5], F1000[5:], STATE),
    "a whole header": (F1000[:8], F1000[8:], STATE + 1024),
    "mid payload": (F1000[:500], F1000[500:], STATE + 1024),
    "all but one byte": (F1000[:-1], F1000[-1:], STATE + 1024),
    "half a ping": (PING100[:50], PING100[50:], STATE + 256),
    "an open fragmented message": (FRAG1, b"", STATE + 1024),
    "a fragmented message and half a ping": (FRAG1 + PING100[:50], PING100[50:], STATE + 1024 + 256),
}


class TestParserStateOutOfTheSlot:
    def test_slot_size(self):
        assert _core.SLOT_SIZE == 72
        assert block(small_pool(), _core.FRAME_STATE_SIZE) == STATE

    def test_an_idle_open_connection_holds_no_block(self, peer):
        p = peer(pool=small_pool())
        cids = [upgrade(p) for _ in range(8)]
        assert len(cids) == p.engine.n_open == 8
        assert p.pool.bytes_in_use == 0

    @pytest.mark.parametrize("n", LENGTHS)
    def test_a_whole_message_leaves_no_block(self, peer, n):
        p = peer(pool=small_pool())
        cid = upgrade(p)
        p.engine.receive_data(cid, masked(OP_TEXT, text(n)) + masked(OP_BINARY, pattern(n)))
        assert p.of("text") == [(cid, text(n))] and p.of("binary") == [(cid, pattern(n))]
        assert p.pool.bytes_in_use == 0
        p.reply = echo  # the replies wait in the out chain until pulled
        p.engine.receive_data(cid, masked(OP_TEXT, text(n)))
        assert p.pool.bytes_in_use > 0
        assert p.engine.data_to_send(cid) == unmasked(OP_TEXT, text(n))
        assert p.pool.bytes_in_use == 0

    @pytest.mark.parametrize("name", list(PARTIALS))
    def test_a_partial_frame_holds_blocks_until_it_completes(self, peer, name):
        prefix, rest, in_use = PARTIALS[name]
        p = peer(pool=small_pool())
        cid = upgrade(p)
        p.engine.receive_data(cid, prefix)
        assert p.pool.bytes_in_use == in_use
        p.engine.receive_data(cid, rest + (FRAG_END if FRAG1 in prefix else b""))
        out = wire_frames(p.engine.data_to_send(cid))  # a pong, for a ping
        assert p.pool.bytes_in_use == 0
        assert [f.opcode for f in out] == ([OP_PONG] if PING100[50:] in rest else [])
        assert len(p.of("text")) == (0 if prefix == PING100[:50] else 1)

    def test_a_fragmented_message_across_many_receive_data_calls(self, peer):
        p = peer(pool=small_pool())
        cid = upgrade(p)
        n = 20
        whole = b""
        for k in range(n):
            payload = text(50, k)
            whole += payload
            frame = masked(OP_TEXT if k == 0 else OP_CONTINUATION, payload, fin=k == n - 1,
                           key=KEYS[k % 4])
            p.engine.receive_data(cid, frame[:1])
            assert p.pool.bytes_in_use == STATE + (block(p.pool, 50 * k) if k else 0)
            p.engine.receive_data(cid, frame[1:20])
            assert p.pool.bytes_in_use == STATE + block(p.pool, 50 * (k + 1))
            p.engine.receive_data(cid, frame[20:])
            if k < n - 1:
                assert p.pool.bytes_in_use == STATE + block(p.pool, 50 * (k + 1))
                assert p.of("text") == []
        assert p.of("text") == [(cid, whole)]
        assert p.pool.bytes_in_use == 0


def drop_by(how: str, p: Peer, cid: int, rest: bytes) -> int:
    """End a connection one way; the on_close code expected."""
    e = p.engine
    if how == "eof":
        assert e.receive_eof(cid)
    elif how == "abort":
        assert e.abort(cid)
    elif how == "abort_all":
        e.abort_all()
    elif how == "pong timeout":
        e.table.mark_ping_sent(cid, 0)
        e.sweep(pong_timeout_ms=1, now=1)
    elif how == "close timeout":
        assert e.close(cid)
        assert close_of(e.data_to_send(cid)) == (1000, b"")
        e.table.mark_ping_sent(cid, 0)
        e.sweep(close_timeout_ms=1, now=1)
    elif how == "close_all, then the peer's close":
        e.close_all()
        assert close_of(e.data_to_send(cid)) == (1001, b"server shutting down")
        e.receive_data(cid, rest + masked(OP_CLOSE, close_payload(1001)))
        assert e.data_to_send(cid) == b""  # (a pong, if any, is not sent once closing)
        return 1001
    else:
        raise AssertionError(how)
    return 1006


DROPS = ["eof", "abort", "abort_all", "pong timeout", "close timeout",
         "close_all, then the peer's close"]


class TestNoBlockOutlivesItsConnection:
    @pytest.mark.parametrize("how", DROPS)
    @pytest.mark.parametrize("name", list(PARTIALS))
    def test_dropped_while_a_frame_is_partial(self, peer, name, how):
        prefix, rest, in_use = PARTIALS[name]
        p = peer(pool=small_pool())
        other = upgrade(p)
        cid = upgrade(p)
        p.engine.receive_data(cid, prefix)
        assert p.pool.bytes_in_use == in_use
        code = drop_by(how, p, cid, rest)
        assert cid not in p.engine
        assert (cid, code) in p.of("close")
        p.engine.data_to_send(other)  # close_all closed it too: its close frame waits
        assert p.pool.bytes_in_use == 0

    @pytest.mark.parametrize("tail", [b"", masked(OP_TEXT, b"second"), FRAG1, F1000[:500],
                                      masked(OP_TEXT, b"second") + FRAG1])
    def test_a_handler_aborting_its_own_connection_mid_batch(self, peer, tail):
        p = peer(pool=small_pool())
        cid = upgrade(p)
        p.hooks[b"first"] = p.engine.abort
        p.engine.receive_data(cid, masked(OP_TEXT, b"first") + tail)
        assert p.events[-2:] == [("close", cid, 1006), ("text", cid, b"first")]
        assert b"second" not in [e[-1] for e in p.events]
        assert cid not in p.engine and p.pool.bytes_in_use == 0

    @pytest.mark.parametrize("end", ["eof", "the peer's close"])
    def test_a_handler_closing_its_own_connection_mid_batch(self, peer, end):
        p = peer(pool=small_pool())
        cid = upgrade(p)
        p.hooks[b"first"] = lambda c: p.engine.close(c, 4000)
        p.engine.receive_data(cid, masked(OP_TEXT, b"first") + masked(OP_TEXT, b"second") + FRAG1)
        assert p.of("text") == [(cid, b"first")]  # data after our close frame is dropped
        assert close_of(p.engine.data_to_send(cid)) == (4000, b"")
        assert p.pool.bytes_in_use == STATE + 1024  # the open fragment, until the end
        if end == "eof":
            p.engine.receive_eof(cid)
            assert p.of("close") == [(cid, 1006)]
        else:
            p.engine.receive_data(cid, FRAG_END + masked(OP_CLOSE, close_payload(4000)))
            assert p.of("close") == [(cid, 4000)]
        assert p.of("text") == [(cid, b"first")]
        assert cid not in p.engine and p.pool.bytes_in_use == 0

    def test_a_handler_raising_mid_batch(self, peer, caplog):
        p = peer(pool=small_pool())
        cid = upgrade(p)

        def boom(c):
            raise ValueError("handler bug")

        p.hooks[b"first"] = boom
        p.engine.receive_data(cid, masked(OP_TEXT, b"first") + masked(OP_TEXT, b"second") + FRAG1)
        assert p.of("text") == []
        assert close_of(p.engine.data_to_send(cid)) == (1011, b"internal error")
        assert p.counter("closed_handler_error") == 1 and "message handler" in caplog.text
        p.engine.receive_eof(cid)
        assert p.of("close") == [(cid, 1006)] and p.pool.bytes_in_use == 0

    def test_a_handler_aborting_another_connection_with_a_partial_frame(self, peer):
        p = peer(pool=small_pool())
        a, b = upgrade(p), upgrade(p)
        p.engine.receive_data(b, FRAG1 + PING100[:50])
        assert p.pool.bytes_in_use == STATE + 1024 + 256
        p.hooks[b"drop b"] = lambda c: p.engine.abort(b)
        p.engine.receive_data(a, masked(OP_TEXT, b"drop b") + masked(OP_TEXT, b"after"))
        assert p.events[-3:] == [("close", b, 1006), ("text", a, b"drop b"), ("text", a, b"after")]
        assert b not in p.engine and p.engine.state(a) == OPEN
        assert p.pool.bytes_in_use == 0
        assert p.engine.receive_data(b, PING100[50:]) is False  # the stale id reaches nothing

    def test_a_drop_while_the_state_is_on_the_stack(self, peer):
        """The pong of the second ping passes max_pending_output: the connection is dropped
        (slow reader) from inside the parse, while its state, holding the open message's
        block, is on the stack: that block is given back before on_close runs."""
        p = peer(pool=small_pool(), max_pending_output=200)
        cid = upgrade(p)
        seen = []
        p.engine.on_close = lambda c, code: seen.append((c, code, p.pool.bytes_in_use))
        ping = masked(OP_PING, pattern(125))
        p.engine.receive_data(cid, FRAG1 + ping + ping + FRAG_END)
        assert seen == [(cid, 1006, 0)]
        assert p.counter("closed_slow_reader") == 1
        assert cid not in p.engine and p.pool.bytes_in_use == 0

    def test_receive_data_reentered_for_the_same_connection(self):
        """Refused with RuntimeError (its bytes would be parsed before the rest of the
        outer read, and two parser states would compete for the slot)."""
        p = Peer(pool=small_pool())  # not the fixture: the leak is asserted here, once
        cid = upgrade(p)
        refused = []

        def feed(c):
            try:
                p.engine.receive_data(c, masked(OP_TEXT, text(300), fin=False))
            except RuntimeError as e:
                refused.append(str(e))

        p.hooks[b"feed"] = feed
        p.engine.receive_data(cid, masked(OP_TEXT, b"feed") + masked(OP_BINARY, pattern(300))[:50])
        assert refused and "being parsed" in refused[0]
        assert p.engine.state(cid) == OPEN  # the outer parse carried on
        p.engine.abort(cid)
        assert p.pool.bytes_in_use == 0

    def test_a_nested_parse_aborts_the_outer_connection(self, peer):
        """a's handler resumes b (end()), whose kept input is parsed inside a's parse; b's
        handler aborts a: a's parse, on the stack below, must stop and leak nothing."""
        p = peer(pool=small_pool(), max_inflight=1)
        e = p.engine
        a, b = upgrade(p), upgrade(p)
        p.hooks[b"pause"] = e.begin  # b reaches max_inflight: reading pauses
        p.hooks[b"resume b"] = lambda c: e.end(b)
        p.hooks[b"kill a"] = lambda c: e.abort(a)
        kept = masked(OP_TEXT, b"kill a") + FRAG1
        e.receive_data(b, masked(OP_TEXT, b"pause") + kept)
        assert p.events[-1] == ("text", b, b"pause")
        assert p.pool.bytes_in_use == block(p.pool, len(kept))  # kept, not parsed
        assert p.counter("read_pauses") == 1
        e.receive_data(a, masked(OP_TEXT, b"resume b") + masked(OP_TEXT, b"never"))
        assert p.events[-3:] == [("close", a, 1006), ("text", b, b"kill a"), ("text", a, b"resume b")]
        assert a not in e and e.state(b) == OPEN
        assert p.pool.bytes_in_use == STATE + 1024  # b's open fragment, in its pstate
        e.receive_data(b, FRAG_END)
        assert p.events[-1] == ("text", b, text(300) + text(10, 1))
        assert p.pool.bytes_in_use == 0

    def test_requests_begun_and_ended_from_callbacks_during_a_resume(self, peer):
        """From fuzz/corpus/frames/747343c1... (a 10-minute fuzz run's timeout): the
        message callbacks begin() and end() requests while end() resumes reading. Each
        kept message is delivered once, in order; an end() with nothing in flight changes
        nothing (the uint32 counts never wrap below zero); the connection reads on. (The
        loop that timed out was the fuzz harness's own count going below zero; this pins
        the engine's side of the same input.)"""
        with open(os.path.join(os.path.dirname(__file__), "..", "..", "fuzz", "corpus", "frames",
                               "747343c10365a128c893c6fc1e779b312ed54e36"), "rb") as fh:
            stream = fh.read()[2:]  # after the fuzz target's flags and split seed
        p = peer(max_inflight=2)
        e = p.engine
        cid = upgrade(p)
        payloads = [ref_mask(stream[i + 6:i + 10], stream[i + 2:i + 6]) for i in range(0, 80, 10)]
        assert payloads == [b"@act", b"\x0eact", b"%act", b"\x04act", b"\x05act", b"\x06act",
                            b"\x06act", b"\x07act"]
        p.hooks[b"\x0eact"] = e.end   # nothing in flight yet: a no-op
        p.hooks[b"%act"] = e.begin
        p.hooks[b"\x05act"] = e.begin  # the second: reading pauses, the rest is kept
        p.hooks[b"\x06act"] = e.end    # once from 1 to 0 (run from the resume), once at 0
        p.hooks[b"\x07act"] = lambda c: e.sweep(close_timeout_ms=0)
        for piece in (stream[:42], stream[42:62], stream[62:]):  # the target's cuts (seed 7)
            e.receive_data(cid, piece)
        assert [ev[2] for ev in p.events if ev[0] == "text"] == payloads[:5]
        assert e.table.info(cid)["inflight"] == 2 and p.counter("read_pauses") == 1
        e.end(cid)  # the resume delivers the kept three, whose callbacks end and sweep
        assert [ev[2] for ev in p.events if ev[0] == "text"] == payloads
        assert e.table.info(cid)["inflight"] == 0 and e.inflight_total == 0
        e.end(cid)
        assert e.table.info(cid)["inflight"] == 0 and e.inflight_total == 0
        assert e.state(cid) == OPEN
        e.receive_data(cid, masked(OP_TEXT, b"reads on"))
        assert p.events[-1] == ("text", cid, b"reads on")


# --- the HTTP phase (server role) -----------------------------------------------------------

def request(path: str = "/", extra: bytes = b"", method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n"


def answer_by_path(status: int = 200, action: int = HTTP_KEEP_ALIVE):
    """on_handshake answering each request with a response naming its path."""
    def http(cid, head):
        path = head.split(b" ")[1]
        return http_response(status, path), action
    return http


class TestRFC9112_HTTPPhase:
    """A server connection reads HTTP/1.1 requests until one is upgraded; each head goes
    to on_handshake, whose action says what happens next."""

    @pytest.mark.parametrize("action", [HTTP_CLOSE, False])
    @pytest.mark.parametrize("status", [200, 301, 404, 500])
    def test_close(self, peer, action, status):
        p = peer()
        p.http = answer_by_path(status, action)
        cid = p.engine.open_connection()
        assert p.engine.n_pending == 1
        p.engine.receive_data(cid, request("/a") + b"ignored: the answer closes")
        assert p.engine.state(cid) == CLOSING
        assert p.engine.data_to_send(cid) == http_response(status, b"/a")
        assert cid not in p.engine and p.engine.data_to_send(cid) == b""
        assert p.of("handshake") == [(cid, request("/a"))] and p.of("close") == []
        assert p.counter("http_requests") == 1
        assert p.counter("refused_http") == (1 if status >= 400 else 0)
        assert p.engine.n_pending == 0 and p.counter("upgraded") == 0

    def test_keep_alive(self, peer):
        p = peer()
        p.http = answer_by_path()
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, request("/1") + request("/2"))
        assert p.of("handshake") == [(cid, request("/1")), (cid, request("/2"))]
        assert p.engine.data_to_send(cid) == http_response(200, b"/1") + http_response(200, b"/2")
        assert p.engine.state(cid) == HANDSHAKE and p.engine.n_pending == 1
        p.engine.receive_data(cid, request("/3"))
        assert p.engine.data_to_send(cid) == http_response(200, b"/3")
        p.http = answer_by_path(404, HTTP_CLOSE)
        p.engine.receive_data(cid, request("/4"))
        assert p.engine.data_to_send(cid) == http_response(404, b"/4")
        assert cid not in p.engine
        assert p.counter("http_requests") == 4 and p.counter("refused_http") == 1

    def test_keep_alive_pipeline_split_at_every_byte(self, peer):
        data = request("/1") + request("/two") + request("/3", b"X-Long: " + b"v" * 200 + b"\r\n")
        expected = b"".join(http_response(200, x) for x in (b"/1", b"/two", b"/3"))
        for i in range(1, len(data)):
            p = Peer()
            p.http = answer_by_path()
            cid = p.engine.open_connection()
            out = b""
            for chunk in splits(data, [i]):
                p.engine.receive_data(cid, chunk)
                out += p.engine.data_to_send(cid)
            assert out == expected, f"split at {i}"
            assert len(p.of("handshake")) == 3 and p.pool.bytes_in_use == 0

    def test_keep_alive_then_upgrade(self, peer):
        p = peer()
        cid = p.engine.open_connection()
        p.http = answer_by_path()
        p.engine.receive_data(cid, request("/health"))
        assert p.engine.data_to_send(cid) == http_response(200, b"/health")
        p.http = None  # upgrade
        p.engine.receive_data(cid, UPGRADE_REQUEST + masked(OP_TEXT, b"hi"))
        assert p.engine.data_to_send(cid) == RESPONSE_101
        assert p.engine.state(cid) == OPEN and p.of("text") == [(cid, b"hi")]
        assert (p.engine.n_open, p.engine.n_pending) == (1, 0)

    BODY_SPLITS = {
        "one read": lambda head, body, nxt: [head + body + nxt],
        "head, then body and next": lambda head, body, nxt: [head, body + nxt],
        "body split in three": lambda head, body, nxt: [
            head + body[:len(body) // 3], body[len(body) // 3:2 * len(body) // 3],
            body[2 * len(body) // 3:] + nxt[:5], nxt[5:]],
        "body byte by byte": lambda head, body, nxt: [head, *[body[i:i + 1] for i in range(len(body))], nxt],
    }

    @pytest.mark.parametrize("split", list(BODY_SPLITS))
    @pytest.mark.parametrize("n", [1, 100, 5000])
    def test_body(self, peer, n, split):
        p = peer()
        head = request("/rpc", f"Content-Length: {n}\r\n".encode(), method="POST")
        body = pattern(n)
        nxt = request("/next")

        def http(cid, h):
            if h.startswith(b"POST"):
                return n, HTTP_BODY
            return http_response(200, b"next"), HTTP_KEEP_ALIVE

        p.http = http
        p.body = lambda cid, b: (http_response(201, b"%d" % len(b)), HTTP_KEEP_ALIVE)
        cid = p.engine.open_connection()
        out = b""
        for chunk in self.BODY_SPLITS[split](head, body, nxt):
            p.engine.receive_data(cid, chunk)
            out += p.engine.data_to_send(cid)
        assert p.events == [("handshake", cid, head), ("body", cid, body), ("handshake", cid, nxt)]
        assert out == http_response(201, b"%d" % n) + http_response(200, b"next")
        assert p.engine.state(cid) == HANDSHAKE and p.pool.bytes_in_use == 0
        assert p.counter("http_requests") == 2

    def test_a_body_larger_than_the_head_limit_in_the_same_read(self, peer):
        p = peer()
        p.http = lambda cid, head: (9000, HTTP_BODY)
        p.body = lambda cid, body: (http_response(204), HTTP_CLOSE)
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, request("/", b"Content-Length: 9000\r\n", "POST") + pattern(9000))
        assert p.of("body") == [(cid, pattern(9000))]

    def test_body_then_close(self, peer):
        p = peer()
        p.http = lambda cid, head: (3, HTTP_BODY)
        p.body = lambda cid, body: (http_response(400, body), HTTP_CLOSE)
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, request("/", b"Content-Length: 3\r\n", "PUT") + b"abc" + b"rest")
        assert p.engine.data_to_send(cid) == http_response(400, b"abc")
        assert cid not in p.engine and p.counter("refused_http") == 1

    def test_defer_then_respond_keep_alive(self, peer):
        p = peer()
        seen = []

        def http(cid, head):
            seen.append(head)
            if len(seen) == 1:
                return None, HTTP_DEFER
            return http_response(200, head.split(b" ")[1]), HTTP_KEEP_ALIVE

        p.http = http
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, request("/slow") + request("/2")[:10])
        assert p.engine.state(cid) == HTTP_WAIT and p.engine.data_to_send(cid) == b""
        p.engine.receive_data(cid, request("/2")[10:] + request("/3"))  # pipelined meanwhile
        assert seen == [request("/slow")]  # not read while deferred
        assert p.pool.bytes_in_use > 0  # kept
        assert p.engine.respond(cid, http_response(200, b"late"), keep_alive=True)
        assert seen == [request("/slow"), request("/2"), request("/3")]
        assert p.engine.data_to_send(cid) == (http_response(200, b"late") + http_response(200, b"/2")
                                              + http_response(200, b"/3"))
        assert p.engine.state(cid) == HANDSHAKE and p.pool.bytes_in_use == 0
        assert p.engine.respond(cid, http_response(200)) is False  # not waiting any more
        assert p.counter("http_requests") == 3

    def test_defer_then_respond_close(self, peer):
        p = peer()
        p.http = lambda cid, head: (None, HTTP_DEFER)
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, request("/") + request("/dropped"))
        assert p.engine.respond(cid, http_response(503, b"busy"), keep_alive=False)
        assert p.engine.data_to_send(cid) == http_response(503, b"busy")
        assert cid not in p.engine and len(p.of("handshake")) == 1
        assert p.counter("refused_http") == 1 and p.pool.bytes_in_use == 0

    def test_defer_from_on_body(self, peer):
        p = peer()
        p.http = lambda cid, head: (4, HTTP_BODY)
        p.body = lambda cid, body: (None, HTTP_DEFER)
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, request("/", b"Content-Length: 4\r\n", "POST") + b"data")
        assert p.engine.state(cid) == HTTP_WAIT
        assert p.engine.respond(cid, http_response(200, b"ok"))
        assert p.engine.data_to_send(cid) == http_response(200, b"ok")
        assert p.engine.state(cid) == HANDSHAKE

    def test_respond_to_a_wrong_id_or_state(self, peer):
        p = peer()
        e = p.engine
        fresh = e.open_connection()
        ws = upgrade(p)
        p.http = lambda cid, head: (None, HTTP_DEFER)
        waiting = e.open_connection()
        e.receive_data(waiting, request())
        stale = e.open_connection()
        e.abort(stale)
        for cid in (fresh, ws, stale, stale + (1 << 32), waiting ^ 1, -1, 1 << 64, 12345):
            assert e.respond(cid, http_response(200)) is False
        assert e.data_to_send(fresh) == e.data_to_send(ws) == b""
        assert e.respond(waiting, http_response(200))
        assert e.respond(waiting, http_response(200)) is False

    @pytest.mark.parametrize("bad", ["on_handshake raises", "on_body raises", "on_body action",
                                     "zero-length body", "not a pair"])
    def test_errors_become_500(self, peer, bad, caplog):
        p = peer()

        def raise_(*args):
            raise RuntimeError("bug in the handler")

        p.http = {
            "on_handshake raises": raise_,
            "not a pair": lambda cid, head: http_response(200),
            "zero-length body": lambda cid, head: (0, HTTP_BODY),
        }.get(bad, lambda cid, head: (2, HTTP_BODY))
        p.body = raise_ if bad == "on_body raises" else lambda cid, body: (http_response(200), HTTP_UPGRADE)
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, request("/", b"Content-Length: 2\r\n", "POST") + b"xy")
        assert p.engine.data_to_send(cid) == p.engine.http_500
        assert cid not in p.engine and p.of("close") == []
        assert ("on_body" if bad.startswith("on_body") else "on_handshake") in caplog.text
        assert "bug in the handler" not in p.engine.http_500.decode()

    @pytest.mark.parametrize("bad", ["on_handshake raises", "on_body raises", "admission race"])
    def test_core_written_errors_count_as_refused(self, peer, bad):
        p = peer(max_open=1)
        if bad == "admission race":
            upgrade(p)  # max_open reached; the handler answers 101 anyway
        else:
            def raise_(*args):
                raise RuntimeError("bug")
            p.http = raise_ if bad == "on_handshake raises" else lambda cid, head: (1, HTTP_BODY)
            p.body = raise_
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, UPGRADE_REQUEST + b"x")
        assert p.engine.data_to_send(cid)[:12] in (b"HTTP/1.1 500", b"HTTP/1.1 503")
        assert p.counter("refused_http") == 1

    def test_upgrade_past_max_open_is_503(self, peer):
        p = peer(max_open=1)
        first = upgrade(p)
        cid = p.engine.open_connection()
        assert p.engine.admission(cid) == 1
        p.engine.receive_data(cid, UPGRADE_REQUEST)
        assert p.engine.data_to_send(cid) == p.engine.http_503
        assert cid not in p.engine and p.engine.n_open == 1 and p.engine.state(first) == OPEN

    def test_per_ip_admission(self, peer):
        p = peer(max_per_ip=1)
        upgrade(p, ip="203.0.113.9")
        cid = p.engine.open_connection("203.0.113.9")
        assert p.engine.admission(cid) == 2
        other = p.engine.open_connection("203.0.113.10")
        assert p.engine.admission(other) == 0
        p.engine.receive_data(cid, UPGRADE_REQUEST)
        assert p.engine.data_to_send(cid) == p.engine.http_503

    def test_head_limit(self, peer):
        p = peer(max_handshake_size=1024)
        p.http = answer_by_path(204, HTTP_CLOSE)
        prefix = b"GET / HTTP/1.1\r\nHost: x\r\nX-Fill: "
        exact = prefix + b"v" * (1024 - len(prefix) - 4) + b"\r\n\r\n"
        assert len(exact) == 1024
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, exact)
        assert p.of("handshake") == [(cid, exact)]
        over = exact[:-4] + b"v\r\n\r\n"
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, over[:1000])
        p.engine.receive_data(cid, over[1000:])
        assert p.engine.data_to_send(cid) == p.engine.http_431
        assert cid not in p.engine and p.counter("handshake_too_large") == 1
        assert len(p.of("handshake")) == 1

    def test_the_core_answers_can_be_replaced(self, peer):
        p = peer()
        p.engine.http_400 = b"HTTP/1.1 400 Custom\r\nContent-Length: 0\r\n\r\n"
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, b"\x16\x03\x01")  # a TLS hello on a plain port
        assert p.engine.data_to_send(cid) == b"HTTP/1.1 400 Custom\r\nContent-Length: 0\r\n\r\n"

    def test_max_pending(self, peer):
        p = peer(max_pending=2)
        p.engine.open_connection()
        p.engine.open_connection()
        with pytest.raises(TableFull):
            p.engine.open_connection()
        assert p.engine.n_pending == 2


NON_BYTES = {
    "keep-alive response as bytearray": "HTTP_KEEP_ALIVE, bytearray",
    "101 as memoryview": "HTTP_UPGRADE, memoryview",
    "respond() with a bytearray": "respond, bytearray",
}

NON_BYTES_CHILD = r"""
import sys
from fastrpc._core import *
case = sys.argv[1]
resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Padding: " + b"p" * 200 + b"\r\n\r\n"
kind = bytearray if "bytearray" in case else memoryview
e = Engine(BufferPool(), 4, 4)
action = HTTP_UPGRADE if "UPGRADE" in case else HTTP_KEEP_ALIVE
e.on_handshake = lambda c, h, i, p: (None, HTTP_DEFER) if "respond" in case else (kind(resp), action)
e.on_text = lambda c, p: None
cid = e.open_connection()
e.receive_data(cid, b"GET / HTTP/1.1\r\n\r\n")
if "respond" in case:
    e.respond(cid, kind(resp))
out = e.data_to_send(cid)
sys.stdout.write("same" if out == resp else "500" if out == e.http_500 else "other " + out[:64].hex())
"""


class TestResponseObjects:
    """on_handshake / on_body / respond() are given bytes in every test above; a response
    of another buffer type must be written as it is (or refused), never read as memory
    it is not. Run in a child process: the bug reads past the object."""

    @pytest.mark.parametrize("case", list(NON_BYTES.values()), ids=list(NON_BYTES))
    def test_a_buffer_response(self, case):
        import subprocess
        import sys

        root = os.path.dirname(os.path.dirname(os.path.abspath(_core.__file__)))
        env = {**os.environ, "PYTHONPATH": root}
        r = subprocess.run([sys.executable, "-c", NON_BYTES_CHILD, case], capture_output=True,
                           text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout in ("same", "500"), r.stdout


# --- the request line, checked as it arrives ---------------------------------------------
#
# The loose grammar of Engine._check_request_line, written here as a regular expression
# over what has arrived so far: a method of 1-32 tchars (RFC 9110 §5.6.2), SP, a target of
# visible ASCII, SP, a version of "HTTP/0123456789." characters, CRLF; after the CRLF
# nothing more is checked (the Python parser has the last word).
_M = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_T = rb"[\x21-\x7e]"
_V = rb"[HTP/0-9.]"
LINE_SO_FAR = re.compile(rb"\A(?:%s{0,32}|%s{1,32} %s*(?: %s*(?:\r(?:\n[\s\S]*)?)?)?)\Z"
                         % (_M, _M, _T, _V))


def line_ok_so_far(data: bytes) -> bool:
    return LINE_SO_FAR.match(data) is not None


def first_bad(data: bytes) -> int | None:
    """Bytes up to and including the first one that makes the line invalid."""
    for k in range(1, len(data) + 1):
        if not line_ok_so_far(data[:k]):
            return k
    return None


class TestRFC9112_3_RequestLine:
    """Bytes that cannot be an HTTP request line are answered 400 as they arrive, before
    any head is complete and without calling on_handshake; a valid line is never refused
    early, whatever the split."""

    def test_the_reference_grammar(self):
        ok = [b"", b"G", b"GET", b"GET ", b"GET /", b"GET / ", b"GET / HTTP/1.1", b"GET / HTTP/1.1\r",
              b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1\r\n\x00 anything", b"A" * 32 + b" ", b"OPTIONS * H"]
        bad = [b" ", b"\r", b"\r\n", b"A" * 33, b"GE\x00", b"GET \x01", b"GET / HTTP/1.1x",
               b"GET / HTTP/1.1\rX", b"GET /\r\n", b"G(", b"\x16\x03\x01"]
        assert all(line_ok_so_far(d) for d in ok)
        assert not any(line_ok_so_far(d) for d in bad)

    def feed(self, p: Peer, cid: int, chunks) -> list[bytes]:
        outs = []
        for chunk in chunks:
            p.engine.receive_data(cid, chunk)
            outs.append(p.engine.data_to_send(cid))
        return outs

    @pytest.mark.parametrize("seed", range(5))
    def test_random_bytes_are_refused_at_once(self, peer, seed):
        data = random.Random(seed).randbytes(4096)
        while b"\r\n" in data:
            data = data.replace(b"\r\n", b"\r_")
        k = first_bad(data)
        assert k is not None
        for chunk_size in (4096, 64, 1):
            p = peer()
            p.http = answer_by_path(404, HTTP_CLOSE)
            cid = p.engine.open_connection()
            outs = self.feed(p, cid, splits(data, range(chunk_size, len(data), chunk_size)))
            at = (k - 1) // chunk_size  # the chunk carrying the first bad byte
            assert outs[:at] == [b""] * at
            assert outs[at] == p.engine.http_400
            assert cid not in p.engine and all(o == b"" for o in outs[at + 1:])
            assert p.events == [] and p.counter("refused_http") == 1

    @pytest.mark.parametrize("data", [b"\r\n", b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                      b"\n", b" GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00"])
    def test_a_leading_crlf_or_other_non_token_is_refused(self, peer, data):
        p = peer()
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, data)
        assert p.engine.data_to_send(cid) == p.engine.http_400
        assert p.events == []

    def test_method_length(self, peer):
        p = peer()
        p.http = answer_by_path(405, HTTP_CLOSE)
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, b"M" * 32 + b" / HTTP/1.1\r\n\r\n")
        assert p.engine.data_to_send(cid) == http_response(405, b"/")
        cid = p.engine.open_connection()
        p.engine.receive_data(cid, b"M" * 33)  # refused before the rest arrives
        assert p.engine.data_to_send(cid) == p.engine.http_400
        assert len(p.of("handshake")) == 1

    @pytest.mark.parametrize("line", [
        UPGRADE_REQUEST,
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"GET http://x.example:8080/a/b?c=d&e=%20#f HTTP/1.1\r\nHost: x\r\n\r\n",
        b"M-SEARCH * HTTP/1.1\r\n\r\n",
        b"X" * 32 + b" /" + b"~" * 500 + b" HTTP/1.1\r\n\r\n",
        b"GET  HTTP/1.1\r\n\r\n",  # loose: an empty target is left to the Python parser
    ])
    def test_a_valid_line_fed_byte_by_byte_is_never_refused_early(self, peer, line):
        p = peer()
        p.http = answer_by_path(200, HTTP_CLOSE)
        cid = p.engine.open_connection()
        outs = self.feed(p, cid, [line[i:i + 1] for i in range(len(line))])
        assert outs[:-1] == [b""] * (len(line) - 1)
        assert p.of("handshake") == [(cid, line)]
        assert outs[-1].startswith(b"HTTP/1.1 200")

    def test_every_prefix_of_a_request_line_is_accepted_so_far(self, peer):
        line = b"GET / HTTP/1.1\r\n"
        for k in range(len(line) + 1):
            p = Peer()
            cid = p.engine.open_connection()
            p.engine.receive_data(cid, line[:k])
            assert p.engine.data_to_send(cid) == b"" and p.engine.state(cid) == HANDSHAKE, k
            # The same prefix and one byte that cannot follow: refused (but after the line,
            # where nothing is checked any more).
            p.engine.receive_data(cid, b"\x00")
            out = p.engine.data_to_send(cid)
            assert out == (b"" if k == len(line) else p.engine.http_400), k

    def test_cr_and_lf_in_separate_reads(self, peer):
        p = peer()
        p.http = answer_by_path(204, HTTP_CLOSE)
        cid = p.engine.open_connection()
        assert self.feed(p, cid, [b"GET / HTTP/1.1\r", b"\n", b"Host: x\r\n\r", b"\n"])[-1] == \
            http_response(204, b"/")
        cid = p.engine.open_connection()
        assert self.feed(p, cid, [b"GET / HTTP/1.1\r", b"X"]) == [b"", p.engine.http_400]

    def test_a_line_past_16_kib_is_left_to_the_head_limit(self, peer):
        p = peer(max_handshake_size=32 * KiB)
        p.http = answer_by_path(414, HTTP_CLOSE)
        cid = p.engine.open_connection()
        bad_early = b"GET /" + b"a" * 16_000 + b"\x01"
        assert self.feed(p, cid, splits(bad_early, range(1000, len(bad_early), 1000)))[-1] == \
            p.engine.http_400
        cid = p.engine.open_connection()
        late = b"GET /" + b"a" * 16_400 + b"\x01 HTTP/1.1\r\n\r\n"  # past the 14-bit position
        outs = self.feed(p, cid, splits(late, range(1000, len(late), 1000)))
        assert outs[-1].startswith(b"HTTP/1.1 414") and p.of("handshake") == [(cid, late)]

    def test_the_client_role_does_not_check_a_line(self, peer):
        p = peer(client=True)
        cid = client_waiting(p)
        p.engine.receive_data(cid, b"\x00not http\r\n\r\n")
        assert p.of("response") == [(cid, b"\x00not http\r\n\r\n")]  # on_response decides
        assert p.engine.data_to_send(cid) == b"" and cid not in p.engine

    PIECES = [b"GET", b"POST", b"M" * 31, b" ", b"/", b"*", b"?a=b", b"HTTP/1.1", b".", b"1",
              b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"Host: x", b"x", b"\x00", b"\x7f", b"\xff",
              b"\t", b"("]

    @settings(max_examples=300, deadline=None)
    @given(st.one_of(st.binary(max_size=80),
                     st.lists(st.sampled_from(PIECES), max_size=16).map(b"".join)),
           st.lists(st.integers(1, 200), max_size=6))
    def test_against_the_reference_grammar(self, data, cuts):
        p = Peer()
        p.http = answer_by_path(404, HTTP_CLOSE)
        cid = p.engine.open_connection()
        out = b"".join(self.feed(p, cid, splits(data, [c for c in cuts if c < len(data)])))
        if not line_ok_so_far(data):
            assert out == p.engine.http_400 and p.events == []
        elif b"\r\n\r\n" in data:
            head = data[:data.index(b"\r\n\r\n") + 4]
            assert p.of("handshake") == [(cid, head)]
            assert out == http_response(404, head.split(b" ")[1])
        else:
            assert out == b"" and p.engine.state(cid) == HANDSHAKE and p.events == []
        assert p.counter("refused_http") == (0 if line_ok_so_far(data) else 1) + \
            (1 if out.startswith(b"HTTP/1.1 404") else 0)


# --- generations ---------------------------------------------------------------------------
#
# A connection id is gen << 32 | slot. ConnTable.add_c skips generation 0 (a never-used
# slot) and 0xFFFFFFFF (LISTENER_TAG, the Reactor's epoll tag of a listening socket).
# Reaching the wrap takes 2**32 - 1 reuses of one slot: no public call sets a generation,
# so the wrap itself is reached by writing the free slot's `gen` field through ctypes,
# after checking that the table's memory is laid out as _core.pxd says (else the test fails: update it).

class _Slot(ctypes.Structure):
    """``Slot`` of fastrpc/_core.pxd, field for field."""

    _fields_ = [("fd", ctypes.c_int32), ("gen", ctypes.c_uint32), ("port", ctypes.c_uint16),
                ("state", ctypes.c_uint8), ("end_reason", ctypes.c_uint8), ("flags", ctypes.c_uint16),
                ("inflight", ctypes.c_uint16), ("close_code", ctypes.c_uint16),
                ("end_detail", ctypes.c_uint16), ("addr", ctypes.c_uint8 * 16),
                ("last_message", ctypes.c_uint32), ("last_receive", ctypes.c_uint32),
                ("ping_sent", ctypes.c_uint32), ("in_block", ctypes.c_uint32),
                ("in_len", ctypes.c_uint32), ("out_head", ctypes.c_uint32),
                ("out_tail", ctypes.c_uint32), ("out_bytes", ctypes.c_uint32),
                ("pstate", ctypes.c_uint32)]


def slot_array(table: ConnTable, live_cid: int, fd: int, port: int):
    """The table's C array of slots, located from the object's layout (PyObject_HEAD,
    the vtable pointer, then `Slot* slots` and four uint32: capacity, count, high,
    max_per_ip) and checked against a live connection; fails if anything disagrees (the
    layout is this project's own: a change must update the test, not skip it)."""
    if ctypes.sizeof(_Slot) != _core.SLOT_SIZE:
        pytest.fail("Slot layout differs from _core.pxd: update _Slot / this locator to the new layout")
    ptr = ctypes.sizeof(ctypes.c_void_p)
    base = id(table) + object.__basicsize__ + ptr
    address = ctypes.c_void_p.from_address(base).value
    fields = tuple((ctypes.c_uint32 * 4).from_address(base + ptr))
    if not address or fields != (table.capacity, len(table), table.high, table.max_per_ip):
        pytest.fail("ConnTable object layout is not the one this test knows: update _Slot / this locator to the new layout")
    slots = (_Slot * table.capacity).from_address(address)
    s = slots[live_cid & 0xFFFFFFFF]
    if (s.fd, s.gen, s.port) != (fd, live_cid >> 32, port):
        pytest.fail("the slot found does not hold the live connection: update _Slot / this locator to the new layout")
    return slots


class TestGenerations:
    def test_conn_table_skips_0xffffffff_and_0(self):
        table = ConnTable(2)
        cid = table.add(777, "10.0.0.1", 4321, now=0)
        slots = slot_array(table, cid, 777, 4321)
        table.remove(cid)
        slots[0].gen = 0xFFFFFFFD  # as if the slot had been reused 2**32 - 3 times
        last = table.add(778, "10.0.0.1", 4322, now=0)
        assert last >> 32 == 0xFFFFFFFE and last & 0xFFFFFFFF == 0
        table.remove(last)
        wrapped = table.add(779, "10.0.0.1", 4323, now=0)
        assert wrapped >> 32 == 1  # not 0xFFFFFFFF (LISTENER_TAG), not 0
        assert wrapped in table and last not in table
        assert wrapped == cid  # the ids of one slot repeat after 2**32 - 2 reuses: inherent
        assert table.info(wrapped)["fd"] == 779
        table.remove(wrapped)
        slots[0].gen = 0xFFFFFFFF  # cannot happen; if it did, the next one is not 0
        assert table.add(780, "10.0.0.1", now=0) >> 32 == 1

    def test_engine_ids_across_the_wrap(self, peer):
        p = peer()
        e = p.engine
        first = e.open_connection("10.0.0.1", 555)
        slots = slot_array(e.table, first, -1, 555)
        e.abort(first)
        slots[first & 0xFFFFFFFF].gen = 0xFFFFFFFE
        wrapped = e.open_connection("10.0.0.1", 556)
        assert wrapped >> 32 == 1 and wrapped & 0xFFFFFFFF == first & 0xFFFFFFFF
        assert e.receive_data(wrapped, UPGRADE_REQUEST)
        assert e.data_to_send(wrapped) == RESPONSE_101 and e.state(wrapped) == OPEN
        stale = (0xFFFFFFFE << 32) | (first & 0xFFFFFFFF)
        assert stale not in e and e.send(stale, b"x") is False and e.receive_data(stale, b"x") is False

    def test_reused_slots_never_carry_the_reserved_generations(self, peer):
        """What the public surface can show: over many reuses of one slot the
        generation goes up by one each time, starting at 1, never 0 or 0xFFFFFFFF."""
        table = ConnTable(1)
        gens = []
        for i in range(100_000):
            cid = table.add(i, "10.0.0.1", now=0)
            gens.append(cid >> 32)
            assert cid & 0xFFFFFFFF == 0
            table.remove(cid)
        assert gens == list(range(1, 100_001))
        p = peer(max_pending=1, max_open=0)
        seen = set()
        for _ in range(20_000):
            cid = p.engine.open_connection()
            assert cid >> 32 not in (0, 0xFFFFFFFF) and cid not in seen
            seen.add(cid)
            p.engine.abort(cid)
        assert len(p.engine) == 0


# --- mask keys after fork() ------------------------------------------------------------------
#
# RFC 6455 §5.3: the masking key must be unpredictable. Keys are drawn from getrandom()
# 4 KiB at a time; a forked child inherits the parent's unused keys, so a pthread_atfork
# child handler forgets them and the child draws its own.

def masked_key_now() -> bytes:
    """The key of a frame a fresh client connection masks now."""
    p = Peer(client=True)
    cid = p.engine.open_connection(request=UPGRADE_REQUEST)
    p.engine.data_to_send(cid)
    p.engine.receive_data(cid, RESPONSE_101)
    assert p.engine.send(cid, b"key?")
    [f] = wire_frames(p.engine.data_to_send(cid))
    assert f.payload == b"key?"
    return f.mask


def read_all(fd: int, timeout: float = 30.0) -> bytes:
    data = b""
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise AssertionError("the child did not answer in time")
        chunk = os.read(fd, 4096)
        if not chunk:
            return data
        data += chunk


def wait_child(pid: int, timeout: float = 30.0) -> int:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError("the child did not exit in time")


class TestMaskKeysAfterFork:
    def test_keys_are_buffered_after_a_masked_frame(self):
        masked_key_now()
        left = _core._mask_keys_left()
        assert 0 < left < 1024
        masked_key_now()
        assert _core._mask_keys_left() == (left - 1 if left > 1 else 1023)
        _core.encode_frame(OP_TEXT, b"x", mask=True)  # the encoder draws from the same buffer
        assert _core._mask_keys_left() in (left - 2, 1023, 1022)

    def test_a_forked_child_draws_fresh_keys(self):
        masked_key_now()
        if _core._mask_keys_left() < 4:
            masked_key_now()  # make sure the parent's buffer holds keys the child could reuse
        left = _core._mask_keys_left()
        assert left > 0
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no pytest machinery from here on, and always _exit
            code = 1
            try:
                os.close(r)
                before = _core._mask_keys_left()
                key = masked_key_now()
                after = _core._mask_keys_left()
                os.write(w, f"{before} {after} {key.hex()}".encode())
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        try:
            parent_left = _core._mask_keys_left()
            parent_key = masked_key_now()
            answer = read_all(r).decode()
        finally:
            os.close(r)
            code = wait_child(pid)
        assert code == 0, answer
        before, after, child_key = answer.split()
        assert parent_left == left  # the fork changed nothing in the parent
        assert int(before) == 0  # the child forgot the inherited keys ...
        assert int(after) == 1023  # ... and drew a fresh 4 KiB of its own
        assert bytes.fromhex(child_key) != parent_key


class TestSetPeer:
    """set_peer: the real client behind a trusted proxy, only while the address is not
    yet counted per IP (the HTTP phase)."""

    def test_in_the_http_phase(self, peer):
        p = peer(max_per_ip=1)
        cid = p.engine.open_connection("10.0.0.1", 5)
        assert p.engine.set_peer(cid, "2001:db8::9", 443)
        assert p.engine.peer(cid) == ("2001:db8::9", 443)
        assert p.engine.admission(cid) == 0

    def test_not_after_upgrade_nor_for_gone_ids(self, peer):
        p = peer()
        cid = upgrade(p)
        assert not p.engine.set_peer(cid, "203.0.113.1")
        p.engine.abort(cid)
        assert not p.engine.set_peer(cid, "203.0.113.1")
        with pytest.raises(ValueError):
            p.engine.set_peer(p.engine.open_connection(), "not an address")


# --- counters of frames, and the connection events (on_event) -----------------------------

NAMES = _core.COUNTER_NAMES


def reason_of(name: str) -> int:
    return NAMES.index(name)


class TestFrameCounters:
    """frames_in: every frame header read and accepted (data, continuation, control);
    frames_out: every frame encoded into an out chain or sent at once (control frames,
    the close frame included). messages_in / messages_out count whole messages only."""

    def test_in_memory_exchange_matches_the_wire(self, peer):
        """Fragmented messages, a ping and its pong, the closing handshake: each side's
        counters equal the frames on the wire (split back by the test's own parser)."""
        link = Link(peer(), peer(client=True))
        link.s.reply = echo
        rng = random.Random(7)
        by_hand = 0
        for i in range(20):  # fragmented: written by hand (the client engine sends whole messages)
            parts = rng.randint(1, 4)
            wire = b"".join(masked(OP_TEXT if k == 0 else OP_CONTINUATION, text(10, i + k),
                                   fin=k == parts - 1) for k in range(parts))
            by_hand += parts
            link.c2s += wire
            link.s.engine.receive_data(link.scid, wire)
            link.pump()
        for i in range(5):
            link.c.engine.send(link.ccid, b"whole %d" % i)
        link.pump()
        link.s.engine.table.touch(link.scid, 0, message=False)
        link.s.engine.sweep(ping_interval_ms=1, now=5)
        link.pump()
        assert link.s.engine.close(link.scid, 1000)
        link.pump()
        client_wire, server_wire = link.client_frames(), link.server_frames()
        assert [f.opcode for f in server_wire].count(OP_PING) == 1
        assert [f.opcode for f in client_wire].count(OP_PONG) == 1
        assert [f.opcode for f in client_wire][-1] == [f.opcode for f in server_wire][-1] == OP_CLOSE
        assert link.s.counter("frames_in") == len(client_wire)
        assert link.s.counter("frames_out") == len(server_wire) == 25 + 2  # echoes, ping, close
        assert link.c.counter("frames_in") == len(server_wire)
        assert link.c.counter("frames_out") == len(client_wire) - by_hand == 5 + 2  # texts, pong, close
        assert link.s.counter("messages_in") == 25 and link.s.counter("frames_in") == by_hand + 7

    def test_control_frames_count_without_messages(self, peer):
        p = peer()
        cid = upgrade(p)
        p.engine.receive_data(cid, masked(OP_PING, b"a") + masked(OP_PONG, b"b") + masked(OP_PING))
        assert [f.opcode for f in wire_frames(p.engine.data_to_send(cid))] == [OP_PONG, OP_PONG]
        assert (p.counter("frames_in"), p.counter("frames_out")) == (3, 2)
        assert (p.counter("messages_in"), p.counter("messages_out")) == (0, 0)

    def test_a_frame_split_at_every_byte_counts_once(self, peer):
        p = peer()
        cid = upgrade(p)
        wire = masked(OP_TEXT, text(300), fin=False) + masked(OP_CONTINUATION, text(70000))
        for i in range(len(wire)):
            p.engine.receive_data(cid, wire[i:i + 1])
        assert p.counter("frames_in") == 2 and p.counter("messages_in") == 1

    def test_a_refused_header_is_not_counted_but_the_close_sent_is(self, peer):
        p = peer()
        cid = upgrade(p)
        p.engine.receive_data(cid, masked(OP_TEXT, b"ok") + ref_encode(OP_TEXT, b"x", rsv=4, mask_key=KEYS[0]))
        out = wire_frames(p.engine.data_to_send(cid))
        assert [f.opcode for f in out] == [OP_CLOSE]
        assert (p.counter("frames_in"), p.counter("frames_out")) == (1, 1)

    def test_send_many_counts_one_frame_per_recipient(self, peer):
        p = peer()
        cids = [upgrade(p, port=40000 + i) for i in range(3)]
        assert p.engine.send_many(cids + [12345], b"fan out", 1 << 20) == [12345]
        assert p.counter("frames_out") == 3 and p.counter("messages_out") == 3

    def test_frame_parser_counts_its_frames(self):
        fp = _core.FrameParser(BufferPool())
        assert fp.frames == 0
        fp.feed(masked(OP_TEXT, b"a", fin=False) + masked(OP_PING) + masked(OP_CONTINUATION, b"b")[:6])
        assert fp.frames == 3  # the third's header is complete, its payload is not
        fp.feed(masked(OP_CONTINUATION, b"b")[6:])
        assert fp.frames == 3


class TestConnectionEvents:
    """on_event(reason, code, detail, ip, port): once per connection that ends for a
    reason in event_mask (abnormal ones by default), after its slot is freed, with the
    peer it had; and for a socket closed at accept (Reactor, tests/integration)."""

    IP, PORT = "198.51.100.7", 4321

    def open(self, p: Peer) -> int:
        return p.engine.open_connection(self.IP, self.PORT)

    def up(self, p: Peer) -> int:
        return upgrade(p, self.IP, self.PORT)

    def ev(self, name: str, code: int, detail: str = "") -> tuple:
        return (name, code, detail, self.IP, self.PORT)

    def test_default_mask_is_the_abnormal_set(self, peer):
        p = peer()
        assert p.engine.event_mask == _core.EVENTS_ABNORMAL
        assert _core.EVENTS_ABNORMAL & _core.EVENTS_NORMAL == 0
        abnormal = {n for i, n in enumerate(NAMES) if _core.EVENTS_ABNORMAL >> i & 1}
        assert abnormal == {"refused_http", "handshake_too_large", "handshake_timeout",
                            "pending_overflow", "closed_eof", "closed_protocol", "closed_too_big",
                            "closed_nomem", "closed_pong_timeout", "closed_slow_reader",
                            "closed_close_timeout", "closed_handler_error"}
        normal = {n for i, n in enumerate(NAMES) if _core.EVENTS_NORMAL >> i & 1}
        assert normal == {"closed_peer", "closed_idle", "closed_by_server"}

    def test_request_line_refused_400(self, peer):
        p = peer()
        cid = self.open(p)
        p.engine.receive_data(cid, b"\x16\x03\x01\x02\x00")
        assert p.engine.data_to_send(cid).startswith(b"HTTP/1.1 400 ")
        assert cid not in p.engine
        assert p.conn_events == [self.ev("refused_http", 400)]

    def test_head_too_large_431(self, peer):
        p = peer(max_handshake_size=1024)
        cid = self.open(p)
        p.engine.receive_data(cid, b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200)
        assert p.engine.data_to_send(cid).startswith(b"HTTP/1.1 431 ")
        assert p.conn_events == [self.ev("handshake_too_large", 431)]

    def test_on_handshake_raising_is_500(self, peer):
        p = peer()

        def boom(cid, head):
            raise RuntimeError("bug")

        p.http = boom
        cid = self.open(p)
        p.engine.receive_data(cid, request("/"))
        assert p.engine.data_to_send(cid).startswith(b"HTTP/1.1 500 ")
        assert p.conn_events == [self.ev("refused_http", 500)]

    def test_upgrade_past_max_open_is_503(self, peer):
        """Python admitted it, but the core's own check refuses (a lost race)."""
        p = peer(max_open=1)
        self.up(p)
        cid = self.open(p)
        p.engine.receive_data(cid, UPGRADE_REQUEST)
        assert p.engine.data_to_send(cid).startswith(b"HTTP/1.1 503 ")
        assert p.conn_events == [self.ev("refused_http", 503)]

    def test_python_decided_refusals_are_not_reported_by_the_core(self, peer):
        """Python logs the answers it decides itself (with its reason): the core stays
        silent, also when the refused peer never closes (the linger's close timeout)."""
        p = peer()
        p.http = lambda cid, head: (http_response(429, keep_alive=False), HTTP_CLOSE)
        a, b = self.open(p), self.open(p)
        for cid in (a, b):
            p.engine.receive_data(cid, request("/"))
        p.engine.data_to_send(a)
        p.engine.sweep(close_timeout_ms=1, now=(monotonic_ms() + LONG) % WRAP)
        assert a not in p.engine and b not in p.engine
        assert p.counter("closed_close_timeout") == 1
        assert p.conn_events == []

    def test_handshake_timeout(self, peer):
        p = peer()
        cid = self.open(p)
        p.engine.receive_data(cid, UPGRADE_REQUEST[:20])
        p.engine.sweep(handshake_timeout_ms=1, now=(monotonic_ms() + LONG) % WRAP)
        assert cid not in p.engine
        assert p.conn_events == [self.ev("handshake_timeout", 0)]

    def test_keep_alive_wait_timeout_is_idle_reaping(self, peer):
        """Counted as handshake_timeout (as ever), reported as closed_idle: normal."""
        p = peer()
        a = http_keep_alive(p)
        p.engine.sweep(handshake_timeout_ms=1, now=(monotonic_ms() + LONG) % WRAP)
        assert a not in p.engine and p.counter("handshake_timeout") == 1
        assert p.conn_events == []
        p.engine.event_mask = _core.EVENTS_ABNORMAL | _core.EVENTS_NORMAL
        b = http_keep_alive(p)
        p.engine.receive_data(b, b"GET /next")  # half of the next request: a slow client
        c = http_keep_alive(p)
        p.engine.sweep(handshake_timeout_ms=1, now=(monotonic_ms() + LONG) % WRAP)
        assert b not in p.engine and c not in p.engine
        assert sorted(e[0] for e in p.conn_events) == ["closed_idle", "handshake_timeout"]

    def test_http_phase_eof_is_not_an_event(self, peer):
        p = peer()
        p.engine.receive_eof(self.open(p))
        p.engine.receive_eof(http_keep_alive(p))
        assert p.counter("closed_eof") == 2 and p.conn_events == []

    @pytest.mark.parametrize("wire, name, code, detail", [
        (unmasked(OP_TEXT, b"x"), "closed_protocol", 1002, "frame not masked"),
        (masked(OP_TEXT, b"\xff"), "closed_protocol", 1007, "invalid UTF-8"),
        (masked(OP_CONTINUATION, b"x"), "closed_protocol", 1002, "unexpected continuation frame"),
        (masked(OP_BINARY, b"x" * 2000), "closed_too_big", 1009, "message too big"),
    ])
    def test_frame_errors(self, peer, wire, name, code, detail):
        p = peer(max_message_size=1024)
        cid = self.up(p)
        p.engine.receive_data(cid, wire)
        assert close_of(p.engine.data_to_send(cid))[0] == code
        assert cid not in p.engine
        assert p.conn_events == [self.ev(name, code, detail)]
        assert p.of("close") == [(cid, code)]

    def test_too_many_fragments(self, peer):
        p = peer(max_fragments=2)
        cid = self.up(p)
        p.engine.receive_data(cid, b"".join(masked(OP_TEXT if i == 0 else OP_CONTINUATION, b"x", fin=False)
                                            for i in range(3)))
        p.engine.data_to_send(cid)
        assert p.conn_events == [self.ev("closed_too_big", 1009, "too many fragments")]

    def test_pool_ceiling_1013(self, peer):
        p = peer(pool=BufferPool(size_classes=(1024, 64 * KiB), limit=128 * KiB,
                                 arena_size=64 * KiB), max_message_size=64 * KiB)
        holders = [self.up(p) for _ in range(3)]
        partial = masked(OP_BINARY, b"m" * 60000)[:2000]
        for cid in holders:
            p.engine.receive_data(cid, partial)
        # The first borrows the pool's one 64 KiB block; the others find it at its ceiling.
        assert p.engine.state(holders[0]) == OPEN
        for cid in holders[1:]:
            assert close_of(p.engine.data_to_send(cid))[0] == 1013
            assert cid not in p.engine
        assert p.conn_events == [self.ev("closed_nomem", 1013, "server out of buffer memory")] * 2

    def test_eof_on_an_open_websocket(self, peer):
        p = peer()
        cid = self.up(p)
        p.engine.receive_eof(cid)
        assert p.conn_events == [self.ev("closed_eof", 1006)]

    def test_pong_timeout_and_slow_reader(self, peer):
        p = peer(max_pending_output=200)
        a = self.up(p)
        p.engine.table.mark_ping_sent(a, 0)
        p.engine.sweep(pong_timeout_ms=1, now=1)
        b = self.up(p)
        p.engine.send(b, b"x" * 100)
        p.engine.send(b, b"x" * 150)
        assert a not in p.engine and b not in p.engine
        assert p.conn_events == [self.ev("closed_pong_timeout", 1006), self.ev("closed_slow_reader", 1006)]

    def test_handler_error_keeps_its_code_when_the_peer_echoes(self, peer):
        p = peer()
        p.hooks[b"boom"] = lambda cid: (_ for _ in ()).throw(RuntimeError("handler bug"))
        a, b = self.up(p), self.up(p)
        for cid in (a, b):
            p.engine.receive_data(cid, masked(OP_TEXT, b"boom"))
            assert close_of(p.engine.data_to_send(cid)) == (1011, b"internal error")
        p.engine.receive_data(a, masked(OP_CLOSE, close_payload(1000)))  # echoes something else
        p.engine.sweep(close_timeout_ms=1, now=(monotonic_ms() + LONG) % WRAP)  # b never answers
        assert p.conn_events == [self.ev("closed_handler_error", 1011)] * 2

    def test_a_normal_close_gives_way_to_its_close_timeout(self, peer):
        p = peer()
        p.engine.event_mask |= _core.EVENTS_NORMAL
        a, b = self.up(p), self.up(p)
        for cid in (a, b):
            p.engine.table.touch(cid, 0)
        p.engine.sweep(idle_timeout_ms=10, now=10)
        for cid in (a, b):
            assert close_of(p.engine.data_to_send(cid)) == (1001, b"idle timeout")
        p.engine.receive_data(a, masked(OP_CLOSE, close_payload(1001)))
        p.engine.table.mark_ping_sent(b, 10)
        p.engine.sweep(close_timeout_ms=5, now=20)
        assert p.conn_events == [self.ev("closed_idle", 1001), self.ev("closed_close_timeout", 1006)]

    def test_eof_after_our_close_keeps_the_first_reason(self, peer):
        p = peer()
        p.engine.event_mask |= _core.EVENTS_NORMAL
        cid = self.up(p)
        assert p.engine.close(cid, 4001, "bye")
        p.engine.data_to_send(cid)
        p.engine.receive_eof(cid)
        assert p.conn_events == [self.ev("closed_by_server", 4001)]

    def test_clean_ends_are_silent_by_default(self, peer):
        link = Link(peer(), peer(client=True))
        link.c.engine.close(link.ccid, 1000)
        link.pump()
        assert link.s.of("close") == [(link.scid, 1000)]
        other = self.up(link.s)
        link.s.engine.abort(other)
        link.s.engine.abort_all()
        assert link.s.conn_events == [] and link.c.conn_events == []

    def test_peer_close_with_normal_mask(self, peer):
        p = peer()
        p.engine.event_mask = _core.EVENTS_NORMAL
        cid = self.up(p)
        p.engine.receive_data(cid, masked(OP_CLOSE, close_payload(1000)))
        p.engine.data_to_send(cid)
        assert p.conn_events == [self.ev("closed_peer", 1000)]

    def test_mask_zero_or_no_callback_reports_nothing(self, peer):
        p = peer()
        p.engine.event_mask = 0
        p.engine.receive_eof(self.up(p))
        p.engine.event_mask = _core.EVENTS_ABNORMAL
        p.engine.on_event = None
        p.engine.receive_eof(self.up(p))
        assert p.conn_events == [] and p.counter("closed_eof") == 2

    def test_the_slot_is_free_and_reusable_when_it_is_reported(self, peer):
        """Python hears of the end after the slot is freed: sending to it is a no-op, and
        opening a connection from the callback reuses the slot without harm."""
        p = peer(max_pending=2)
        seen = []

        def on_event(reason, code, detail, ip, port):
            seen.append((cid in p.engine, p.engine.send(cid, b"late"), len(p.engine)))
            seen.append(p.engine.open_connection("192.0.2.99", 1))

        p.engine.on_event = on_event
        cid = self.up(p)
        p.engine.receive_eof(cid)
        assert seen[0] == (False, False, 0)
        assert seen[1] in p.engine and p.engine.peer(seen[1]) == ("192.0.2.99", 1)

    def test_a_raising_callback_is_logged_and_the_end_completes(self, peer, caplog):
        p = peer()

        def on_event(*args):
            raise ValueError("log handler bug")

        p.engine.on_event = on_event
        cid = self.up(p)
        p.engine.receive_eof(cid)
        assert cid not in p.engine and p.of("close") == [(cid, 1006)]
        assert "error in on_event" in caplog.text

    def test_set_peer_address_is_the_one_reported(self, peer):
        p = peer()
        cid = p.engine.open_connection("10.0.0.1", 9)
        assert p.engine.set_peer(cid, "2001:db8::5", 0)
        p.engine.receive_data(cid, b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 2000)
        p.engine.data_to_send(cid)
        assert p.conn_events == [("handshake_too_large", 431, "", "2001:db8::5", 0)]
