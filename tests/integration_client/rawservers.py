"""Servers written on asyncio streams, each breaking one rule a client must catch.

``RawServer(behaviour)`` listens on 127.0.0.1 port 0. For each connection it reads the
request head and calls ``behaviour(conn)``, an async function with the head, the
client's ``Sec-WebSocket-Key`` and the streams. Helpers:

* ``answer_101(key, accept=None, extra=b"", upgrade=b"websocket", connection=b"Upgrade")``
  builds a 101 with a chosen accept key (the right one by default) and extra headers;
* ``frames(conn)`` parses the client's (masked) frames with the core's own parser in
  server role and yields ``(opcode, payload)``;
* ``send_text(conn, data)`` writes an unmasked text frame.
"""
from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable

from fastrpc import _core
from fastrpc.handshake import accept_key


@dataclass
class Conn:
    head: bytes
    key: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


Behaviour = Callable[[Conn], Awaitable[None]]


def answer_101(key: str, accept: str | None = None, extra: bytes = b"", upgrade: bytes = b"websocket",
               connection: bytes = b"Upgrade") -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: " + upgrade + b"\r\nConnection: " + connection
            + b"\r\nSec-WebSocket-Accept: " + (accept if accept is not None else accept_key(key)).encode()
            + b"\r\n" + extra + b"\r\n")


async def frames(conn: Conn) -> AsyncIterator[tuple[int, bytes]]:
    pool = _core.BufferPool()
    parser = _core.FrameParser(pool)
    try:
        while True:
            data = await conn.reader.read(65536)
            if not data:
                return
            for event in parser.feed(data):
                yield event
    finally:
        parser.close()


def send_text(conn: Conn, data: bytes) -> None:
    conn.writer.write(_core.encode_frame(1, data))


class RawServer:
    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0
        self.heads: list[bytes] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> "RawServer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            m = re.search(rb"(?im)^sec-websocket-key:[ \t]*(\S+)", head)
            await self.behaviour(Conn(head, m.group(1).decode() if m else "", reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for w in self._writers:
                w.close()
            await self.server.wait_closed()

    async def __aenter__(self) -> "RawServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def drain_until_eof(conn: Conn) -> None:
    """Read and ignore everything (never answer a ping) until the client goes."""
    while await conn.reader.read(65536):
        pass
