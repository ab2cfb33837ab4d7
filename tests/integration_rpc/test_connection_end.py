"""A connection that ends cancels its calls still running (issue 3 §2: every path that
ends a connection cancels its tasks); other connections' calls are untouched."""
from __future__ import annotations

import asyncio
import json

import websockets

from fastrpc import Server


def test_closing_a_connection_cancels_its_running_calls(run, rpc_server):
    async def body():
        started = asyncio.Event()
        cancelled: list[int] = []

        class Slow:
            async def wait(self, tag: int) -> int:
                started.set()
                try:
                    await asyncio.sleep(30)
                except asyncio.CancelledError:
                    cancelled.append(tag)
                    raise
                return tag

            async def quick(self, tag: int) -> int:
                await asyncio.sleep(0.05)
                return tag

        srv = Server()
        srv.register("slow", Slow(), timeout=60)
        await rpc_server(srv)
        url = f"ws://127.0.0.1:{srv.port}"
        async with websockets.connect(url) as other:
            async with websockets.connect(url) as ws:
                await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "slow_wait", "params": [1]}))
                await asyncio.wait_for(started.wait(), 5)
                assert srv.dispatcher.in_flight == 1
                await other.send(json.dumps({"jsonrpc": "2.0", "id": 2, "method": "slow_quick", "params": [2]}))
            # ws is closed: its call is cancelled, the other connection's call completes.
            reply = json.loads(await asyncio.wait_for(other.recv(), 5))
            assert reply == {"jsonrpc": "2.0", "id": 2, "result": 2}
            for _ in range(200):
                if cancelled:
                    break
                await asyncio.sleep(0.01)
            assert cancelled == [1]
            assert srv.dispatcher.in_flight == 0
            assert srv.reactor.inflight_total == 0

    run(body())
