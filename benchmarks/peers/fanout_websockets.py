"""Fan-out server with websockets: ``broadcast()`` to every subscriber.

    python benchmarks/peers/fanout_websockets.py --port 9012 [--loop uvloop]

websockets' asyncio server; a connection that calls ``eth_subscribe("newHeads")`` joins
the subscriber set (``_fanout.py``: one id shared by all). On each ``publish SEQ`` read
from stdin the notification is encoded once (orjson) and handed to
``websockets.asyncio.server.broadcast(subscribers, data, text=True)``, the library's own
fan-out helper (``text=True``: bytes already UTF-8 go out as a text frame, what its
documentation recommends for JSON). ``compression=None`` (permessage-deflate would
compress the message again for every connection) and ``ping_interval=None`` (no
keepalive pings inside the measured window), as in every fan-out server; the rest is
websockets' defaults.
"""
from __future__ import annotations

import argparse
import secrets

from websockets.asyncio.server import ServerConnection, broadcast, serve as ws_serve
from websockets.exceptions import ConnectionClosed

from _cli import Stop, closer, run
from _fanout import control, notification, subscribe_reply

SUB_ID = "0x" + secrets.token_hex(16)
subscribers: set[ServerConnection] = set()


async def handler(ws: ServerConnection) -> None:
    try:
        while True:
            reply, joined = subscribe_reply(await ws.recv(decode=False), SUB_ID)
            if joined > 0:
                subscribers.add(ws)
            elif joined < 0:
                subscribers.discard(ws)
            if reply is not None:
                await ws.send(reply, text=True)
    except ConnectionClosed:
        pass
    finally:
        subscribers.discard(ws)


def publish(seq: int) -> int:
    broadcast(subscribers, notification(SUB_ID, seq), text=True)
    return len(subscribers)


async def serve(args: argparse.Namespace) -> Stop:
    server = await ws_serve(handler, args.host, args.port, compression=None,
                            ping_interval=None)
    stop_reading = control(publish, lambda: len(subscribers))
    stop_server = closer(server)

    async def stop() -> None:
        stop_reading()
        await stop_server()

    return stop


if __name__ == "__main__":
    run(serve, __doc__.split("\n\n")[0], port=9012)
