"""A minimal JSON-RPC 2.0 client over the ``websockets`` client, for tests.

One reader task per connection routes replies to the call that sent their id, so many
calls can be in flight on one connection (pipelining) and several tasks can share it.
Notifications (no id) are kept in ``notifications`` in arrival order; a reply whose id
nobody waits for is kept in ``unexpected`` (a test can assert it stays empty).

Every wait is bounded: ``call`` takes a timeout; ``close`` cancels the reader.
"""
from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

WAIT = 5.0


def ws_connect(port: int, **kw: Any) -> Any:
    """``websockets`` client to 127.0.0.1:port: no proxy lookup, no pings of its own,
    no compression (the server has none), bounded open/close."""
    kw.setdefault("proxy", None)
    kw.setdefault("ping_interval", None)
    kw.setdefault("open_timeout", WAIT)
    kw.setdefault("close_timeout", WAIT)
    kw.setdefault("compression", None)
    kw.setdefault("max_size", 4 << 20)
    return connect(f"ws://127.0.0.1:{port}/", **kw)


class RpcError(Exception):
    """The reply was an error object (``code``, ``message``)."""

    def __init__(self, reply: dict[str, Any]) -> None:
        err = reply["error"]
        super().__init__(err.get("code"), err.get("message"))
        self.code = err.get("code")
        self.message = err.get("message")
        self.reply = reply


class RpcClient:
    _ids = itertools.count(1)

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.pending: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.raw_notifications: list[bytes | str] = []
        self.unexpected: list[Any] = []
        self._note_event = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.closed_with: Any = None  #: the ConnectionClosedError that ended the reader, if any
        self.close_rcvd: Any = None  #: the server's close frame (``websockets.frames.Close``), once read

    @classmethod
    async def open(cls, port: int, **kw: Any) -> "RpcClient":
        ws = await ws_connect(port, **kw)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                msg = orjson.loads(message)
                if type(msg) is dict and "id" in msg:
                    fut = self.pending.pop(msg["id"], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
                    else:
                        self.unexpected.append(msg)
                elif type(msg) is dict and "method" in msg:
                    self.notifications.append(msg)
                    self.raw_notifications.append(message)
                    self._note_event.set()
                else:
                    self.unexpected.append(msg)
        except ConnectionClosed as exc:
            self.closed_with = exc
        finally:
            self.close_rcvd = self.ws.protocol.close_rcvd
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed before the reply"))
            self.pending.clear()
            self._note_event.set()

    async def request(self, method: str, params: Any = None, rid: Any = None) -> "asyncio.Future[dict[str, Any]]":
        """Send one call now; the returned future resolves to the whole reply object."""
        if rid is None:
            rid = next(self._ids)
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        await self.ws.send(orjson.dumps(msg).decode())
        return fut

    async def call_raw(self, method: str, params: Any = None, timeout: float = WAIT) -> dict[str, Any]:
        """One round trip; returns the reply object (result or error)."""
        fut = await self.request(method, params)
        return await asyncio.wait_for(fut, timeout)

    async def call(self, method: str, params: Any = None, timeout: float = WAIT) -> Any:
        """One round trip; returns the result or raises ``RpcError``."""
        reply = await self.call_raw(method, params, timeout)
        if "error" in reply:
            raise RpcError(reply)
        return reply["result"]

    async def timed_call(self, method: str, params: Any = None, timeout: float = WAIT) -> tuple[Any, float]:
        """``call`` and its round-trip time in seconds (for reports, never asserts)."""
        t0 = time.perf_counter()
        result = await self.call(method, params, timeout)
        return result, time.perf_counter() - t0

    async def wait_notifications(self, n: int, timeout: float = WAIT) -> list[dict[str, Any]]:
        """Wait until at least ``n`` notifications arrived; AssertionError after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.notifications) < n:
            if self._reader.done():
                raise AssertionError(f"connection ended with {len(self.notifications)} of {n} notifications")
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"{len(self.notifications)} of {n} notifications after {timeout} s")
            self._note_event.clear()
            try:
                await asyncio.wait_for(self._note_event.wait(), left)
            except (asyncio.TimeoutError, TimeoutError):
                pass
        return self.notifications

    async def close(self) -> None:
        try:
            await self.ws.close()
        finally:
            try:
                await asyncio.wait_for(asyncio.shield(self._reader), WAIT)
            except (asyncio.TimeoutError, TimeoutError):
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)

    async def __aenter__(self) -> "RpcClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``samples``."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]
