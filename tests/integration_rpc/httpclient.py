"""A raw HTTP/1.1 client for the JSON-RPC-over-HTTP tests: every byte on the wire is ours.

Built on ``rawclient.open_socket`` (plain non-blocking sockets and ``loop.sock_*`` calls, so
it runs the same on asyncio and uvloop, and sockets left open are closed by the runner).
Unlike ``rawclient.http_request`` it reads responses framed by ``Content-Length``, so one
connection carries many requests (keep-alive) and pipelined answers are split apart.
Every wait is bounded by a timeout.
"""
from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import orjson
from rawclient import WAIT, HttpResponse, open_socket, parse_http_head

__all__ = ["HttpConn", "post_request"]


def post_request(
    body: Any = b"",
    *,
    path: str = "/",
    content_type: str | None = "application/json",
    headers: tuple[tuple[str, str], ...] = (),
    version: str = "HTTP/1.1",
    length: int | None = None,
    host: str | None = "127.0.0.1",
) -> bytes:
    """A POST with ``body`` (bytes as is, str encoded, anything else JSON-encoded);
    ``length`` overrides the Content-Length (None: the body's; -1: no header)."""
    if isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, (bytes, bytearray)):
        body = orjson.dumps(body)
    lines = [f"POST {path} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    n = len(body) if length is None else length
    if n >= 0:
        lines.append(f"Content-Length: {n}")
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + bytes(body)


class HttpConn:
    """One client connection; ``await HttpConn.open(port)``, then ``close()``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    @classmethod
    async def open(cls, port: int, **kw: Any) -> "HttpConn":
        sock = await open_socket(port, **kw)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small writes go out as written
        return cls(sock)

    async def send(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def post(self, body: Any = b"", *, timeout: float = WAIT, **kw: Any) -> HttpResponse:
        await self.send(post_request(body, **kw))
        return await self.read_response(timeout)

    async def call(self, method: str, params: Any = None, rid: Any = 1, **kw: Any) -> Any:
        """POST one request; the decoded JSON-RPC reply (the HTTP status must be 200)."""
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        resp = await self.post(msg, **kw)
        assert resp.status == 200, resp
        return orjson.loads(resp.body)

    async def _fill(self) -> None:
        try:
            chunk = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        except (ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.eof = True
            raise EOFError("the server closed the connection")
        self.buf += chunk

    async def read_response(self, timeout: float = WAIT) -> HttpResponse:
        """The next response: head, then ``Content-Length`` bytes of body."""

        async def read() -> HttpResponse:
            while b"\r\n\r\n" not in self.buf:
                await self._fill()
            end = self.buf.index(b"\r\n\r\n") + 4
            resp = parse_http_head(bytes(self.buf[:end]))
            n = int(resp.headers["content-length"])
            while len(self.buf) < end + n:
                await self._fill()
            resp.body = bytes(self.buf[end:end + n])
            resp.raw = bytes(self.buf[:end + n])
            del self.buf[:end + n]
            return resp

        return await asyncio.wait_for(read(), timeout)

    async def expect_eof(self, timeout: float = WAIT) -> None:
        """The server closes the connection with nothing more sent."""

        async def wait() -> None:
            while True:
                await self._fill()

        try:
            await asyncio.wait_for(wait(), timeout)
        except EOFError:
            assert not self.buf, f"unexpected bytes before EOF: {bytes(self.buf)!r}"
            return

    def close(self) -> None:
        self.sock.close()

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0), as a crashed or impatient client does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    async def __aenter__(self) -> "HttpConn":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
