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

from aiohttp import WSMsgType, web

from _cli import Stop, run


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


async def serve(args: argparse.Namespace) -> Stop:
    runner = web.AppRunner(make_app(args.compression == "deflate"))
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    return runner.cleanup


if __name__ == "__main__":
    run(serve, __doc__.split("\n\n")[0], port=9003, compression=True)
