"""What the example scripts share: serve until SIGINT/SIGTERM, on asyncio or uvloop.

A script's business, not the library's: fastrpc itself installs no signal handlers.
``FASTRPC_PRINT_METRICS=1`` prints ``server.metrics()`` on the way out (messages per
readiness batch when measuring: ``messages_in / batches``).
"""
from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, Callable, Coroutine

from fastrpc import Server


async def serve(server: Server, host: str, port: int) -> None:
    """Start ``server``, print where it listens, stop it gracefully on a signal."""
    await server.start(host, port)
    print(f"listening on {host}:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if os.environ.get("FASTRPC_PRINT_METRICS"):
        print(server.metrics(), flush=True)
    await server.stop()


def run(main: Callable[[], Coroutine[Any, Any, None]], loop: str) -> None:
    """Run ``main()`` on ``loop``: "asyncio" or "uvloop"."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
