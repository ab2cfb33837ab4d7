"""The JSON-RPC server the load benchmark runs (benchmarks/load.py): the same methods
as the peers' servers in benchmarks/peers/.

    python examples/rpc_server.py --port 9002 [--loop uvloop]
"""
from __future__ import annotations

import argparse

from _serve import run, serve

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
    await serve(build(args.max_connections), args.host, args.port)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9002)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--max-connections", type=int, default=10_000)
    a = p.parse_args()
    run(lambda: main(a), a.loop)
