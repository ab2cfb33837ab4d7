"""Fuzz target: the HTTP phase, the core's early request-line check and
``fastrpc.handshake.handle_request``, wired together as ``fastrpc.Server`` wires them.

Input: ``flags, split seed, stream...``: the bytes a client sends on one connection
(requests, pipelined, JSON-RPC bodies, frames after an upgrade), fed to a server-role
Engine split by the seed. Request heads go through ``handle_request``; an accepted
JSON-RPC ``POST`` goes through ``fastrpc.http.HttpRpc`` (body, keep-alive, next request).

flags bit 0: JSON-RPC over HTTP is served (``max_http_body``=512).
flags bit 1: a strict policy: upgrade paths, an Origin allowlist, subprotocols, and an
             auth hook refusing requests that carry ``X-Deny``.
flags bit 2: admission refuses upgrades (503 with Retry-After), as a full server does.
flags bit 3: every answer but a 101 is deferred (``HTTP_DEFER``) and given with
             ``respond()`` after the bytes of that read: pipelined bytes wait in the
             core meanwhile and are parsed then, as with async handlers.

Invariants: no crash; ``handle_request`` never raises and always returns a Decision
whose status is one it documents (never 500: no hook here fails) with a response that
says that status; every head handed over ends at its first blank line and is within
the size limit; the rule-by-rule diagnosis never disagrees with the one-pass grammar;
the output is exactly the responses given to the engine, in order, plus at most one of
the core's own refusals, then (after a 101) whole unmasked frames; a request line the
core refuses early is one ``handle_request`` refuses too; the same stream split
differently gives the same heads, bodies and output (Date headers aside); no pool
block in use once the connection is gone.
"""
from __future__ import annotations

import re

from fuzzing import instrumented, main, parse_frames, pieces

with instrumented():
    from fastrpc._core import HTTP_BODY, HTTP_DEFER, HTTP_KEEP_ALIVE, HTTP_UPGRADE, BufferPool, Engine
    from fastrpc.handshake import Decision, HandshakePolicy, handle_request
    from fastrpc.http import HttpRpc
    from fastrpc.limits import Limits
    from fastrpc.service import Registry

HEAD_LIMIT = 1024
BODY_LIMIT = 512
# Every status handle_request may answer with these hooks (none raises: never 500).
STATUSES = {101, 200, 400, 401, 403, 404, 405, 411, 413, 415, 426, 431, 503, 505}
_date = re.compile(rb"\r\nDate: [^\r]*").sub


def policy(flags: int) -> HandshakePolicy:
    strict = bool(flags & 2)
    return HandshakePolicy(
        allowed_origins=["https://*.example.com", "null", None] if strict else None,
        auth=(lambda path, headers: 403 if any(n.lower() == "x-deny" for n, _ in headers) else True)
        if strict else None,
        subprotocols=("v2", "v1") if strict else (),
        paths={"/rpc", "/ws"} if strict else None,
        max_handshake_size=HEAD_LIMIT,
        max_http_body=BODY_LIMIT if flags & 1 else None,
    )


def check_decision(d: Decision, head: bytes | None) -> None:
    assert type(d) is Decision, d
    assert d.status in STATUSES, (d.status, d.reason)
    # The diagnosis is a fallback for heads the one-pass grammar refuses: for a head
    # that ends at its first blank line, reaching its catch-all means the two disagree.
    if head is not None:
        assert d.reason != "malformed request head", head
    if d.upgrade:
        assert d.status == 101 and d.response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert d.response.endswith(b"\r\n\r\n")
    elif d.rpc:
        assert d.status == 200 and d.response == b"" and 0 <= d.body_length <= BODY_LIMIT
    else:
        assert d.response.startswith(b"HTTP/1.1 %d " % d.status), d.response[:40]
        assert b"\r\nConnection: close\r\n" in d.response
        assert (d.status == 200) == (d.reason == ""), d


