"""websockets echo server for the memory benchmark (``benchmarks/memory.py``).

    python benchmarks/peers/echo_websockets.py --port 9002 [--loop uvloop] [--compression none]

The library's own asyncio implementation (``websockets.asyncio.server.serve``) with
every default kept: permessage-deflate is negotiated when the client offers it
(``--compression none`` turns it off), keepalive pings every 20 s, 1 MiB messages.
Every text and binary message is sent back as it came.

``--max-connections`` is accepted so that every server in the benchmark takes the
same arguments; websockets has no connection limit and allocates nothing per
limit, so the value is not used.
"""
from __future__ import annotations

import argparse

from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve

from _cli import Stop, closer, run


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def serve(args: argparse.Namespace) -> Stop:
    compression = None if args.compression == "none" else "deflate"
    server = await ws_serve(echo, args.host, args.port, compression=compression)
    return closer(server)


if __name__ == "__main__":
    run(serve, __doc__.split("\n\n")[0], port=9002, compression=True)
