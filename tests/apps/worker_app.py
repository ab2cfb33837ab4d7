"""An app for ``fastrpc serve tests.apps.worker_app:build``: tells which worker answered."""
from __future__ import annotations

import asyncio
import os

from fastrpc import Limits, Server


def build() -> Server:
    server = Server(limits=Limits(max_connections=2_000, max_connections_per_ip=2_000,
                                  drain_timeout=5.0, close_timeout=2.0))

    @server.method("whoami")
    def whoami() -> int:
        return os.getpid()

    @server.method("sleep")
    async def sleep(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    return server


app = build()  # the module-level form: ``tests.apps.worker_app:app``
