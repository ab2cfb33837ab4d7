"""Shared pieces of the integration tests: the tiny limits, the echo handler, polling."""
from __future__ import annotations

import asyncio
from typing import Callable

from fastrpc.limits import KiB, MiB, Limits
from fastrpc.server import Server

#: Small enough that every limit is reached with a handful of sockets and bytes.
TINY = Limits(
    max_connections=32,
    max_connections_per_ip=32,
    max_pending_handshakes=16,
    retry_after=7,
    memory_limit=4 * MiB,
    pool_size_classes=(1 * KiB, 8 * KiB, 64 * KiB),
    max_handshake_size=2 * KiB,
    handshake_timeout=5.0,
    max_message_size=64 * KiB,
    max_fragments=16,
    max_requests_in_flight=8,
    write_high_water=64 * KiB,
    max_pending_output=512 * KiB,
    idle_timeout=None,
    ping_interval=None,
    pong_timeout=None,
    close_timeout=1.0,
    drain_timeout=2.0,
)

#: Upper bound on one test's coroutine (pytest-timeout's 120 s is the outer guard).
TEST_TIMEOUT = 60.0


class Echo:
    """Echo every text and binary message; record every close."""

    def __init__(self) -> None:
        self.closes: list[tuple[int, int]] = []

    def on_text(self, cid: int, data: bytes) -> bytes:
        return data

    def on_binary(self, cid: int, data: bytes) -> bytes:
        return data

    def on_close(self, cid: int, code: int) -> None:
        self.closes.append((cid, code))


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``pred`` every 10 ms until it holds; AssertionError after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


def ws_url(srv: Server, path: str = "/") -> str:
    return f"ws://127.0.0.1:{srv.port}{path}"
