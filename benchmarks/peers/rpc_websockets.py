"""JSON-RPC 2.0 over WebSocket with websockets (its asyncio implementation).

    python benchmarks/peers/rpc_websockets.py --port 9002 [--loop uvloop]

Written the way websockets' documentation recommends for speed: ``recv(decode=False)``
hands over text messages as ``bytes`` (no UTF-8 decode; orjson validates while parsing)
and ``send(bytes, text=True)`` sends them as text without re-encoding.

``compression=None``: permessage-deflate is off, as in every other server in the load
benchmark (none of them compresses; the benchmark client never offers it either). Other
settings are websockets' defaults, keepalive pings included.
"""
from __future__ import annotations

from typing import Awaitable, Callable

from websockets.asyncio.server import ServerConnection, serve as ws_serve
from websockets.exceptions import ConnectionClosed

from _cli import closer
from _rpc import handle, run


async def rpc(ws: ServerConnection) -> None:
    recv, send = ws.recv, ws.send
    try:
        while True:
            reply = handle(await recv(decode=False))
            if reply is not None:
                await send(reply, text=True)
    except ConnectionClosed:
        pass


async def serve(host: str, port: int) -> Callable[[], Awaitable[None]]:
    server = await ws_serve(rpc, host, port, compression=None)
    return closer(server)


if __name__ == "__main__":
    run(serve, __doc__.split("\n\n")[0])
