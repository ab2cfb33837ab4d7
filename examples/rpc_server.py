"""The JSON-RPC server the load benchmark runs (benchmarks/load.py): the same methods
as the peers' servers in benchmarks/peers/.

    python examples/rpc_server.py --port 9002 [--loop uvloop]
"""
from __future__ import annotations

import argparse
import asyncio
import signal

from fastrpc import Limits, Server


def build(max_connections: int) -> Server:
    server = Server(limits=Limits(max_connections=max_connections, max_connections_per_ip=max_connections))

    @server.method("echo")
    def echo(x):  # type: ignore[no-untyped-def]
        return x

    @server.method("add")
    def add(a, b):  # type: ignore[no-untyped-def]
        return a + b

    @server.method("eth_blockNumber")
    def block_number() -> str:
        return "0x10d4f"

    return server


async def main(args: argparse.Namespace) -> None:
    server = build(args.max_connections)
    await server.start(args.host, args.port)
    print(f"listening on {args.host}:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9002)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--max-connections", type=int, default=10_000)
    a = p.parse_args()
    if a.loop == "uvloop":
        import uvloop

        uvloop.run(main(a))
    else:
        asyncio.run(main(a))
