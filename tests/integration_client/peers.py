"""JSON-RPC servers this project did not write the WebSocket side of, for interop tests.

One JSON-RPC session (``Session``) behind two transports: the ``websockets`` server
and aiohttp's web server, both on 127.0.0.1 port 0, in the test's own loop. Each
message is handled in its own task, so slow calls do not hold up the others.

Methods:

* ``echo(x)``, ``add(a, b)`` (positional or named), ``sleep(seconds)`` (async);
* ``fail()``: error ``{-32000, "failed", {"why": "asked"}}``;
* ``note(...)``: meant as a notification; the params are kept in ``state.notes``;
* ``notify_me(n)``: sends ``n`` ``test_notice`` notifications, then answers ``n``;
* ``drop()``: drops the TCP connection without an answer (a server dying mid-call);
* ``close_me(code)``: closes the WebSocket with ``code`` without an answer;
* ``garbage()``: sends malformed messages (not JSON, a reply to an id never sent, a
  string id, a bare array of numbers, a JSON string), then answers ``"ok"``;
* ``bad_shape()`` / ``bad_error()``: a reply without result or error / with an error
  that is not an object;
* ``eth_subscribe("ticks", count, early=0, interval=0.005)``: a subscription id; sends
  ``early`` notifications *before* the reply, the rest after it, ``{"n": i}`` each;
  ``eth_unsubscribe(id)``: stops it, kept in ``state.unsubscribed``.
"""
from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import WSMsgType, web
from websockets.asyncio.server import ServerConnection, serve as ws_serve
from websockets.exceptions import ConnectionClosed

Send = Callable[[bytes], Awaitable[None]]


@dataclass
class PeerState:
    """What every session of one peer server saw."""

    notes: list[Any] = field(default_factory=list)
    unsubscribed: list[str] = field(default_factory=list)
    subscribed: list[str] = field(default_factory=list)
    calls: int = 0


class _Drop(Exception):
    pass


class Session:
    def __init__(self, state: PeerState, send: Send, abort: Callable[[], None],
                 close: Callable[[int], Awaitable[None]]) -> None:
        self.state = state
        self.send = send
        self.abort = abort
        self.close = close
        self.subs: dict[str, asyncio.Task[None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def message(self, data: bytes | str) -> None:
        t = asyncio.get_running_loop().create_task(self._handle(data))
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    def end(self) -> None:
        for t in list(self.subs.values()) + list(self.tasks):
            t.cancel()

    async def _handle(self, data: bytes | str) -> None:
        try:
            msg = orjson.loads(data)
            if type(msg) is list:
                replies = [r for r in [await self._one(m) for m in msg] if r is not None]
                if replies:
                    await self.send(orjson.dumps(replies))
                return
            reply = await self._one(msg)
            if reply is not None:
                await self.send(orjson.dumps(reply))
        except (_Drop, ConnectionClosed, ConnectionError):
            pass

    async def _one(self, m: dict[str, Any]) -> dict[str, Any] | None:
        self.state.calls += 1
        rid = m.get("id")
        method = m["method"]
        params = m.get("params", [])
        args = params if type(params) is list else []
        kw = params if type(params) is dict else {}
        result: Any
        if method == "echo":
            result = args[0] if args else kw.get("x")
        elif method == "add":
            result = (args[0] + args[1]) if args else kw["a"] + kw["b"]
        elif method == "sleep":
            await asyncio.sleep(args[0])
            result = args[0]
        elif method == "fail":
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32000, "message": "failed", "data": {"why": "asked"}}}
        elif method == "note":
            self.state.notes.append(params)
            return None
        elif method == "notify_me":
            for i in range(args[0]):
                await self.send(orjson.dumps({"jsonrpc": "2.0", "method": "test_notice", "params": [i]}))
            result = args[0]
        elif method == "drop":
            self.abort()
            raise _Drop
        elif method == "close_me":
            await self.close(args[0])
            raise _Drop
        elif method == "garbage":
            for junk in (b"not json", b"[1, 2]", b'{"jsonrpc":"2.0","id":999999,"result":1}',
                         b'{"jsonrpc":"2.0","id":"abc","result":1}', b'"a string"', b"{}"):
                await self.send(junk)
            result = "ok"
        elif method == "bad_shape":
            return {"jsonrpc": "2.0", "id": rid}
        elif method == "bad_error":
            return {"jsonrpc": "2.0", "id": rid, "error": "oops"}
        elif method == "eth_subscribe":
            sid = "0x" + secrets.token_hex(8)
            count = args[1]
            early = args[2] if len(args) > 2 else 0
            interval = args[3] if len(args) > 3 else 0.005
            self.state.subscribed.append(sid)
            for i in range(early):
                await self._notify(sid, i)
            self.subs[sid] = asyncio.get_running_loop().create_task(self._ticks(sid, early, count, interval))
            result = sid
        elif method == "eth_unsubscribe":
            task = self.subs.pop(args[0], None)
            if task is not None:
                task.cancel()
                self.state.unsubscribed.append(args[0])
            result = task is not None
        else:
            return {"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "Method not found"}}
        if rid is None:
            return None
        return {"jsonrpc": "2.0", "id": rid, "result": result}

    async def _notify(self, sid: str, i: int) -> None:
        await self.send(orjson.dumps({"jsonrpc": "2.0", "method": "eth_subscription",
                                      "params": {"subscription": sid, "result": {"n": i}}}))

    async def _ticks(self, sid: str, start: int, count: int, interval: float) -> None:
        try:
            await asyncio.sleep(0.002)  # after the subscribe reply
            for i in range(start, count):
                await self._notify(sid, i)
                if interval:
                    await asyncio.sleep(interval)
        except (ConnectionClosed, ConnectionError):
            pass


Stop = Callable[[], Awaitable[None]]


async def start_websockets(state: PeerState) -> tuple[int, Stop]:
    """The peer on the ``websockets`` server (no compression, no pings of its own)."""

    async def handler(ws: ServerConnection) -> None:
        async def send(data: bytes) -> None:
            await ws.send(data, text=True)

        async def close(code: int) -> None:
            await ws.close(code, "asked")

        session = Session(state, send, ws.transport.abort, close)
        try:
            async for data in ws:
                session.message(data)
        except ConnectionClosed:
            pass
        finally:
            session.end()

    server = await ws_serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None)
    port = server.sockets[0].getsockname()[1] if server.sockets else 0

    async def stop() -> None:
        server.close()
        await server.wait_closed()

    return int(port), stop


async def start_aiohttp(state: PeerState) -> tuple[int, Stop]:
    """The peer on aiohttp's web server (no compression, no heartbeat)."""

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(compress=False)
        await ws.prepare(request)

        async def send(data: bytes) -> None:
            await ws.send_str(data.decode())

        async def close(code: int) -> None:
            await ws.close(code=code, message=b"asked")

        def abort() -> None:
            assert request.transport is not None
            request.transport.abort()

        session = Session(state, send, abort, close)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                    session.message(msg.data)
        finally:
            session.end()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    app.router.add_get("/rpc", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return int(port), runner.cleanup


PEERS: dict[str, Callable[[PeerState], Awaitable[tuple[int, Stop]]]] = {
    "websockets": start_websockets,
    "aiohttp": start_aiohttp,
}
