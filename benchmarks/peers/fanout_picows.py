"""Fan-out server with picows: the frame encoded once, written to every transport.

    python benchmarks/peers/fanout_picows.py --port 9014 [--loop uvloop]
    python benchmarks/peers/fanout_picows.py --port 9014 --send   # WSTransport.send each

picows has no broadcast helper. By default each ``publish SEQ`` read from stdin encodes
the notification once (orjson), frames it once (an unmasked text frame) and writes those
bytes to each subscriber's ``underlying_transport``: the cheapest fan-out picows allows.
``--send`` calls ``WSTransport.send(TEXT, data)`` for each subscriber instead (picows
frames the message again every time), the way its API invites. A connection that calls
``eth_subscribe("newHeads")`` joins the subscriber set (``_fanout.py``). picows does not
compress and sends no pings by default (``enable_auto_ping=False``); the rest is its
defaults (its sockets go through aiofastnet when that is installed, as it is here).
"""
from __future__ import annotations

import argparse
import secrets
import sys
from typing import Any

from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

from _cli import Stop, closer, run
from _fanout import control, notification, server_frame, subscribe_reply

SUB_ID = "0x" + secrets.token_hex(16)
TEXT, BINARY, CLOSE = WSMsgType.TEXT, WSMsgType.BINARY, WSMsgType.CLOSE
subscribers: dict[WSTransport, Any] = {}  # WSTransport -> its underlying asyncio transport


class Subscriber(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is TEXT or frame.msg_type is BINARY:
            if not frame.fin:  # subscribers send small whole messages only
                transport.send_close(1009)
                transport.disconnect()
                return
            reply, joined = subscribe_reply(frame.get_payload_as_memoryview(), SUB_ID)
            if joined > 0:
                subscribers[transport] = transport.underlying_transport
            elif joined < 0:
                subscribers.pop(transport, None)
            if reply is not None:
                transport.send(TEXT, reply)
        elif frame.msg_type is CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        subscribers.pop(transport, None)


def publish_frame(seq: int) -> int:
    data = server_frame(notification(SUB_ID, seq))
    for raw in subscribers.values():
        raw.write(data)
    return len(subscribers)


def publish_send(seq: int) -> int:
    data = notification(SUB_ID, seq)
    for transport in subscribers:
        transport.send(TEXT, data)
    return len(subscribers)


async def serve(args: argparse.Namespace) -> Stop:
    server = await ws_create_server(lambda _request: Subscriber(), args.host, args.port)
    publish = publish_send if SEND else publish_frame
    stop_reading = control(publish, lambda: len(subscribers))
    stop_server = closer(server)

    async def stop() -> None:
        stop_reading()
        await stop_server()

    return stop


SEND = "--send" in sys.argv
if SEND:
    sys.argv.remove("--send")  # _cli.run parses the common options only

if __name__ == "__main__":
    run(serve, __doc__.split("\n\n")[0], port=9014)
