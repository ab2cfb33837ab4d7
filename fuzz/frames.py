"""Fuzz target: the frame parser inside the sans-I/O Engine, both roles.

Input: ``flags, split seed, stream...``. The connection is taken through a valid
handshake first (server role: a client's upgrade request answered 101; client role:
the request queued, a valid 101 read), then ``stream`` is fed to it split by the seed
(``fuzzing.pieces``), then EOF.

flags bit 0: client role (the stream is the server's unmasked frames).
flags bit 1: chaos: the message callbacks act on the connection (close, abort, raise,
             send more, hold requests in flight so reading pauses), chosen by the
             message's first byte.
flags bit 2: a pool with a small ceiling, so buffering fails (1013) part-way.
flags bit 3 (client role): the stream starts with the server's response head instead
             of a valid 101: the core gathers it and ``fastrpc.client.check_response``
             judges it (it never raises; a refused head drops the connection).
flags bit 4: two server connections on one engine, the pieces dealt to them in turn;
             a message's callback acts on the *other* connection: closes or aborts it,
             feeds it bytes from inside the callback (a parse within a parse), sends to
             both with ``send_many``, holds its requests in flight, or drops itself and
             then feeds the other. Invariants only (bits 0-3 are ignored but bit 2).

Invariants, every input: no crash; the engine's output parses as whole frames with
minimal lengths, masked exactly in the client role, RSV 0, FIN set, nothing after a
close frame; ``on_close`` once per connection; no pool block in use once the
connection is gone. Plain mode (no chaos, roomy pool) is also differential against
the pure-Python ``tests/reference_codec.RefParser``: the same messages delivered, the
same pongs and echoes written, and the same close code (echoed, or the error's).
"""
from __future__ import annotations

import sys

from fuzzing import Frame, instrumented, main, parse_frames, pieces

with instrumented():
    from fastrpc import _core
    from fastrpc._core import HTTP_UPGRADE, BufferPool, Engine
    from fastrpc.client import ClientOptions, check_response
    from fastrpc.errors import ConnectError, ProtocolError
    from fastrpc.handshake import accept_key

from reference_codec import RefParser

MAX_MESSAGE = 1024  # small limits: the fuzzer reaches 1009 from short inputs
MAX_FRAGMENTS = 8
CLASSES = (64, 256, 1024, 8192)
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3
REQUEST = (b"GET /chat HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: " + KEY.encode() + b"\r\n"
           b"Sec-WebSocket-Version: 13\r\n\r\n")
RESPONSE = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(KEY).encode() + b"\r\n\r\n")
REASONS = set(_core._REASONS) | {"internal error", "bye"}
CHAOS_CLOSE_CODE = 4000
OPTIONS = ClientOptions()


