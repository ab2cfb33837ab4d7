"""fastrpc.http over the sans-I/O Engine: POST bodies through the HTTP dispatcher.

No sockets: the compiled ``Engine`` is driven with ``receive_data`` / ``data_to_send`` /
``receive_eof``, wired as the server wires it (``handle_request`` → ``HttpRpc.on_request``,
``on_body`` → ``HttpRpc.on_body``). Checks the answer paths (now, deferred, silent), the
per-request record's lifetime, and that a connection gone mid-call is swept and its call
cancelled. The pool must be fully returned after each test.
"""
from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from fastrpc import _core
from fastrpc.handshake import HandshakePolicy, handle_request
from fastrpc.http import HttpRpc
from fastrpc.limits import Limits
from fastrpc.service import Context, Registry

LIMITS = Limits(max_http_body=4096, request_timeout=1.0)


class Harness:
    def __init__(self) -> None:
        self.pool = _core.BufferPool()
        self.engine = _core.Engine(self.pool, 8, 8)
        self.registry = Registry()
        self.registry.add_rpc_modules()
        self.cancelled = 0
        self.release = asyncio.Event()
        self.draining = False
        reg = self.registry
        reg.add("t_echo", lambda v: v)

        async def wait(v: Any) -> Any:
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
            return v

        async def quick(v: Any) -> Any:
            await asyncio.sleep(0)
            return v

        reg.add("t_wait", wait)
        reg.add("t_quick", quick)
        reg.topic("t", "ticks")
        self.http = HttpRpc(self.engine, reg, LIMITS, keep_headers=True, draining=lambda: self.draining)
        self.policy = HandshakePolicy(max_http_body=LIMITS.http_body_limit)
        self.engine.on_handshake = self.on_handshake
        self.engine.on_body = self.http.on_body
        self.engine.on_http_close = self.http.on_http_close
        self.engine.on_text = lambda cid, data: None

    def on_handshake(self, cid: int, head: bytes, ip: str, port: int) -> Any:
        d = handle_request(head, self.policy)
        return self.http.on_request(cid, d) if d.rpc else (d.response, d.upgrade)

    def connect(self) -> int:
        return self.engine.open_connection()

    def send(self, cid: int, *bodies: Any, headers: str = "") -> None:
        data = b""
        for body in bodies:
            raw = body if isinstance(body, bytes) else orjson.dumps(body)
            data += (f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}"
                     f"Content-Length: {len(raw)}\r\n\r\n").encode() + raw
        assert self.engine.receive_data(cid, data)

    def responses(self, cid: int) -> list[tuple[bytes, bytes]]:
        """(head, body) of every response written so far."""
        data = self.engine.data_to_send(cid)
        out = []
        while data:
            head, _, rest = data.partition(b"\r\n\r\n")
            n = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            out.append((head, rest[:n]))
            data = rest[n:]
        return out

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)

    def done(self) -> None:
        assert len(self.engine) == 0 and self.http._requests == {}
        assert self.pool.bytes_in_use == 0


def call(method: str, params: Any, rid: Any = 1) -> dict[str, Any]:
    msg = {"jsonrpc": "2.0", "method": method, "params": params}
    if rid is not None:
        msg["id"] = rid
    return msg


def run(coro_fn: Any) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 10))


def test_sync_answered_at_once_and_record_gone():
    async def main():
        h = Harness()
        cid = h.connect()
        h.send(cid, call("t_echo", [1]))
        ((head, body),) = h.responses(cid)
        assert head.startswith(b"HTTP/1.1 200 OK") and orjson.loads(body)["result"] == 1
        assert h.http._requests == {} and h.engine.state(cid) == 1  # reading the next head
        h.engine.receive_eof(cid)
        h.done()

    run(main)


