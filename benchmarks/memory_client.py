"""Client worker for ``benchmarks/memory.py``: opens and holds many WebSocket connections.

    python benchmarks/memory_client.py --port P --count C --source 127.0.0.2 ...

One process, one ``select.epoll``, non-blocking sockets, no asyncio: a connection
costs this process a socket and one small ``Conn`` object, so a few workers open
19,000 connections quickly. Each socket is bound to ``--source`` (a 127.0.0.x
address, with ``IP_BIND_ADDRESS_NO_PORT``) so every worker has its own ephemeral
port range towards the server.

The worker does the HTTP/1.1 upgrade itself (random ``Sec-WebSocket-Key``, the
``101`` and ``Sec-WebSocket-Accept`` checked) and offers
``permessage-deflate; client_max_window_bits`` as browsers do; a server may accept
it or not. The worker always sends uncompressed frames (allowed by RFC 7692) and
inflates compressed replies. It answers every ping with a pong, in every phase, so
servers with keepalive do not drop idle connections.

It is driven by the parent through lines: commands on stdin, one JSON object per
line on stdout.

* start: ``{"event": "ready"}``
* ``connect``: open ``--count`` connections, at most ``--concurrency`` handshakes in
  flight, then ``{"event": "connected", "ok": .., "failed": .., "seconds": ..,
  "deflate": .., "errors": {reason: count}}``.
* ``touch``: send one masked ``--size``-byte text message on every open connection
  (at most ``--concurrency`` waiting for their echo), check every echo, then
  ``{"event": "touched", "ok": .., "failed": .., "seconds": .., "errors": ..}``.
* ``status``: ``{"event": "status", "open": .., "dropped": .., "pings": ..}``.
* ``close``: send a close frame (1000) on every open connection, close every
  socket, ``{"event": "closed"}``, exit.

Every phase is bounded by ``--phase-timeout``, the whole process by ``--lifetime``.

``Worker`` is also the base of ``fanout_client.py`` and ``soak_client.py``.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import select
import socket
import sys
import time
import zlib
from collections import Counter, deque

from _wsclient import client_frame, handshake_key

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)  # Linux
MAX_HEAD = 16 * 1024  # largest 101 response accepted, bytes
RECV = 65536  # bytes per recv call

# Connection states
CONNECTING, UPGRADING, OPEN, TOUCHING, DONE = range(5)

OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def message(idx: int, size: int) -> bytes:
    """A JSON-RPC-shaped text payload of exactly ``size`` bytes (at least ~60)."""
    head = b'{"jsonrpc":"2.0","method":"echo","params":["'
    tail = b'"],"id":%d}' % idx
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


class Conn:
    __slots__ = ("sock", "fd", "idx", "state", "accept", "buf", "out", "t0",
                 "frags", "frag_op", "frag_rsv1", "expect")

    def __init__(self, sock: socket.socket, idx: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.idx = idx
        self.state = CONNECTING
        self.accept = b""       # expected Sec-WebSocket-Accept
        self.buf = bytearray()  # received, not yet parsed
        self.out = b""          # not yet sent (sends are tiny: normally empty)
        self.t0 = 0.0           # when the current phase started for this connection
        self.frags: list[bytes] | None = None  # data frames of an unfinished message
        self.frag_op = 0
        self.frag_rsv1 = False
        self.expect = b""       # the echo awaited in the touch phase


class Worker:
    """The connect / touch / status / close phases. ``fanout_client.py`` subclasses it:
    its touch phase subscribes (``touch_message`` and ``check_touch_reply``) and it
    counts the notifications that follow (``on_message``). ``soak_client.py`` overrides
    ``conn_class`` (more state per connection), ``opened`` (a connection's 101 arrived),
    ``on_message``, ``on_close_frame``, ``lost``, ``command`` and ``tick`` (once per turn
    of the loop, every ``poll_s`` at most)."""

    #: The upgrade request's extension offer: permessage-deflate, as browsers send it.
    OFFER = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    #: The events the connect and touch phases end with.
    EVENTS = {"connect": "connected", "touch": "touched"}
    conn_class: type[Conn] = Conn
    poll_s = 0.5  # longest wait in epoll before tick() runs again

    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.ep = select.epoll()
        self.conns: dict[int, Conn] = {}
        self.errors: Counter[str] = Counter()
        self.ok = 0
        self.failed = 0
        self.in_flight = 0
        self.dropped = 0
        self.pings = 0
        self.deflate = 0
        self.phase = ""
        self.phase_t0 = 0.0
        self.todo: deque[int] | deque[Conn] = deque()
        self.stdin = sys.stdin.buffer.raw.fileno()
        self.stdin_buf = b""
        self.quit = False

    # -- output ---------------------------------------------------------------
    def emit(self, **obj: object) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    def fail(self, c: Conn, reason: str) -> None:
        """A connection failed (while connecting, or during the touch phase)."""
        self.errors[reason] += 1
        self.failed += 1
        if c.state in (CONNECTING, UPGRADING, TOUCHING):
            self.in_flight -= 1
        self.drop(c)

    def drop(self, c: Conn) -> None:
        if c.fd in self.conns:
            del self.conns[c.fd]
            try:
                self.ep.unregister(c.fd)
            except OSError:
                pass
            c.sock.close()
        c.state = DONE

    # -- connect phase ----------------------------------------------------------
    def start_connect(self) -> None:
        self.phase, self.phase_t0 = "connect", time.monotonic()
        self.ok = self.failed = 0
        self.errors.clear()
        self.todo = deque(range(self.a.first, self.a.first + self.a.count))
        self.fill_connect()
        self.check_phase_done()

    def fill_connect(self) -> None:
        while self.todo and self.in_flight < self.a.concurrency:
            idx = self.todo.popleft()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.a.source, 0))
                rc = sock.connect_ex((self.a.host, self.a.port))
            except OSError as e:
                sock.close()
                self.errors[f"socket: {e.strerror or e}"] += 1
                self.failed += 1
                continue
            if rc not in (0, errno.EINPROGRESS):
                sock.close()
                self.errors[f"connect: {os.strerror(rc)}"] += 1
                self.failed += 1
                continue
            c = self.conn_class(sock, idx)
            c.t0 = time.monotonic()
            self.conns[c.fd] = c
            self.in_flight += 1
            self.ep.register(c.fd, select.EPOLLOUT)

    def on_connected(self, c: Conn) -> None:
        err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.fail(c, f"connect: {os.strerror(err)}")
            return
        key, c.accept = handshake_key()
        request = (
            b"GET / HTTP/1.1\r\n"
            b"Host: %s:%d\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n"
            b"%s"
            b"\r\n" % (self.a.host.encode(), self.a.port, key, self.OFFER)
        )
        c.state = UPGRADING
        self.ep.modify(c.fd, select.EPOLLIN)
        self.send(c, request)

    def on_upgrade_data(self, c: Conn) -> None:
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(c.buf) > MAX_HEAD:
                self.fail(c, "response head too large")
            return
        head = bytes(c.buf[:end]).decode("latin-1").split("\r\n")
        del c.buf[: end + 4]
        status = head[0].split(" ", 2)
        if len(status) < 2 or status[0] != "HTTP/1.1" or status[1] != "101":
            self.fail(c, f"status: {head[0][:60]}")
            return
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("sec-websocket-accept", "").encode() != c.accept:
            self.fail(c, "bad Sec-WebSocket-Accept")
            return
        if "permessage-deflate" in headers.get("sec-websocket-extensions", ""):
            self.deflate += 1
        c.state = OPEN
        self.in_flight -= 1
        self.ok += 1
        self.opened(c)
        if c.buf and c.state == OPEN:
            self.on_frames(c)
        self.fill_connect()

    def opened(self, c: Conn) -> None:
        """``c``'s upgrade succeeded (it is OPEN); frames that came with the 101 are
        parsed next."""

    # -- touch phase ----------------------------------------------------------------
    def start_touch(self) -> None:
        self.phase, self.phase_t0 = "touch", time.monotonic()
        self.ok = self.failed = 0
        self.errors.clear()
        self.todo = deque(c for c in self.conns.values() if c.state == OPEN)
        self.fill_touch()
        self.check_phase_done()

    def fill_touch(self) -> None:
        while self.todo and self.in_flight < self.a.concurrency:
            c = self.todo.popleft()
            if c.state != OPEN:
                continue
            c.expect = self.touch_message(c)
            c.state = TOUCHING
            c.t0 = time.monotonic()
            self.in_flight += 1
            self.send(c, client_frame(OP_TEXT, c.expect))

    def touch_message(self, c: Conn) -> bytes:
        """The text message the touch phase sends on ``c``."""
        return message(c.idx, self.a.size)

    def check_touch_reply(self, c: Conn, opcode: int, payload: bytes) -> str:
        """Why the reply to ``c.expect`` is wrong ("" when it is right)."""
        if opcode != OP_TEXT or payload != c.expect:
            return "echo differs from the message sent"
        return ""

    def on_message(self, c: Conn, opcode: int, payload: bytes) -> None:
        if c.state != TOUCHING:
            self.errors["unexpected message"] += 1
            return
        why = self.check_touch_reply(c, opcode, payload)
        if why:
            self.fail(c, why)
            return
        c.state = OPEN
        c.expect = b""
        self.in_flight -= 1
        self.ok += 1
        self.fill_touch()

    # -- frames from the server (unmasked) -------------------------------------------
    def on_frames(self, c: Conn) -> None:
        buf = c.buf
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            hlen = 2
            if n == 126:
                hlen = 4
                if len(buf) - pos < hlen:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
            elif n == 127:
                hlen = 10
                if len(buf) - pos < hlen:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
            if b1 & 0x80:
                self.fail(c, "masked frame from the server")
                return
            if len(buf) - pos < hlen + n:
                break
            payload = bytes(buf[pos + hlen : pos + hlen + n])
            pos += hlen + n
            fin, rsv1, opcode = b0 & 0x80, b0 & 0x40, b0 & 0x0F
            if opcode == OP_PING:
                self.pings += 1
                self.send(c, client_frame(OP_PONG, payload))
            elif opcode == OP_PONG:
                pass
            elif opcode == OP_CLOSE:
                self.on_close_frame(c, int.from_bytes(payload[:2], "big")
                                    if len(payload) >= 2 else 1005)
                return
            elif opcode in (OP_TEXT, OP_BIN, OP_CONT):
                if opcode != OP_CONT:
                    c.frags, c.frag_op, c.frag_rsv1 = [], opcode, bool(rsv1)
                if c.frags is None:
                    self.fail(c, "continuation without a message")
                    return
                c.frags.append(payload)
                if fin:
                    data = b"".join(c.frags)
                    if c.frag_rsv1:
                        data = zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")
                    c.frags = None
                    self.on_message(c, c.frag_op, data)
                    if c.state == DONE:
                        return
            else:
                self.fail(c, f"opcode {opcode} from the server")
                return
        del buf[:pos]

    def on_close_frame(self, c: Conn, code: int) -> None:
        """The server sent a close frame: a loss here (this client closes only on its
        way out, without waiting for the answer)."""
        self.lost(c, f"closed by the server ({code})")

    # -- I/O ------------------------------------------------------------------------
    def send(self, c: Conn, data: bytes) -> None:
        if c.out:
            c.out += data
            return
        try:
            sent = c.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            self.lost(c, f"send: {e.strerror or e}")
            return
        if sent < len(data):
            c.out = data[sent:]
            self.ep.modify(c.fd, select.EPOLLIN | select.EPOLLOUT)

    def flush(self, c: Conn) -> None:
        try:
            sent = c.sock.send(c.out)
        except BlockingIOError:
            return
        except OSError as e:
            self.lost(c, f"send: {e.strerror or e}")
            return
        c.out = c.out[sent:]
        if not c.out:
            self.ep.modify(c.fd, select.EPOLLIN)

    def lost(self, c: Conn, reason: str) -> None:
        if c.state in (CONNECTING, UPGRADING, TOUCHING):
            self.fail(c, reason)
        else:
            self.dropped += 1
            self.errors[reason] += 1
            self.drop(c)

    def on_event(self, fd: int, ev: int) -> None:
        c = self.conns.get(fd)
        if c is None:
            return
        if c.state == CONNECTING:
            self.on_connected(c)
            return
        if ev & select.EPOLLOUT and c.out:
            self.flush(c)
            if c.state == DONE:
                return
        if ev & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            try:
                data = c.sock.recv(RECV)
            except BlockingIOError:
                return
            except OSError as e:
                self.lost(c, f"recv: {e.strerror or e}")
                return
            if not data:
                self.lost(c, "connection closed by the server")
                return
            c.buf += data
            if c.state == UPGRADING:
                self.on_upgrade_data(c)
            else:
                self.on_frames(c)

    # -- phases and the loop ------------------------------------------------------------
    def check_phase_done(self) -> None:
        if not self.phase or self.todo or self.in_flight:
            return
        self.emit(event=self.EVENTS[self.phase],
                  ok=self.ok, failed=self.failed,
                  seconds=round(time.monotonic() - self.phase_t0, 3),
                  deflate=self.deflate, dropped=self.dropped, pings=self.pings,
                  errors=dict(self.errors.most_common(5)))
        self.phase = ""

    def check_timeouts(self, now: float) -> None:
        if not self.phase:
            return
        if now - self.phase_t0 > self.a.phase_timeout:
            for c in list(self.conns.values()):
                if c.state in (CONNECTING, UPGRADING, TOUCHING):
                    self.fail(c, f"no answer within {self.a.phase_timeout:g} s")
            self.failed += len(self.todo)
            if self.todo:
                self.errors["not started: phase timed out"] += len(self.todo)
            self.todo.clear()

    def command(self, line: str) -> None:
        if line == "connect":
            self.start_connect()
        elif line == "touch":
            self.start_touch()
        elif line == "status":
            self.emit(event="status", open=len(self.conns), dropped=self.dropped,
                      pings=self.pings, errors=dict(self.errors.most_common(5)))
        elif line == "close":
            close = client_frame(OP_CLOSE, (1000).to_bytes(2, "big"))
            for c in list(self.conns.values()):
                if c.state == OPEN:  # a clean close: servers see a close frame, not an error
                    try:
                        c.sock.send(close)
                    except OSError:
                        pass
                self.drop(c)
            self.emit(event="closed")
            self.quit = True
        elif line:
            self.emit(event="error", reason=f"unknown command {line!r}")

    def tick(self, now: float) -> None:
        """Once per turn of the loop: start what the phase allows, time out what is
        late, report a finished phase."""
        if self.phase == "connect":
            self.fill_connect()
        elif self.phase == "touch":
            self.fill_touch()
        self.check_timeouts(now)
        self.check_phase_done()

    def run(self) -> None:
        self.ep.register(self.stdin, select.EPOLLIN)
        self.emit(event="ready")
        deadline = time.monotonic() + self.a.lifetime
        while not self.quit and time.monotonic() < deadline:
            for fd, ev in self.ep.poll(self.poll_s):
                if fd == self.stdin:
                    chunk = os.read(self.stdin, 4096)
                    if not chunk:  # the parent went away
                        self.quit = True
                        break
                    self.stdin_buf += chunk
                    while b"\n" in self.stdin_buf:
                        line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
                        self.command(line.decode().strip())
                else:
                    self.on_event(fd, ev)
            self.tick(time.monotonic())


def parser(description: str) -> argparse.ArgumentParser:
    """The worker's options (``fanout_client.py`` adds its own)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--source", default="127.0.0.2", help="local address to bind")
    p.add_argument("--count", type=int, required=True, help="connections to open")
    p.add_argument("--first", type=int, default=0, help="index of the first connection")
    p.add_argument("--concurrency", type=int, default=16,
                   help="handshakes (or echoes) in flight at once")
    p.add_argument("--size", type=int, default=200, help="touch message payload, bytes")
    p.add_argument("--phase-timeout", type=float, default=120.0)
    p.add_argument("--lifetime", type=float, default=600.0)
    return p


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.split("\n\n")[0]).parse_args(argv)
    raise_nofile()
    Worker(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