class Conn:
    """One engine with one connection and every callback recorded."""

    def __init__(self, client: bool, chaos: bool, tight: bool, raw_head: bool = False) -> None:
        self.pool = (BufferPool(size_classes=CLASSES[:3], limit=3072, arena_size=1024) if tight
                     else BufferPool(size_classes=CLASSES, limit=1 << 20))
        self.client, self.chaos = client, chaos
        self.engine = e = Engine(self.pool, 0 if client else 2, 0 if client else 2,
                                 max_message_size=MAX_MESSAGE, max_fragments=MAX_FRAGMENTS,
                                 max_inflight=2, max_clients=2 if client else 0,
                                 max_handshake_size=1024)
        self.messages: list[tuple[int, bytes]] = []
        self.closes: list[int] = []
        self.inflight = 0
        e.on_handshake = lambda cid, head, ip, port: (RESPONSE, HTTP_UPGRADE)
        e.on_response = self.response
        self.head: bytes | None = None  # the response head on_response got
        e.on_text = lambda cid, payload: self.message(1, cid, payload)
        e.on_binary = lambda cid, payload: self.message(2, cid, payload)
        e.on_close = lambda cid, code: self.closes.append(code)
        self.out = bytearray()
        if client:
            self.cid = e.open_connection("198.51.100.20", 443, request=REQUEST)
            assert e.data_to_send(self.cid) == REQUEST
            if raw_head:
                return
            e.receive_data(self.cid, RESPONSE)
        else:
            self.cid = e.open_connection("192.0.2.10", 50000)
            e.receive_data(self.cid, REQUEST)
            assert e.data_to_send(self.cid) == RESPONSE
        assert e.state(self.cid) == 3, "not open after a valid handshake"  # SLOT_OPEN

    def response(self, cid: int, head: bytes) -> bool:
        assert cid == self.cid and self.head is None and type(head) is bytes
        assert head.find(b"\r\n\r\n") == len(head) - 4 and len(head) <= 1024, head
        self.head = head
        sub, err = check_response(head, KEY, OPTIONS, "ws://h/")
        assert (sub is None and type(err) is ConnectError) or (err is None and sub is None), (sub, err)
        return err is None

    def message(self, op: int, cid: int, payload: bytes) -> bytes | None:
        assert type(payload) is bytes and cid == self.cid
        self.messages.append((op, payload))
        if not self.chaos:
            return payload  # echo: every message is answered with itself
        act = payload[0] % 8 if payload else 0
        e = self.engine
        if act == 1:
            e.close(cid, CHAOS_CLOSE_CODE, b"bye")
        elif act == 2:
            e.abort(cid)
        elif act == 3:
            raise ValueError("handler failure")  # the engine closes with 1011
        elif act == 4:
            e.send(cid, payload * 3, binary=op == 2)
            return payload
        elif act == 5:
            e.begin(cid)  # a request in flight; two pause reading
            self.inflight += 1
        elif act == 6 and self.inflight > 0:
            self.inflight -= 1  # before end(): it resumes reading, and callbacks run
            e.end(cid)
        elif act == 7:
            e.sweep(close_timeout_ms=0)  # drops a connection already closing
        return None

    def feed(self, stream: bytes, seed: int) -> None:
        e = self.engine
        for piece in pieces(stream, seed):
            if self.cid not in e:
                break
            e.receive_data(self.cid, piece)
            self.out += e.data_to_send(self.cid)
        while self.inflight > 0 and self.cid in e:  # finish the requests: reading resumes
            self.inflight -= 1  # first: the callbacks end() resumes may end more
            e.end(self.cid)
            self.out += e.data_to_send(self.cid)
        if self.cid in e:
            e.receive_eof(self.cid)
        assert self.cid not in e and len(e) == 0
        assert self.pool.bytes_in_use == 0, f"{self.pool.bytes_in_use} pool bytes outlived the connection"
        assert len(self.closes) == 1, f"on_close ran {len(self.closes)} times"

    def frames(self) -> list[Frame]:
        frames = parse_frames(bytes(self.out))
        for i, f in enumerate(frames):
            assert f.masked == self.client, "masking of the role broken"
            assert f.fin and f.rsv == 0 and f.opcode in (1, 2, 8, 9, 10), f
            if f.opcode == 8:
                assert i == len(frames) - 1, "a frame after our close frame"
                p = f.payload
                assert len(p) != 1 and len(p) <= 125
                if len(p) >= 2:
                    assert _core.is_valid_close_code(int.from_bytes(p[:2], "big")), p
                    assert p[2:].decode("utf-8") in REASONS, p
        return frames