def test_deferred_then_pipelined_next():
    async def main():
        h = Harness()
        cid = h.connect()
        h.send(cid, call("t_wait", ["w"]), call("t_echo", ["next"]))
        assert h.responses(cid) == [] and h.http.in_flight == 1
        assert h.http.metrics()["http_rpc_deferred"] == 1
        h.release.set()
        await h.settle()
        (a, b) = h.responses(cid)
        assert orjson.loads(a[1])["result"] == "w" and orjson.loads(b[1])["result"] == "next"
        assert h.http.in_flight == 0 and h.http._requests == {}
        h.engine.receive_eof(cid)
        h.done()

    run(main)


def test_async_notifications_answered_empty_when_done():
    async def main():
        h = Harness()
        cid = h.connect()
        h.send(cid, [call("t_quick", [1], None), call("t_quick", [2], None), call("t_echo", [3], None)])
        assert h.responses(cid) == []  # deferred: calls are running
        await h.settle()
        ((head, body),) = h.responses(cid)
        assert body == b"" and b"Content-Length: 0" in head
        h.engine.receive_eof(cid)
        h.done()

    run(main)


def test_batch_with_async_entries_one_answer():
    async def main():
        h = Harness()
        cid = h.connect()
        h.send(cid, [call("t_quick", ["a"], 1), call("t_echo", ["b"], 2), call("t_subscribe", ["ticks"], 3)])
        await h.settle()
        ((_, body),) = h.responses(cid)
        answer = orjson.loads(body)
        assert [r["id"] for r in answer] == [1, 2, 3]
        assert answer[2]["error"] == {"code": -32601, "message": "notifications not supported"}
        h.engine.receive_eof(cid)
        h.done()

    run(main)


def test_connection_gone_mid_call_is_cancelled():
    async def main():
        h = Harness()
        cid = h.connect()
        h.send(cid, call("t_wait", [1]))
        await h.settle()
        assert h.http.in_flight == 1
        h.engine.receive_eof(cid)  # the core drops the slot and reports it: on_http_close
        assert cid not in h.engine and h.http.in_flight == 0
        await h.settle()
        assert h.cancelled == 1 and h.http.in_flight == 0
        assert h.http.dispatcher.in_flight == 0
        assert h.http.metrics()["http_rpc_abandoned"] == 1
        h.done()

    run(main)


def test_connection_gone_during_body_is_forgotten():
    async def main():
        h = Harness()
        cid = h.connect()
        assert h.engine.receive_data(cid, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                           b"Content-Length: 100\r\n\r\n{")
        assert cid in h.http._requests
        h.engine.receive_eof(cid)
        assert h.http._requests == {} and h.http.metrics()["http_rpc_abandoned"] == 0
        h.done()

    run(main)


@pytest.mark.parametrize("draining", [False, True])
def test_keep_alive_and_draining(draining):
    async def main():
        h = Harness()
        h.draining = draining
        cid = h.connect()
        h.send(cid, call("t_echo", [1]))
        ((head, _),) = h.responses(cid)
        assert (b"Connection: close" in head) is draining
        assert (cid in h.engine) is not draining
        if not draining:
            h.engine.receive_eof(cid)
        h.done()

    run(main)


def test_headers_for_context_live_with_the_request():
    async def main():
        h = Harness()
        seen = []

        def hdr(ctx: Context) -> str | None:
            seen.append(ctx.peer)
            return ctx.header("X-A")

        h.registry.add("t_header", hdr)
        cid = h.connect()
        h.send(cid, call("t_header", []), headers="X-A: 1\r\n")
        ((_, body),) = h.responses(cid)
        assert orjson.loads(body)["result"] == "1" and seen == [("127.0.0.1", 0)]
        assert h.http.headers(cid) is None  # gone with its request
        h.engine.receive_eof(cid)
        h.done()

    run(main)


def test_aclose_cancels_running_calls():
    async def main():
        h = Harness()
        cid = h.connect()
        h.send(cid, call("t_wait", [1]))
        await h.settle()
        await h.http.aclose()
        assert h.cancelled == 1 and h.http._requests == {}
        h.engine.receive_eof(cid)
        h.done()

    run(main)
