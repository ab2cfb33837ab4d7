"""The command line every peer server takes, and its lifetime: ``--host``, ``--port``,
``--loop asyncio|uvloop``, ``--max-connections`` (accepted so every server in a
benchmark takes the same arguments; no peer has such a limit) and, for peers that
can compress, ``--compression deflate|none``. The server prints
``listening on HOST:PORT`` and stops cleanly on SIGINT or SIGTERM.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any, Awaitable, Callable

__all__ = ["closer", "run"]

Stop = Callable[[], Awaitable[None]]


def closer(server: Any) -> Stop:
    """``stop()`` for a server object with ``close()`` and ``wait_closed()``
    (websockets' and picows' servers, like asyncio's)."""

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return stop


def run(serve: Callable[[argparse.Namespace], Awaitable[Stop]], description: str, *,
        port: int, compression: bool = False) -> None:
    """Parse the command line and run ``serve(args)`` on the chosen loop.

    ``serve`` starts listening and returns an async ``stop()``; this prints the
    ``listening`` line, waits for SIGINT/SIGTERM, then awaits ``stop()``.
    """
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    p.add_argument("--max-connections", type=int, default=0, help="accepted, not used")
    if compression:
        p.add_argument("--compression", choices=("deflate", "none"), default="deflate")
    args = p.parse_args()

    async def main() -> None:
        stop_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop_event.set)
        stop = await serve(args)
        print(f"listening on {args.host}:{args.port}", flush=True)
        await stop_event.wait()
        await stop()

    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
