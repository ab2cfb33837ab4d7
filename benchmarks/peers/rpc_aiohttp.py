"""JSON-RPC 2.0 over WebSocket with aiohttp's web server.

    python benchmarks/peers/rpc_aiohttp.py --port 9003 [--loop uvloop]

One route, ``GET /`` (any path would do for the benchmark client, which asks for ``/``).
``WebSocketResponse(compress=False, decode_text=False)``: no permessage-deflate (as in
every server in the load benchmark) and text messages handed over as ``bytes`` (no UTF-8
decode; orjson validates while parsing). Replies go out with ``send_frame(..., TEXT)``,
which takes orjson's ``bytes`` as they are. The access log is off (it would log one
line per connection, not per request). Other settings are aiohttp's defaults.
"""
from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import WSMsgType, web

from _rpc import handle, run

TEXT, BINARY = WSMsgType.TEXT, WSMsgType.BINARY


async def rpc(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, decode_text=False)
    await ws.prepare(request)
    send = ws.send_frame
    async for msg in ws:
        if msg.type is TEXT or msg.type is BINARY:
            reply = handle(msg.data)
            if reply is not None:
                await send(reply, TEXT)
    return ws


async def serve(host: str, port: int) -> Callable[[], Awaitable[None]]:
    app = web.Application()
    app.router.add_get("/", rpc)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner.cleanup


if __name__ == "__main__":
    run(serve, __doc__.split("\n\n")[0])
