"""A small node-like app: ``fastrpc-demo [--port 8546] [--loop uvloop]`` (or ``python -m fastrpc.demo``).

Namespaces:

* ``net_version`` → ``"1337"``
* ``chain_blockNumber`` → the head number as a hex string; ``chain_getBlock(number)``
  → a block object (``null`` past the head)
* ``slow_sleep(seconds)``: a deliberately slow async method (times out past 2 s:
  -32001), and ``faulty_fail()``: a deliberately failing one (-32603, then -32002 once
  its circuit breaker opens). Neither slows ``chain_*`` down: each namespace has its
  own bulkhead.
* ``chain_subscribe("newHeads")``: a new head every second as
  ``chain_subscription`` notifications (WebSocket only).
* ``rpc_modules``: the namespaces above, as go-ethereum lists them.

Try it over HTTP (the ``Content-Type`` header is required, as on go-ethereum)::

    curl -s -H 'Content-Type: application/json' -d '{"jsonrpc":"2.0","id":1,"method":"chain_blockNumber"}' http://127.0.0.1:8546

or over WebSocket (``pip install websockets``)::

    python -c "import asyncio, json, websockets
    async def main():
        async with websockets.connect('ws://127.0.0.1:8546') as ws:
            await ws.send(json.dumps({'jsonrpc': '2.0', 'id': 1, 'method': 'chain_blockNumber'}))
            print(await ws.recv())
    asyncio.run(main())"
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import time
from typing import Any

from .errors import RPCError
from .server import Server


class Chain:
    """A toy chain: a new block every second."""

    def __init__(self) -> None:
        self.head = 0
        self.started = time.time()

    def block(self, n: int) -> dict[str, Any]:
        return {"number": hex(n), "hash": "0x%064x" % (n * 2654435761 % 2**256), "timestamp": hex(int(self.started) + n)}

    def blockNumber(self) -> str:
        return hex(self.head)

    def getBlock(self, number: int) -> dict[str, Any] | None:
        if number < 0:
            raise RPCError(-32602, "block number must not be negative")
        return self.block(number) if number <= self.head else None


class Slow:
    async def sleep(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds


class Faulty:
    def fail(self) -> None:
        raise RuntimeError("this method always fails (the traceback stays in the log)")


def build(chain: Chain) -> Server:
    server = Server()

    @server.method("net_version")
    def net_version() -> str:
        return "1337"

    server.register("chain", chain)
    server.register("slow", Slow(), timeout=2.0, max_concurrency=16)
    server.register("faulty", Faulty(), failure_threshold=3, cooldown=5.0)
    server.topic("chain", "newHeads")
    return server


async def run(host: str, port: int) -> None:
    chain = Chain()
    server = build(chain)
    await server.start(host, port)
    print(f"fastrpc demo node on ws://{host}:{server.port} and http://{host}:{server.port} "
          f"(health: http://{host}:{server.port}/health)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                chain.head += 1
                server.publish("chain.newHeads", chain.block(chain.head))
    finally:
        await server.stop()


def main() -> None:
    p = argparse.ArgumentParser(description="fastrpc demo node")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8546)
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    args = p.parse_args()
    use_uvloop = args.loop == "uvloop"
    if args.loop == "auto":
        try:
            import uvloop  # noqa: F401

            use_uvloop = True
        except ImportError:
            pass
    if use_uvloop:
        import uvloop

        uvloop.run(run(args.host, args.port))
    else:
        asyncio.run(run(args.host, args.port))


if __name__ == "__main__":
    main()
