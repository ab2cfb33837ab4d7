"""The JSON-RPC limits of ``fastrpc.limits.Limits`` driven past their edge over real sockets.

* ``max_batch_length`` → one -32600 "batch too large", nothing runs, the connection lives;
* ``max_batch_response_size`` → the entries past the cap become -32006 with their ids;
* ``request_timeout`` → -32001 (and a namespace's own timeout wins over it);
* ``max_requests_in_flight``: with 2, a client pipelining 10 calls to an async method
  that waits on an event sees the server hold 2 and stop reading (``read_pauses``
  rises); once the event is set all 10 are answered.
"""
from __future__ import annotations

import asyncio

import orjson
import pytest
from helpers import TINY, wait_until
from rpcclient import RpcClient, RpcError, ws_connect

from fastrpc.errors import INVALID_REQUEST, REQUEST_TIMEOUT, RESPONSE_TOO_LARGE
from fastrpc.server import Server

WAIT = 5.0


class Lim:
    def __init__(self) -> None:
        self.ticks = 0
        self.gate: asyncio.Event | None = None
        self.started = 0

    def tick(self) -> int:
        self.ticks += 1
        return self.ticks

    def count(self) -> int:
        return self.ticks

    def big(self, n: int) -> str:
        return "x" * n

    async def abig(self, n: int) -> str:
        await asyncio.sleep(0)
        return "y" * n

    async def hang(self) -> None:
        await asyncio.sleep(3600)

    async def wait(self, i: int) -> int:
        self.started += 1
        if self.gate is None:
            self.gate = asyncio.Event()
        await self.gate.wait()
        return i


class Own:
    async def hang(self) -> None:
        await asyncio.sleep(3600)


def build(**overrides) -> tuple[Server, Lim]:
    lim = Lim()
    srv = Server(limits=TINY.replace(**overrides))
    srv.register("lim", lim)
    srv.register("own", Own(), timeout=0.1)
    return srv, lim


def req(rid, method, params=None) -> dict:
    msg = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    return msg


async def send_recv(ws, msg) -> object:
    await ws.send(orjson.dumps(msg).decode())
    return orjson.loads(await asyncio.wait_for(ws.recv(), WAIT))


def test_batch_too_large(run, rpc_server):
    async def body():
        srv, lim = build(max_batch_length=5)
        await rpc_server(srv)
        async with ws_connect(srv.port) as ws:
            reply = await send_recv(ws, [req(i, "lim_tick") for i in range(6)])
            assert reply == {"jsonrpc": "2.0", "id": None, "error": {"code": INVALID_REQUEST, "message": "batch too large"}}
            assert lim.ticks == 0, "nothing of a refused batch runs"
            # The connection survives; exactly the limit is served.
            reply = await send_recv(ws, [req(i, "lim_tick") for i in range(5)])
            assert [r["result"] for r in reply] == [1, 2, 3, 4, 5]
            assert await send_recv(ws, req(9, "lim_count")) == {"jsonrpc": "2.0", "id": 9, "result": 5}

    run(body())


@pytest.mark.parametrize("method", ["lim_big", "lim_abig"])
def test_batch_response_too_large(run, rpc_server, method):
    async def body():
        srv, lim = build(max_batch_response_size=1000)
        await rpc_server(srv)
        async with ws_connect(srv.port) as ws:
            batch = [req(i, method, [300]) for i in range(1, 4)] + [req(4, "lim_tick"), {"jsonrpc": "2.0", "method": "lim_tick"}]
            reply = await send_recv(ws, batch)
            assert [r["id"] for r in reply] == [1, 2, 3, 4]
            assert [len(r["result"]) for r in reply[:2]] == [300, 300]
            too_large = {"code": RESPONSE_TOO_LARGE, "message": "response too large"}
            assert reply[2]["error"] == too_large
            assert len(orjson.dumps(reply)) <= 1000
            if method == "lim_big":
                # Synchronous entries are counted in request order: the entry with an
                # id after the cap was reached did not run; the notification did.
                assert reply[3]["error"] == too_large
                assert await send_recv(ws, req(5, "lim_count")) == {"jsonrpc": "2.0", "id": 5, "result": 1}
            else:
                # Async replies are counted as they finish: the synchronous lim_tick
                # answered first (it fits), then the third async reply did not.
                assert reply[3]["result"] == 1
                assert await send_recv(ws, req(5, "lim_count")) == {"jsonrpc": "2.0", "id": 5, "result": 2}
            # A single call is not limited by the batch answer's size.
            single = await send_recv(ws, req(6, method, [5000]))
            assert len(single["result"]) == 5000

    run(body())


def test_request_timeout(run, rpc_server):
    async def body():
        srv, lim = build(request_timeout=0.2)
        await rpc_server(srv)
        async with await RpcClient.open(srv.port) as c:
            for method in ("lim_hang", "own_hang"):
                with pytest.raises(RpcError) as info:
                    await c.call(method, None, WAIT)
                assert info.value.code == REQUEST_TIMEOUT and info.value.message == "request timed out"
            # Several at once, pipelined: each gets its own -32001, and the connection
            # keeps answering meanwhile.
            futs = [await c.request("lim_hang") for _ in range(3)]
            assert await c.call("lim_tick") == 1
            for f in futs:
                assert (await asyncio.wait_for(f, WAIT))["error"]["code"] == REQUEST_TIMEOUT
            services = srv.dispatcher.metrics()["services"]
            assert services["lim"]["timeouts"] == 4 and services["own"]["timeouts"] == 1
            assert srv.dispatcher.in_flight == 0 and srv.reactor.inflight_total == 0

    run(body())


N_PIPELINED = 10


def test_requests_in_flight_per_connection(run, rpc_server):
    async def body():
        srv, lim = build(max_requests_in_flight=2)
        await rpc_server(srv)
        pauses_before = srv.metrics()["read_pauses"]
        async with await RpcClient.open(srv.port) as c, await RpcClient.open(srv.port) as other:
            futs = [await c.request("lim_wait", [i]) for i in range(N_PIPELINED)]
            await wait_until(lambda: lim.started == 2, WAIT, "two calls to start")
            assert srv.metrics()["read_pauses"] > pauses_before
            # The server stopped reading this connection at 2 in flight: the others
            # wait in the socket, not in the server. Another connection is served.
            assert await other.call("lim_tick") == 1
            await asyncio.sleep(0.05)  # a chance to read more, if it (wrongly) would
            assert lim.started == 2 and srv.reactor.inflight_total == 2
            assert srv.dispatcher.in_flight == 2
            assert not any(f.done() for f in futs)
            lim.gate.set()
            replies = [await asyncio.wait_for(f, WAIT) for f in futs]
            assert [r["result"] for r in replies] == list(range(N_PIPELINED))
            assert lim.started == N_PIPELINED
            assert srv.reactor.inflight_total == 0
            assert c.unexpected == []
        print(f"\nread_pauses: {pauses_before} -> {srv.metrics()['read_pauses']}")

    run(body())
