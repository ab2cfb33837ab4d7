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
import asyncio
import signal

from websockets.asyncio.server import ServerConnection, serve


async def echo(ws: ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def main(args: argparse.Namespace) -> None:
    compression = None if args.compression == "none" else "deflate"
    async with serve(echo, args.host, args.port, compression=compression):
        print(f"listening on {args.host}:{args.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9002)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--max-connections", type=int, default=0, help="accepted, not used")
    p.add_argument("--compression", choices=("deflate", "none"), default="deflate")
    args = p.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
