"""Request counters (issue 11) of a real server, over WebSocket and HTTP on 127.0.0.1.

The per-method counters belong to the methods, so the WebSocket and the HTTP
dispatchers of one server count into the same ones; the dispatcher counters (parse
errors, unknown methods, batches, notifications) are each dispatcher's own. Every test
runs on asyncio and uvloop.
"""
from __future__ import annotations

import asyncio

import orjson
from helpers import TINY, wait_until
from httpclient import HttpConn
from rpcclient import RpcClient

from fastrpc import RPCError, Server
from fastrpc.dispatch import DURATION_BUCKETS


class Chain:
    def blockNumber(self) -> str:
        return "0x10"

    def fail(self) -> None:
        raise RuntimeError("on purpose")

    def reject(self) -> None:
        raise RPCError(-32050, "no")


class Slow:
    async def echo(self, value: object) -> object:
        await asyncio.sleep(0.01)
        return value


def make() -> Server:
    srv = Server(limits=TINY)
    srv.register("chain", Chain())
    srv.register("slow", Slow(), timeout=0.5)
    srv.topic("chain", "newHeads")
    return srv


def outcomes(stats: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
    out = {}
    for name, s in stats.items():
        assert sum(s["buckets"]) == s["success"] + s["error"] + s["failure"] + s["timeout"]  # type: ignore[operator]
        assert len(s["buckets"]) == len(DURATION_BUCKETS) + 1  # type: ignore[arg-type]
        out[name] = {k: v for k, v in s.items() if k not in ("buckets", "sum") and v}
    return out


def test_websocket_and_http_calls_counted_once(run, rpc_server):
    async def body():
        srv = await rpc_server(make())
        async with await RpcClient.open(srv.port) as c:
            for _ in range(3):
                assert await c.call("chain_blockNumber") == "0x10"
            assert (await c.call_raw("chain_fail"))["error"]["code"] == -32603
            assert (await c.call_raw("chain_reject"))["error"]["code"] == -32050
            assert (await c.call_raw("nope_nope"))["error"]["code"] == -32601
            assert await c.call("slow_echo", ["x"]) == "x"
            await c.ws.send(b"{not json")
            await c.ws.send(orjson.dumps([{"jsonrpc": "2.0", "id": "b1", "method": "chain_blockNumber"},
                                          {"jsonrpc": "2.0", "id": "b2", "method": "slow_echo", "params": [1]},
                                          {"jsonrpc": "2.0", "id": "b3", "method": "nope_other"}]))
            await wait_until(lambda: len(c.unexpected) == 2, what="the id-null error and the batch answer")
            sub = await c.call("chain_subscribe", ["newHeads"])
            assert srv.publish("chain.newHeads", {"n": 1}) == 1
            assert srv.publish("chain.newHeads", {"n": 2}) == 1
            await c.wait_notifications(2)
            assert await c.call("chain_unsubscribe", [sub]) is True
        async with await HttpConn.open(srv.port) as h:
            assert (await h.call("chain_blockNumber"))["result"] == "0x10"
            assert (await h.call("chain_blockNumber", rid=2))["result"] == "0x10"
            assert (await h.call("nope_nope", rid=3))["error"]["code"] == -32601
            assert (await h.call("chain_subscribe", ["newHeads"], rid=4))["error"]["code"] == -32601
        ws, http = srv.dispatcher, srv._http.dispatcher  # type: ignore[union-attr]
        assert outcomes(ws.method_stats()) == {
            "chain_blockNumber": {"success": 3 + 1 + 2},  # WebSocket, its batch, HTTP
            "chain_fail": {"failure": 1},
            "chain_reject": {"error": 1},
            "slow_echo": {"success": 2},
            "chain_subscribe": {"success": 1, "error": 1},  # over HTTP: "notifications not supported"
            "chain_unsubscribe": {"success": 1},
        }
        assert http.method_stats() == ws.method_stats()  # the methods' own counters
        assert ws.method_stats()["slow_echo"]["sum"] >= 0.02  # two calls of at least 10 ms
        m = ws.metrics()
        assert (m["parse_errors"], m["invalid_requests"], m["unknown_methods"]) == (1, 0, 2)
        assert (m["batches"], m["batch_sum"], m["batch_buckets"][2]) == (1, 3, 1)  # 3 entries: <= 5
        assert m["notifications_sent"] == 2
        h = http.metrics()
        assert (h["parse_errors"], h["unknown_methods"], h["batches"], h["notifications_sent"]) == (0, 1, 0, 0)

    run(body())