class Pair:
    """Two server connections on one engine whose callbacks reach across (bit 4)."""

    def __init__(self, tight: bool) -> None:
        self.pool = (BufferPool(size_classes=CLASSES[:3], limit=3072, arena_size=1024) if tight
                     else BufferPool(size_classes=CLASSES, limit=1 << 20))
        self.engine = e = Engine(self.pool, 2, 2, max_message_size=MAX_MESSAGE,
                                 max_fragments=MAX_FRAGMENTS, max_inflight=2, max_handshake_size=1024)
        e.on_handshake = lambda cid, head, ip, port: (RESPONSE, HTTP_UPGRADE)
        e.on_text = lambda cid, payload: self.message(False, cid, payload)
        e.on_binary = lambda cid, payload: self.message(True, cid, payload)
        e.on_close = lambda cid, code: self.closes[cid].append(code)
        self.cids = []
        for port in (50000, 50001):
            cid = e.open_connection("192.0.2.10", port)
            e.receive_data(cid, REQUEST)
            assert e.data_to_send(cid) == RESPONSE and e.state(cid) == 3
            self.cids.append(cid)
        self.closes: dict[int, list[int]] = {cid: [] for cid in self.cids}
        self.out = {cid: bytearray() for cid in self.cids}
        self.inflight = {cid: 0 for cid in self.cids}
        self.depth = 0

    def message(self, binary: bool, cid: int, payload: bytes) -> bytes | None:
        e = self.engine
        other = self.cids[1] if cid == self.cids[0] else self.cids[0]
        act = payload[0] % 8 if payload else 0
        if act == 1:
            e.close(other, CHAOS_CLOSE_CODE, b"bye")
        elif act == 2:
            e.abort(other)
        elif act in (3, 5) and self.depth == 0:
            if act == 5:
                e.abort(cid)  # the connection being parsed goes first
            self.depth += 1
            try:
                e.receive_data(other, payload[1:])
            finally:
                self.depth -= 1
        elif act == 4:
            e.send_many(list(self.cids), payload, 1 << 16, binary=binary)
        elif act == 6 and other in e:
            e.begin(other)
            self.inflight[other] += 1
        elif act == 7:
            raise ValueError("handler failure")
        else:
            return payload
        return None

    def drain(self) -> None:
        for cid in self.cids:
            self.out[cid] += self.engine.data_to_send(cid)

    def run(self, stream: bytes, seed: int) -> None:
        e = self.engine
        for i, piece in enumerate(pieces(stream, seed)):
            cid = self.cids[i % 2]
            if cid in e:
                e.receive_data(cid, piece)
            self.drain()
            if not any(c in e for c in self.cids):
                break
        for cid in self.cids:
            while self.inflight[cid] > 0 and cid in e:
                self.inflight[cid] -= 1
                e.end(cid)
                self.drain()
        for cid in self.cids:
            if cid in e:
                e.receive_eof(cid)
        assert len(e) == 0 and e.n_open == 0 and e.inflight_total == 0
        assert self.pool.bytes_in_use == 0, f"{self.pool.bytes_in_use} pool bytes outlived the connections"
        for cid in self.cids:
            assert len(self.closes[cid]) == 1, f"on_close ran {len(self.closes[cid])} times"
            frames = parse_frames(bytes(self.out[cid]))
            for j, f in enumerate(frames):
                assert not f.masked and f.fin and f.rsv == 0 and f.opcode in (1, 2, 8, 10), f
                assert f.opcode != 8 or j == len(frames) - 1, "a frame after our close frame"


def expected(stream: bytes, client: bool) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]], int | None]:
    """RefParser's view: (messages, frames the engine must write, close code or None)."""
    ref = RefParser(client=client, max_message_size=MAX_MESSAGE, max_fragments=MAX_FRAGMENTS)
    error = None
    try:
        events = ref.feed(stream)
    except ProtocolError as err:
        events, error = err.events, err.code
    messages, out = [], []
    for op, payload in events:
        if op in (1, 2):
            messages.append((op, payload))
            out.append((op, payload))
        elif op == 9:
            out.append((10, payload))
        elif op == 8:  # echoed: its code only, or nothing for an empty close
            out.append((8, payload[:2]))
            return messages, out, int.from_bytes(payload[:2], "big") if payload else 1005
    if error is not None:
        out.append((8, error.to_bytes(2, "big")))
    return messages, out, error


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, seed, stream = data[0], data[1], data[2:]
    if flags & 16:
        Pair(bool(flags & 4)).run(stream, seed)
        return
    client, chaos, tight = bool(flags & 1), bool(flags & 2), bool(flags & 4)
    raw_head = client and bool(flags & 8)
    c = Conn(client, chaos, tight, raw_head)
    c.feed(stream, seed)
    frames = c.frames()
    code = c.closes[0]
    assert code == 1005 or code == 1006 or _core.is_valid_close_code(code), code
    if raw_head:
        if c.head is None or check_response(c.head, KEY, OPTIONS, "ws://h/")[1] is not None:
            assert (c.messages, frames, code) == ([], [], 1006), "frames without an accepted 101"
            return
        stream = stream[len(c.head):]  # after the 101: the differential below
    if chaos or tight:
        return
    messages, out, want_code = expected(stream, client)
    assert c.messages == messages, "messages differ from the reference parser"
    got = [(f.opcode, f.payload[:2] if f.opcode == 8 else f.payload) for f in frames]
    assert got == out, "written frames differ from the reference parser"
    assert code == (1006 if want_code is None else want_code), (code, want_code)


if __name__ == "__main__":
    main(test_one_input)