class Server:
    """A server-role Engine with handle_request and HttpRpc behind it; records what
    crossed each callback."""

    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.policy = policy(flags)
        self.pool = BufferPool(size_classes=(64, 256, 1024, 8192))
        self.engine = e = Engine(self.pool, 2, 2, max_handshake_size=HEAD_LIMIT,
                                 max_message_size=4096)
        reg = Registry()
        reg.add("t_echo", lambda x=None: x)
        reg.add_rpc_modules()
        self.http = HttpRpc(e, reg, Limits(max_http_body=BODY_LIMIT))
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.answers: list[bytes] = []  # every response handed to the engine, in order
        self.upgraded = False
        self.defer = bool(flags & 8)
        self.deferred: list[tuple[bytes, bool]] = []  # (response, keep_alive) to respond()
        e.on_handshake = self.on_handshake
        e.on_body = self.on_body
        e.on_http_close = self.http.on_http_close
        e.on_text = lambda cid, payload: payload
        e.on_binary = lambda cid, payload: payload
        e.on_close = lambda cid, code: None

    def on_handshake(self, cid: int, head: bytes, ip: str, port: int) -> tuple[object, object]:
        assert type(head) is bytes and len(head) <= HEAD_LIMIT, len(head)
        assert head.find(b"\r\n\r\n") == len(head) - 4, head
        self.heads.append(head)
        refuse = (lambda: (503, "server full", [("Retry-After", "5")])) if self.flags & 4 else None
        d = handle_request(head, self.policy, health=lambda: (200, {"ok": True}), admit=refuse)
        check_decision(d, head)
        if d.rpc:
            response, action = self.http.on_request(cid, d)
            if action == HTTP_BODY:
                return response, action
            return self.answer(response, action)
        self.upgraded = d.upgrade
        if d.upgrade:
            self.answers.append(d.response)
            return d.response, HTTP_UPGRADE
        return self.answer(d.response, 0)

    def answer(self, response: bytes, action: int) -> tuple[bytes, int]:
        assert type(response) is bytes
        self.answers.append(response)
        if self.defer:
            self.deferred.append((response, action == HTTP_KEEP_ALIVE))
            return b"", HTTP_DEFER
        return response, action

    def on_body(self, cid: int, body: bytes) -> tuple[bytes, int]:
        self.bodies.append(body)
        response, action = self.http.on_body(cid, body)
        return self.answer(response, action)

    def run(self, stream: bytes, seed: int) -> bytes:
        e = self.engine
        cid = e.open_connection("192.0.2.7", 40000)
        out = bytearray()
        for piece in pieces(stream, seed):
            if cid not in e:
                break
            e.receive_data(cid, piece)
            out += e.data_to_send(cid)
            while self.deferred and cid in e:  # the "async" answers, after this read
                response, keep_alive = self.deferred.pop(0)
                assert e.respond(cid, response, keep_alive), "respond() refused a deferred answer"
                out += e.data_to_send(cid)
            assert not self.deferred or cid not in e
        if cid in e:
            e.receive_eof(cid)
        assert len(e) == 0 and e.n_pending == 0 and e.n_open == 0
        assert self.pool.bytes_in_use == 0, f"{self.pool.bytes_in_use} pool bytes outlived the connection"
        return bytes(out)


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    flags, seed, stream = data[0], data[1], data[2:]
    s = Server(flags)
    out = s.run(stream, seed)
    answered = b"".join(s.answers)
    assert out.startswith(answered), "output is not the responses given, in order"
    tail = out[len(answered):]
    e = s.engine
    if s.upgraded:
        for f in parse_frames(tail):
            assert not f.masked and f.fin and f.rsv == 0 and f.opcode in (1, 2, 8, 10), f
    else:
        assert tail in (b"", e.http_400, e.http_431), tail[:60]
    if not s.upgraded and tail == e.http_400:
        # The core refused a request line as it arrived: handle_request refuses it too.
        start = sum(map(len, s.heads)) + sum(map(len, s.bodies))
        line = stream[start:].split(b"\r\n", 1)[0]
        d = handle_request(line + b"\r\nHost: h\r\n\r\n", s.policy, health=lambda: (200, {}))
        check_decision(d, None)
        assert not d.upgrade and not d.rpc and d.status >= 400, (line, d.status)
    if not s.upgraded and tail == e.http_431:
        start = sum(map(len, s.heads)) + sum(map(len, s.bodies))
        assert b"\r\n\r\n" not in stream[start:start + HEAD_LIMIT]
    # The same bytes in one piece: the same requests seen, the same answers written.
    if seed != 0:
        whole = Server(flags)
        out0 = whole.run(stream, 0)
        assert (whole.heads, whole.bodies) == (s.heads, s.bodies), "split changed what was parsed"
        assert _date(b"", out0) == _date(b"", out), "split changed the output"


if __name__ == "__main__":
    main(test_one_input)
