"""JSON-RPC 2.0 over HTTP/1.1 with aiohttp's web server (the peer of ``http_load.py``).

    python benchmarks/peers/http_aiohttp.py --port 9004 [--loop uvloop]

One route, ``POST /``: the body goes to ``_rpc.handle`` (the dispatcher every peer
shares) and its reply comes back as ``200`` with ``Content-Type: application/json``; a
request that needs no reply (a notification, or a batch of them) gets ``204``. Any
other method or path is aiohttp's own 405 / 404. The access log is off (it would
format one line per request). Keep-alive and every other setting are aiohttp's
defaults (keep-alive 75 s; client_max_size 1 MiB).
"""
from __future__ import annotations

from typing import Awaitable, Callable

from aiohttp import web

from _rpc import handle, run

JSON = "application/json"


async def rpc(request: web.Request) -> web.Response:
    reply = handle(await request.read())
    if reply is None:
        return web.Response(status=204)
    return web.Response(body=reply, content_type=JSON)


async def serve(host: str, port: int) -> Callable[[], Awaitable[None]]:
    app = web.Application()
    app.router.add_post("/", rpc)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner.cleanup


if __name__ == "__main__":
    run(serve, __doc__.split("\n\n")[0])
