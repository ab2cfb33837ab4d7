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
import asyncio
import signal

from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
        elif frame.msg_type != WSMsgType.PONG:
            transport.send(frame.msg_type, frame.get_payload_as_memoryview(), frame.fin)


def listener_factory(request: WSUpgradeRequest) -> Echo:
    return Echo()


async def main(args: argparse.Namespace) -> None:
    server = await ws_create_server(listener_factory, args.host, args.port)
    print(f"listening on {args.host}:{args.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await server.wait_closed()


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9004)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--max-connections", type=int, default=0, help="accepted, not used")
    args = p.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))


if __name__ == "__main__":
    cli()
