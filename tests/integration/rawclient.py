"""A raw WebSocket / HTTP client for integration tests: every byte on the wire is ours.

Real client libraries refuse to misbehave; these helpers send what a test asks for
(unmasked frames, RSV bits, half a request, nothing at all) and read only when the test
asks them to, so a client that "never reads" really leaves the bytes in the kernel.

* Frames out are built by ``fastrpc._core.encode_frame`` (``mask=True``: client role),
  or handed over raw with ``send_raw``.
* Frames in are parsed by the pure-Python ``reference_codec.RefParser`` in client role:
  an independent reader, so a malformed frame from the server fails the test.
* Built on ``loop.sock_*`` calls on a plain non-blocking socket, so it runs the same on
  asyncio and uvloop and nothing is read ahead behind the test's back.

Every wait takes a timeout (seconds) and every read loop is bounded by it.
"""
from __future__ import annotations

import asyncio
import base64
import os
import socket
import weakref
from collections import deque
from dataclasses import dataclass, field

from reference_codec import OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, RefParser, ref_parse_close

from fastrpc._core import encode_frame

__all__ = [
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "ClosedByServer",
    "HandshakeRefused",
    "HttpResponse",
    "RawWS",
    "close_leftover_sockets",
    "http_request",
    "open_socket",
    "parse_http_head",
    "read_until_eof",
    "upgrade_request",
]

#: Every socket these helpers opened and nobody closed yet; the test runner closes the
#: leftovers after stopping the servers, so a failing test leaks no descriptor.
OPEN_SOCKETS: "weakref.WeakSet[socket.socket]" = weakref.WeakSet()

#: Default wait for one expected event. Generous: the machine may be loaded.
WAIT = 5.0
READ_CHUNK = 65536


class ClosedByServer(Exception):
    """A data message was expected but the server's close frame came instead."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


@dataclass
class HttpResponse:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)  # lower-cased names
    body: bytes = b""
    raw: bytes = b""


class HandshakeRefused(Exception):
    """The server answered the upgrade with something other than 101."""

    def __init__(self, response: HttpResponse) -> None:
        super().__init__(response.status, response.reason)
        self.response = response


def upgrade_request(
    path: str = "/",
    host: str = "127.0.0.1",
    key: str | None = None,
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A valid RFC 6455 §4.1 opening handshake request."""
    key = key or base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{k}: {v}" for k, v in extra),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_http_head(raw: bytes) -> HttpResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, *reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return HttpResponse(int(status), reason[0] if reason else "", headers, body, raw)


