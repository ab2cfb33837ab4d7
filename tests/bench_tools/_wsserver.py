"""The server half of RFC 6455 that the scripted servers of ``tests/bench_tools/``
share: frame reading and writing, the upgrade, and a threaded accept loop whose
subclasses answer each connection (``talk``) as their mode says."""
from __future__ import annotations

import base64
import hashlib
import socket
import struct
import threading
from abc import ABC, abstractmethod
from typing import Callable, Iterator

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    b0, b1 = read_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(sock, 8))[0]
    key = read_exact(sock, 4)
    data = read_exact(sock, n)
    return b0 & 0x0F, bytes(c ^ key[i % 4] for i, c in enumerate(data))


def next_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    """The client's next frame; None for a close frame, answered with its code."""
    op, data = read_frame(sock)
    if op == 0x8:
        sock.sendall(frame(0x8, data[:2]))
        return None
    return op, data


def frame(op: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes((0x80 | op, n)) if n < 126 else bytes((0x80 | op, 126)) + struct.pack("!H", n)
    return head + payload


def upgrade(conn: socket.socket) -> bool:
    """Read the client's handshake and accept it (no extension); False if the
    connection closed first."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            return False
        head += chunk
    key = [ln.split(b":", 1)[1].strip() for ln in head.split(b"\r\n")
           if ln.lower().startswith(b"sec-websocket-key:")][0]
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    return True


class ScriptedServer(ABC):
    """Listens on a free loopback port; upgrades every connection in its own thread,
    then hands it to ``talk`` (socket errors end the connection quietly)."""

    def __init__(self, mode: str, backlog: int = 128):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        try:
            if upgrade(conn):
                self.talk(conn)
        except (OSError, ConnectionError):
            pass
        finally:
            conn.close()

    @abstractmethod
    def talk(self, conn: socket.socket) -> None:
        """The scripted conversation after the handshake (each test server's own)."""

    def close(self) -> None:
        self.stop = True
        self.sock.close()


def servers(cls: type[ScriptedServer]) -> Iterator[Callable[[str], ScriptedServer]]:
    """The body of a fixture that makes ``cls(mode)`` servers and closes them after."""
    made: list[ScriptedServer] = []

    def make(mode: str) -> ScriptedServer:
        s = cls(mode)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()
