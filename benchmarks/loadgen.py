"""The load generator behind ``benchmarks/load.py``: raw sockets, pre-encoded frames.

    python benchmarks/loadgen.py --port P --conns 64 --depth 1 [--echo-ok] --latency-file F
        [--engine compiled|python]

It is started by ``load.py``, not by hand. Lifecycle, one line each way on stdio:

1. open ``--conns`` TCP connections (``TCP_NODELAY``), upgrade each with a fixed
   RFC 6455 handshake (the ``Sec-WebSocket-Accept`` is checked), then print ``ready``;
2. read one line ``T_START T_END T_STOP`` (``time.monotonic_ns()`` values, a clock every
   process shares) and start at once: the time before ``T_START`` is the warm-up;
3. keep ``--depth`` requests in flight on every connection until ``T_END``; a reply that
   arrives in ``[T_START, T_END)`` is *answered* and its latency is recorded;
4. after ``T_END`` send nothing new, wait for the replies still in flight (until
   ``T_STOP``), send a close frame on every connection, wait briefly for the server's
   close, and print one JSON line (counts, errors, samples of the first errors). The
   latencies (ns, int64) go to ``--latency-file``.

Why it is cheap per request: every request frame is encoded and masked once, before
the run (a ring of ``--ring`` ids per connection, each with its own fixed mask key), so
sending is a ``send`` of ready bytes. Replies (unmasked, from the server) are cut out of
the stream with the few header checks RFC 6455 needs and looked up in a dict of reply
payloads already validated; only a payload never seen before is parsed with orjson and
checked field by field (``jsonrpc``, ``id``, ``result`` equal to the expected value, no
``error``, no other member). So every reply is verified, most of them with one hash.

The request mix by id: ``eth_blockNumber()`` when ``id % 3 == 0``, ``echo("hello
world <id>")`` when 1, ``add(id, 1000)`` when 2. ``--echo-ok`` also accepts the request
itself as the reply to its id (a plain echo server, transport only).

A single connection blocks in ``recv`` (one system call per read); several are served
with ``epoll``.

The measured loop (step 3) runs compiled by default (``_loadloop.pyx``, built by
Cython's pyximport on first use and cached under ``build/pyxbld``); ``--engine python``
runs the same steps in ``Generator._run_one`` / ``_run_many``. Why it matters: with 64
connections the client and the server do the same kernel work per request, so the
client's own interpreter time decides which of the two sets the pace. The Python loop
spends about 2 µs of user time per request here; a server cheaper than that gets its
requests a few at a time (about 4 per ``epoll_wait`` round, against about 40 with the
compiled loop) and its CPU per request follows the client's. Setup, the handshake,
validating a reply never seen before, errors and the drain are the same Python code
for both engines. Errors (a wrong or unexpected reply, a close, a reset, a reply still
missing at ``T_STOP``) are counted; ``load.py`` treats a run with any error as invalid.
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import select
import socket
import sys
import time
from array import array
from typing import Any

import orjson

from _wsclient import client_frame, handshake_key

RECV_SIZE = 65536  # bytes read at most per recv_into(); replies are ~50 bytes each
MAX_ERROR_SAMPLES = 5
OP_TEXT, OP_CLOSE, OP_PING = 0x1, 0x8, 0x9


def request_for(rid: int) -> tuple[bytes, Any]:
    """The JSON-RPC request for ``rid`` and the result a correct server returns."""
    kind = rid % 3
    if kind == 0:
        req = {"jsonrpc": "2.0", "id": rid, "method": "eth_blockNumber", "params": []}
        return orjson.dumps(req), "0x10d4f"
    if kind == 1:
        x = f"hello world {rid}"
        return orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": "echo", "params": [x]}), x
    return (orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": "add", "params": [rid, 1000]}),
            rid + 1000)


@functools.cache
def compiled_loop() -> Any:
    """``_loadloop``, the measured loop in C (built by pyximport on first use, cached
    under build/; imported once per process)."""
    import pyximport  # Cython's; the test extra installs it

    build = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "build", "pyxbld")
    pyximport.install(build_dir=build, language_level=3)
    import _loadloop  # noqa: PLC0415

    return _loadloop


class Failure(Exception):
    """The connection cannot go on (closed, reset, protocol violation)."""


class Conn:
    __slots__ = ("sock", "fd", "key", "frames", "sent_at", "next", "tail", "inflight", "closed")

    def __init__(self, sock: socket.socket, key: bytes, frames: list[bytes], ring: int):
        self.sock = sock
        self.fd = sock.fileno()
        self.key = key            # this connection's fixed 4-byte mask key
        self.frames = frames      # frames[id]: the masked request frame for id (1..ring)
        self.sent_at = [0] * (ring + 1)  # sent_at[id]: monotonic ns when sent; 0 = not in flight
        self.next = 1             # the id the next request uses
        self.tail = b""           # bytes of an incomplete frame left from the last read
        self.inflight = 0         # requests sent and not answered
        self.closed = False


class Generator:
    Failure = Failure  # what the compiled loop raises and catches, too

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.ring = args.ring
        self.expected: dict[int, Any] = {}
        self.requests: list[bytes] = [b""]
        for rid in range(1, self.ring + 1):
            payload, result = request_for(rid)
            self.requests.append(payload)
            self.expected[rid] = result
        # payload bytes -> id, for every reply payload already fully validated
        self.known: dict[bytes, int] = {}
        if args.echo_ok:
            self.known.update((p, rid) for rid, p in enumerate(self.requests) if rid)
        self.conns: list[Conn] = []
        self.errors = 0
        self.error_samples: list[str] = []
        self.answered = 0
        self.sent = 0
        self.received = 0
        self.latencies = array("q")
        # Reads go into one preallocated buffer: ``sock.recv(n)`` allocates n bytes per
        # call, and a large n costs an mmap/munmap pair (~14 µs here) on every read.
        self._rbuf = bytearray(RECV_SIZE)
        self._rview = memoryview(self._rbuf)

    def recv(self, c: Conn) -> bytes:
        n = c.sock.recv_into(self._rbuf)
        return self._rview[:n].tobytes()

    # -- setup -----------------------------------------------------------------------

    def connect(self) -> None:
        a = self.args
        for i in range(a.conns):
            sock = socket.create_connection((a.host, a.port), timeout=10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ws_key, accept = handshake_key()
            sock.sendall(b"GET / HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\n"
                         % (a.host.encode(), a.port, ws_key))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    raise SystemExit(f"connection {i}: closed during the handshake")
                data += chunk
                if len(data) > 65536:
                    raise SystemExit(f"connection {i}: handshake response too long")
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            if not lines[0].startswith(b"HTTP/1.1 101"):
                raise SystemExit(f"connection {i}: handshake refused: {lines[0]!r}")
            headers = {k.strip().lower(): v.strip()
                       for k, _, v in (ln.partition(b":") for ln in lines[1:])}
            if headers.get(b"sec-websocket-accept") != accept:
                raise SystemExit(f"connection {i}: wrong Sec-WebSocket-Accept")
            if headers.get(b"sec-websocket-extensions"):
                raise SystemExit(f"connection {i}: server negotiated an extension")
            sock.settimeout(None)  # blocking, and no poll() before every recv
            key = os.urandom(4)
            frames = [b""] + [client_frame(OP_TEXT, p, key) for p in self.requests[1:]]
            c = Conn(sock, key, frames, self.ring)
            c.tail = rest
            self.conns.append(c)

    # -- errors ----------------------------------------------------------------------

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(what)

    def validate(self, payload: bytes) -> int | None:
        """Check one reply never seen before; its id, or ``None`` (error counted)."""
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.error(f"reply is not JSON: {payload[:120]!r}")
            return None
        if type(obj) is not dict:
            self.error(f"reply is not an object: {payload[:120]!r}")
            return None
        if "error" in obj:
            self.error(f"error reply: {payload[:200]!r}")
            return None
        rid = obj.get("id")
        if (obj.get("jsonrpc") != "2.0" or type(rid) is not int or rid not in self.expected
                or len(obj) != 3 or "result" not in obj):
            self.error(f"malformed reply: {payload[:200]!r}")
            return None
        result, want = obj["result"], self.expected[rid]
        if type(result) is not type(want) or result != want:
            self.error(f"wrong result for id {rid}: {result!r} (expected {want!r})")
            return None
        self.known[bytes(payload)] = rid
        return rid

    # -- frames ----------------------------------------------------------------------

    def frames_in(self, c: Conn, data: bytes) -> list[bytes]:
        """Whole message payloads in ``c.tail + data``; keeps the incomplete rest."""
        if c.tail:
            data = c.tail + data
        out = []
        pos, n = 0, len(data)
        while n - pos >= 2:
            b0, ln = data[pos], data[pos + 1]
            if ln < 126:
                h = 2
            elif ln == 126:
                if n - pos < 4:
                    break
                ln, h = int.from_bytes(data[pos + 2:pos + 4], "big"), 4
            elif ln == 127:
                if n - pos < 10:
                    break
                ln, h = int.from_bytes(data[pos + 2:pos + 10], "big"), 10
            else:
                raise Failure("server sent a masked frame")
            end = pos + h + ln
            if end > n:
                break
            if b0 == 0x81:
                out.append(data[pos + h:end])
            else:
                self.control(c, b0, data[pos + h:end])
            pos = end
        c.tail = data[pos:] if pos < n else b""
        return out

    def control(self, c: Conn, b0: int, payload: bytes) -> None:
        """A frame other than an unfragmented text frame (both engines come here): a
        ping is answered, a pong ignored, anything else ends the connection."""
        if b0 == 0x80 | OP_PING:
            c.sock.sendall(client_frame(0xA, payload, c.key))
        elif b0 == 0x80 | OP_CLOSE:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            raise Failure(f"server closed the connection (close code {code}, "
                          f"reason {payload[2:][:80]!r})")
        elif b0 != 0x8A:  # an unsolicited pong is ignored
            raise Failure(f"unexpected frame: first byte {b0:#04x} "
                          "(a JSON-RPC reply is one unfragmented text frame)")

    def on_data(self, c: Conn, data: bytes, now: int, t_start: int, t_end: int) -> int:
        """Account for the replies in ``data``; how many requests to send next."""
        if not data:
            raise Failure("server closed the TCP connection")
        payloads = self.frames_in(c, data)
        known, sent_at = self.known, c.sent_at
        in_window = t_start <= now < t_end
        done = 0
        for p in payloads:
            rid = known.get(p)
            if rid is None:
                rid = self.validate(p)
                if rid is None:
                    continue
            t = sent_at[rid]
            if t == 0:
                self.error(f"reply to id {rid}, which is not in flight")
                continue
            sent_at[rid] = 0
            done += 1
            if in_window:
                self.latencies.append(now - t)
        c.inflight -= done
        self.received += done
        if in_window:
            self.answered += done
        return done

    def send(self, c: Conn, k: int, now: int) -> None:
        frames, sent_at, ring = c.frames, c.sent_at, self.ring
        rid = c.next
        if k == 1:
            if sent_at[rid]:
                raise Failure(f"id {rid} still unanswered after a full ring of {ring} requests")
            sent_at[rid] = now
            out = frames[rid]
            rid = rid + 1 if rid < ring else 1
        else:
            parts = []
            for _ in range(k):
                if sent_at[rid]:
                    raise Failure(f"id {rid} still unanswered after a full ring of {ring} "
                                  "requests")
                sent_at[rid] = now
                parts.append(frames[rid])
                rid = rid + 1 if rid < ring else 1
            out = b"".join(parts)
        c.next = rid
        c.inflight += k
        self.sent += k
        c.sock.sendall(out)  # at most depth * ~80 bytes: never blocks for long

    # -- the run -----------------------------------------------------------------------

    def run(self, t_start: int, t_end: int, t_stop: int) -> None:
        depth = self.args.depth
        now = time.monotonic_ns()
        for c in self.conns:
            self.send(c, depth, now)  # bytes the server sent after its 101 stay in c.tail
        if self.args.engine == "compiled":
            loop = compiled_loop().Loop(self)
            try:
                loop.run(t_start, t_end)
            finally:
                loop.close()
        elif len(self.conns) == 1:
            self._run_one(self.conns[0], t_start, t_end)
        else:
            self._run_many(t_start, t_end)
        self._drain(t_stop)

    def _run_one(self, c: Conn, t_start: int, t_end: int) -> None:
        recv_into, view, buf = c.sock.recv_into, self._rview, self._rbuf
        clock, on_data, send = time.monotonic_ns, self.on_data, self.send
        try:
            while True:
                data = view[:recv_into(buf)].tobytes()
                now = clock()
                k = on_data(c, data, now, t_start, t_end)
                if now >= t_end:
                    return
                if k:
                    send(c, k, now)
        except (Failure, OSError) as e:
            self._fail(c, e)

    def _run_many(self, t_start: int, t_end: int) -> None:
        ep = select.epoll()
        by_fd = {c.fd: c for c in self.conns}
        for c in self.conns:
            ep.register(c.fd, select.EPOLLIN)
        poll, clock = ep.poll, time.monotonic_ns
        on_data, send, recv = self.on_data, self.send, self.recv
        try:
            while by_fd:
                events = poll(0.2)
                now = clock()
                if now >= t_end:
                    return
                for fd, _ in events:
                    c = by_fd[fd]
                    try:
                        k = on_data(c, recv(c), now, t_start, t_end)
                        if k:
                            send(c, k, now)
                    except (Failure, OSError) as e:
                        ep.unregister(fd)
                        del by_fd[fd]
                        self._fail(c, e)
        finally:
            ep.close()

    def _fail(self, c: Conn, e: BaseException) -> None:
        self.error(f"{type(e).__name__}: {e}")
        c.closed = True
        c.inflight = 0
        c.sock.close()

    def _drain(self, t_stop: int) -> None:
        """Collect replies still in flight (uncounted), then close every connection."""
        live = {c.fd: c for c in self.conns if not c.closed and c.inflight}
        ep = select.epoll()
        for fd in live:
            ep.register(fd, select.EPOLLIN)
        while live:
            left = (t_stop - time.monotonic_ns()) / 1e9
            if left <= 0:
                break
            for fd, _ in ep.poll(left):
                c = live[fd]
                try:
                    self.on_data(c, self.recv(c), time.monotonic_ns(), 0, 0)
                except (Failure, OSError) as e:
                    self._fail(c, e)
                if c.closed or not c.inflight:
                    ep.unregister(fd)
                    del live[fd]
        ep.close()
        for c in live.values():
            self.error(f"{c.inflight} replies still missing when the run stopped")
        # A clean close (RFC 6455 §7): close frame, then wait briefly for the server's.
        open_ = [c for c in self.conns if not c.closed]
        for c in open_:
            try:
                c.sock.sendall(client_frame(OP_CLOSE, (1000).to_bytes(2, "big"), c.key))
            except OSError:
                pass
        deadline = time.monotonic() + 1.0
        for c in open_:
            try:
                c.sock.settimeout(max(0.0, deadline - time.monotonic()))
                while c.sock.recv(RECV_SIZE):
                    pass
            except OSError:
                pass
            c.sock.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--depth", type=int, default=1, help="requests in flight per connection")
    p.add_argument("--ring", type=int, default=256, help="distinct request ids per connection")
    p.add_argument("--echo-ok", action="store_true",
                   help="accept the request itself as its reply (a plain echo server)")
    p.add_argument("--engine", choices=("compiled", "python"), default="compiled",
                   help="the measured loop: compiled (_loadloop.pyx, default) or plain Python")
    p.add_argument("--latency-file")
    p.add_argument("--build-only", action="store_true",
                   help="build the compiled loop (cached under build/) and exit")
    args = p.parse_args(argv)
    if args.build_only:
        compiled_loop()
        return 0
    if args.port is None or args.latency_file is None:
        p.error("--port and --latency-file are required")
    if args.ring <= 2 * args.depth:
        p.error("--ring must exceed twice --depth")

    if args.engine == "compiled":
        compiled_loop()  # build before the run, not inside it
    gen = Generator(args)
    gen.connect()
    gc.collect()
    gc.freeze()
    gc.disable()  # the hot loop allocates no cycles
    print("ready", flush=True)
    line = sys.stdin.readline().split()
    if len(line) != 3:
        return 2
    t_start, t_end, t_stop = map(int, line)
    gen.run(t_start, t_end, t_stop)
    with open(args.latency_file, "wb") as f:
        gen.latencies.tofile(f)
    print(json.dumps({
        "answered": gen.answered, "sent": gen.sent, "received": gen.received,
        "errors": gen.errors, "error_samples": gen.error_samples,
        "known_replies": len(gen.known), "engine": args.engine,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