async def open_socket(
    port: int,
    *,
    host: str = "127.0.0.1",
    local_ip: str | None = None,
    rcvbuf: int | None = None,
    timeout: float = WAIT,
) -> socket.socket:
    """A connected non-blocking TCP socket (``local_ip``: source address, e.g. 127.0.0.2;
    ``rcvbuf``: SO_RCVBUF set before connecting, which caps the receive window)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    OPEN_SOCKETS.add(sock)
    try:
        sock.setblocking(False)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if local_ip is not None:
            sock.bind((local_ip, 0))
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def _recv(sock: socket.socket, n: int = READ_CHUNK) -> bytes:
    """One recv; b"" at EOF or reset (a reset is how a dropped peer often looks)."""
    try:
        return await asyncio.get_running_loop().sock_recv(sock, n)
    except (ConnectionResetError, BrokenPipeError):
        return b""


async def read_until_eof(sock: socket.socket, timeout: float = WAIT, limit: int = 64 << 20) -> bytes:
    """Everything the peer sends until it closes; TimeoutError if it never does."""
    data = bytearray()

    async def loop() -> None:
        while len(data) < limit:
            chunk = await _recv(sock)
            if not chunk:
                return
            data.extend(chunk)
        raise AssertionError(f"more than {limit} bytes without EOF")

    await asyncio.wait_for(loop(), timeout)
    return bytes(data)


async def http_request(
    port: int,
    request: bytes,
    *,
    local_ip: str | None = None,
    timeout: float = WAIT,
) -> HttpResponse:
    """Send ``request`` on a fresh connection, read the answer until the server closes."""
    sock = await open_socket(port, local_ip=local_ip, timeout=timeout)
    try:
        await asyncio.get_running_loop().sock_sendall(sock, request)
        raw = await read_until_eof(sock, timeout)
    finally:
        sock.close()
    assert raw, "connection closed without an HTTP answer"
    return parse_http_head(raw)


class RawWS:
    """One raw WebSocket connection. Use ``await RawWS.open(port)``, then ``close()``
    (or ``async with``)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = RefParser(client=True, max_message_size=1 << 30, max_fragments=1 << 20)
        self.events: deque[tuple[int, bytes]] = deque()
        self.eof = False
        self.close_frame: tuple[int, str] | None = None  #: (code, reason) once received
        self.response: HttpResponse | None = None

    # --- opening --------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        local_ip: str | None = None,
        path: str = "/",
        extra: tuple[tuple[str, str], ...] = (),
        rcvbuf: int | None = None,
        timeout: float = WAIT,
    ) -> "RawWS":
        """Connect and complete the opening handshake; ``HandshakeRefused`` when the
        answer is not 101 (the socket is then closed)."""
        sock = await open_socket(port, local_ip=local_ip, rcvbuf=rcvbuf, timeout=timeout)
        ws = cls(sock)
        try:
            await ws.send_raw(upgrade_request(path, extra=extra))
            await ws.read_handshake(timeout)
        except BaseException:
            sock.close()
            raise
        return ws

    @classmethod
    async def connect_only(cls, port: int, *, local_ip: str | None = None, timeout: float = WAIT) -> "RawWS":
        """TCP connection only: nothing sent yet (for handshake tests)."""
        return cls(await open_socket(port, local_ip=local_ip, timeout=timeout))

    async def read_handshake(self, timeout: float = WAIT) -> HttpResponse:
        """Read the HTTP answer head; bytes after it go to the frame parser."""
        buf = bytearray()

        async def loop() -> None:
            while b"\r\n\r\n" not in buf:
                chunk = await _recv(self.sock)
                if not chunk:
                    self.eof = True
                    return
                buf.extend(chunk)
                if len(buf) > 65536:
                    raise AssertionError("HTTP answer head over 64 KiB")

        await asyncio.wait_for(loop(), timeout)
        if b"\r\n\r\n" not in buf:
            raise AssertionError(f"connection closed during the handshake answer: {bytes(buf)!r}")
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        resp = parse_http_head(head + b"\r\n\r\n")
        self.response = resp
        if resp.status != 101:
            # The body follows (Content-Length) and then the server closes.
            body = rest
            if not self.eof:
                body += await read_until_eof(self.sock, timeout)
            resp.body = body
            raise HandshakeRefused(resp)
        if rest:
            self._feed(rest)
        return resp

    # --- writing ----------------------------------------------------------------------

    async def send_raw(self, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def send_frame(
        self, opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bool = True, rsv: int = 0
    ) -> None:
        await self.send_raw(encode_frame(opcode, payload, fin=fin, mask=mask, rsv=rsv))

    async def send_text(self, data: str | bytes) -> None:
        await self.send_frame(OP_TEXT, data.encode() if isinstance(data, str) else data)

    async def send_binary(self, data: bytes) -> None:
        await self.send_frame(OP_BINARY, data)

    async def send_close(self, code: int | None = 1000, reason: bytes = b"") -> None:
        payload = b"" if code is None else code.to_bytes(2, "big") + reason
        await self.send_frame(OP_CLOSE, payload)

    # --- reading ----------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        for ev in self.parser.feed(data):
            if ev[0] == OP_CLOSE:
                self.close_frame = ref_parse_close(ev[1])
            self.events.append(ev)

    async def _fill(self) -> bool:
        """Read once into the parser; False at EOF."""
        if self.eof:
            return False
        chunk = await _recv(self.sock)
        if not chunk:
            self.eof = True
            return False
        self._feed(chunk)
        return True

    async def recv_event(self, timeout: float = WAIT) -> tuple[int, bytes] | None:
        """The next frame event ``(opcode, payload)`` (data messages whole, pings, pongs,
        the close frame); ``None`` at EOF. TimeoutError when nothing comes."""

        async def loop() -> tuple[int, bytes] | None:
            while not self.events:
                if not await self._fill():
                    return None
            return self.events.popleft()

        return await asyncio.wait_for(loop(), timeout)

    async def recv(self, timeout: float = WAIT) -> tuple[int, bytes]:
        """The next data message ``(opcode, payload)``, skipping pings and pongs.
        ``ClosedByServer`` on a close frame; ``EOFError`` when dropped without one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            ev = await self.recv_event(max(0.0, deadline - loop.time()))
            if ev is None:
                raise EOFError("connection dropped without a close frame")
            op, payload = ev
            if op in (OP_TEXT, OP_BINARY):
                return op, payload
            if op == OP_CLOSE:
                code, reason = ref_parse_close(payload)
                raise ClosedByServer(code, reason)

    async def expect_close(self, timeout: float = WAIT, *, reply: bool = True) -> tuple[int, str]:
        """Read until the server's close frame (data messages before it are skipped and
        kept in ``skipped``); with ``reply`` send our close back (same code) and wait for
        the server to end TCP. Returns ``(code, reason)``; AssertionError when the
        connection drops without a close frame."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.skipped: list[tuple[int, bytes]] = []
        while True:
            ev = await self.recv_event(max(0.0, deadline - loop.time()))
            if ev is None:
                raise AssertionError("connection dropped without a close frame")
            if ev[0] == OP_CLOSE:
                break
            self.skipped.append(ev)
        code, reason = ref_parse_close(ev[1])
        if reply:
            try:
                await self.send_close(None if code == 1005 else code)
            except (ConnectionError, OSError):
                pass  # the server may already have closed TCP after a fatal error
            await self.expect_eof(max(0.1, deadline - loop.time()))
        return code, reason

    async def expect_eof(self, timeout: float = WAIT) -> list[tuple[int, bytes]]:
        """Read until the server ends TCP; returns the events seen on the way."""

        async def loop() -> list[tuple[int, bytes]]:
            seen = list(self.events)
            self.events.clear()
            while await self._fill():
                seen.extend(self.events)
                self.events.clear()
            return seen

        return await asyncio.wait_for(loop(), timeout)

    async def expect_dropped(self, timeout: float = WAIT) -> list[tuple[int, bytes]]:
        """The server must end TCP without a close frame. Returns the events before EOF."""
        seen = await self.expect_eof(timeout)
        closes = [ev for ev in seen if ev[0] == OP_CLOSE]
        assert not closes, f"expected a drop without a close frame, got {closes}"
        return seen

    async def expect_silence(self, duration: float) -> None:
        """Nothing may arrive for ``duration`` seconds (the connection stays open)."""
        try:
            ev = await self.recv_event(duration)
        except (TimeoutError, asyncio.TimeoutError):
            return
        raise AssertionError(f"expected nothing, got {ev!r}")

    # --- closing ----------------------------------------------------------------------

    def close(self) -> None:
        self.sock.close()

    async def __aenter__(self) -> "RawWS":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def close_leftover_sockets() -> int:
    """Close every socket opened here and still open; returns how many."""
    n = 0
    for sock in list(OPEN_SOCKETS):
        if sock.fileno() >= 0:
            sock.close()
            n += 1
    OPEN_SOCKETS.clear()
    return n
