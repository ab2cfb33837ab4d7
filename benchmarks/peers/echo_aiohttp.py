"""aiohttp echo server for the memory benchmark (``benchmarks/memory.py``).

    python benchmarks/peers/echo_aiohttp.py --port 9003 [--loop uvloop] [--compression none]

A ``web.WebSocketResponse`` handler on ``/`` with aiohttp's defaults: ``compress=True``
(permessage-deflate when the client offers it; ``--compression none`` passes
``compress=False``), no heartbeat, automatic pong replies, 4 MiB messages.
Every text and binary message is sent back as it came.

``--max-connections`` is accepted so that every server in the benchmark takes the
same arguments; aiohttp has no WebSocket connection limit, so it is not used.
"""
from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import WSMsgType, web


def make_app(compress: bool) -> web.Application:
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=compress)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/", echo)
    return app


async def main(args: argparse.Namespace) -> None:
    runner = web.AppRunner(make_app(args.compression == "deflate"))
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"listening on {args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9003)
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
