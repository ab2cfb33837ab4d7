"""picows echo server for the memory benchmark (``benchmarks/memory.py``).

    python benchmarks/peers/echo_picows.py --port 9004 [--loop uvloop]

picows' frame-level listener (``ws_create_server`` + ``WSListener``) with its
defaults: no compression (picows has none), automatic pong replies, no automatic
pings, a 16 KiB initial read buffer per connection. Each data frame is sent back as
it came, with its FIN bit, so fragmented messages come back fragmented; picows
answers pings itself and does not pass them on.

``--max-connections`` is accepted so that every server in the benchmark takes the
same arguments; picows has no connection limit, so it is not used.
"""
from __future__ import annotations

import argparse

from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

from _cli import Stop, closer, run


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type != WSMsgType.PONG:
            transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)


def listener_factory(request: WSUpgradeRequest) -> Echo:
    return Echo()


async def serve(args: argparse.Namespace) -> Stop:
    server = await ws_create_server(listener_factory, args.host, args.port)
    return closer(server)


if __name__ == "__main__":
    run(serve, __doc__.split("\n\n")[0], port=9004)
