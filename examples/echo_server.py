"""Echo every text and binary message back: the server protocol-conformance runs use.

    python examples/echo_server.py --port 9001 [--loop uvloop] [--max-message-size 16777216]
"""
from __future__ import annotations

import argparse

from _serve import run, serve

from fastrpc.limits import Limits
from fastrpc.server import Server


class Echo:
    def on_text(self, cid: int, data: bytes) -> bytes:
        return data

    def on_binary(self, cid: int, data: bytes) -> bytes:
        return data

    def on_close(self, cid: int, code: int) -> None:
        pass


async def main(args: argparse.Namespace) -> None:
    size = args.max_message_size
    classes = (1024, 8192, 65536, max(1024 * 1024, 1 << (size - 1).bit_length()))
    limits = Limits(
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_per_ip or args.max_connections,
        max_message_size=size,
        # Autobahn group 9 sends 4 MiB in 64-byte fragments and echoes 16 MiB at once.
        max_fragments=max(65_536, size // 64),
        max_pending_output=max(4 * 1024 * 1024, 2 * size + 14),
        pool_size_classes=classes,
        memory_limit=max(256 * 1024 * 1024, 8 * classes[-1]),
    )
    await serve(Server(Echo(), limits=limits), args.host, args.port)


def cli() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9001)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--max-connections", type=int, default=10_000)
    p.add_argument("--max-per-ip", type=int, default=0, help="default: max-connections")
    p.add_argument("--max-message-size", type=int, default=16 * 1024 * 1024)
    args = p.parse_args()
    run(lambda: main(args), args.loop)


if __name__ == "__main__":
    cli()
