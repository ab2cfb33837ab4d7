"""The connection log over real sockets (README "Logs"): one line per refused or
abnormally closed connection, naming the reason and the peer, rate-limited; nothing
at INFO for normal traffic. The lines are read from the ``fastrpc`` loggers with a
handler of the test's own."""
from __future__ import annotations

import asyncio
import logging
import re
import socket

import pytest
from helpers import Echo, wait_until
from rawclient import RawWS, http_request, open_socket, read_until_eof, upgrade_request

from fastrpc._core import OP_TEXT, encode_frame
from fastrpc.connlog import DEFAULT_BURST, DEFAULT_RATE
from fastrpc.limits import Limits
from fastrpc.server import Server


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int = logging.DEBUG, logger: str = "fastrpc.connections") -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level and r.name == logger]

    def at_least(self, level: int) -> list[str]:
        return [f"{r.name} {r.levelname} {r.getMessage()}" for r in self.records if r.levelno >= level]


@pytest.fixture(params=[logging.INFO], ids=["INFO"])
def records(request):
    """Every record of the ``fastrpc`` loggers at ``request.param`` and above."""
    logger = logging.getLogger("fastrpc")
    handler = Records()
    old = logger.level
    logger.setLevel(request.param)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


def local_port(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


async def expect_line(records: Records, line: str, timeout: float = 5.0) -> None:
    await wait_until(lambda: line in records.lines(), timeout=timeout,
                     what=f"log line {line!r}; have {records.lines()[-5:]}")


class Boom(Echo):
    def on_text(self, cid: int, data: bytes) -> bytes:
        if data == b"boom":
            raise RuntimeError("handler bug (expected by the test)")
        return data


BAD_START = b"\x16\x03\x01\x00\xa5 this is no HTTP\r\n"


def test_flood_of_bad_handshakes_stays_within_the_budget(run, server, records):
    """5,000 connections whose first bytes cannot be HTTP (answered 400 by the core as
    they arrive): at most burst + rate × seconds lines plus a summary per second, and
    every refusal is either a line or counted in a summary."""
    n = 5000

    async def body():
        srv = await server(max_pending_handshakes=64)
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(32)
        t0 = loop.time()

        async def one(i: int) -> None:
            async with gate:
                sock = await open_socket(srv.port, local_ip=f"127.0.0.{2 + i % 8}")
                try:
                    await loop.sock_sendall(sock, BAD_START)
                    assert (await read_until_eof(sock)).startswith(b"HTTP/1.1 400 ")
                finally:
                    sock.close()

        await asyncio.gather(*(one(i) for i in range(n)))
        await wait_until(lambda: len(srv.reactor) == 0, timeout=20, what="every refused socket gone")
        seconds = loop.time() - t0
        await srv.stop()  # writes the last summary
        lines = [x for x in records.lines() if not x.startswith("suppressed ")]
        summaries = [x for x in records.lines() if x.startswith("suppressed ")]
        assert srv.metrics()["refused_http"] == n
        assert len(lines) <= DEFAULT_BURST + DEFAULT_RATE * seconds + 1, (len(lines), seconds)
        assert summaries and len(summaries) <= seconds / 1.0 + 2, (summaries, seconds)
        assert len(lines) + sum(int(s.split()[1]) for s in summaries) == n
        assert all(re.fullmatch(r"refused 400 malformed request line peer=127\.0\.0\.\d:\d+", x) for x in lines)
        assert all(re.fullmatch(r"suppressed \d+ connection log lines in the last \d+\.\ds", x) for x in summaries)
        m = srv.metrics()
        assert (m["log_lines"], m["log_suppressed"]) == (len(lines), n - len(lines))

    run(body(), timeout=90)


def test_refusals_each_have_their_line_with_the_peer(run, server, records):
    async def body():
        srv = await server(max_connections=3, max_connections_per_ip=2, handshake_timeout=0.5)
        loop = asyncio.get_running_loop()

        async def refused(request: bytes, status: int, local_ip: str = "127.0.0.1") -> int:
            sock = await open_socket(srv.port, local_ip=local_ip)
            try:
                await loop.sock_sendall(sock, request)
                assert (await read_until_eof(sock)).startswith(b"HTTP/1.1 %d " % status)
                return local_port(sock)
            finally:
                sock.close()

        port = await refused(BAD_START, 400)
        await expect_line(records, f"refused 400 malformed request line peer=127.0.0.1:{port}")
        port = await refused(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: y\r\n" * 400, 431)
        await expect_line(records, f"refused 431 request head too large peer=127.0.0.1:{port}")
        port = await refused(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404)
        await expect_line(records, f"refused 404 not found peer=127.0.0.1:{port}")
        port = await refused(b"DELETE / HTTP/1.1\r\nHost: x\r\n\r\n", 405)
        await expect_line(records, f"refused 405 method not allowed peer=127.0.0.1:{port}")
        port = await refused(upgrade_request(extra=(("Sec-WebSocket-Version", "8"),))
                             .replace(b"Sec-WebSocket-Version: 13\r\n", b""), 426)
        await expect_line(records, f"refused 426 unsupported WebSocket version peer=127.0.0.1:{port}")

        held = [await RawWS.open(srv.port, local_ip="127.0.0.2") for _ in range(2)]
        port = await refused(upgrade_request(), 429, "127.0.0.2")
        await expect_line(records, f"refused 429 too many connections from this address peer=127.0.0.2:{port}")
        held.append(await RawWS.open(srv.port, local_ip="127.0.0.3"))
        port = await refused(upgrade_request(), 503, "127.0.0.4")
        await expect_line(records, f"refused 503 too many connections peer=127.0.0.4:{port}")

        silent = await open_socket(srv.port)
        await expect_line(records, f"refused handshake timeout peer=127.0.0.1:{local_port(silent)}")
        silent.close()
        lines = records.lines()
        assert len(lines) == 8, lines  # one line per refused connection, nothing else
        for ws in held:
            ws.close()

    run(body())


def test_pending_overflow_closed_at_accept(run, server, records):
    async def body():
        srv = await server(max_pending_handshakes=1)
        waiting = await open_socket(srv.port)
        await wait_until(lambda: srv.reactor.n_pending == 1, what="one pending handshake")
        extra = await open_socket(srv.port)
        assert await read_until_eof(extra) == b""
        await expect_line(records, f"refused too many pending handshakes peer=127.0.0.1:{local_port(extra)}")
        [record] = [r for r in records.records if "pending" in r.getMessage()]
        assert record.levelno == logging.WARNING
        extra.close()
        waiting.close()

    run(body())


def test_abnormal_closes_each_have_their_line(run, server, records):
    async def body():
        srv = await server(Boom())
        cases = [
            (encode_frame(OP_TEXT, b"x", mask=False), "closed 1002 frame not masked"),
            (encode_frame(OP_TEXT, b"\xc3\x28", mask=True), "closed 1007 invalid UTF-8"),
            (encode_frame(OP_TEXT, b"x" * (64 * 1024 + 1), mask=True)[:14], "closed 1009 message too big"),
            (encode_frame(OP_TEXT, b"boom", mask=True), "closed 1011 handler error"),
        ]
        for wire, line in cases:
            ws = await RawWS.open(srv.port)
            await ws.send_raw(wire)
            code, _ = await ws.expect_close()
            assert line.startswith(f"closed {code} ")
            await expect_line(records, f"{line} peer=127.0.0.1:{local_port(ws.sock)}")
            ws.close()
        assert any(r.name == "fastrpc.core" and r.levelno == logging.ERROR for r in records.records)

        ws = await RawWS.open(srv.port)
        port = local_port(ws.sock)
        ws.close()  # no close frame
        await expect_line(records, f"closed 1006 connection lost without a close frame peer=127.0.0.1:{port}")

        ws = await RawWS.open(srv.port)
        await ws.send_text("hello")
        assert await ws.recv() == (OP_TEXT, b"hello")
        [cid] = srv.connections()
        srv.close(cid, 1000)  # the peer reads our close frame but never answers it
        await expect_line(records, f"closed 1006 close timeout: no close frame back peer=127.0.0.1:{local_port(ws.sock)}")
        ws.close()

        pinging = await server(Boom(), ping_interval=0.3, pong_timeout=0.3)
        ws = await RawWS.open(pinging.port)  # never answers the server's ping
        await expect_line(records, f"closed 1006 pong timeout peer=127.0.0.1:{local_port(ws.sock)}")
        ws.close()
        levels = {r.getMessage().split(" peer=")[0]: r.levelno for r in records.records
                  if r.name == "fastrpc.connections"}
        assert levels["closed 1011 handler error"] == logging.WARNING
        assert levels["closed 1009 message too big"] == logging.INFO

    run(body())


@pytest.mark.parametrize("records", [logging.DEBUG], indirect=True, ids=["DEBUG"])
def test_normal_traffic_logs_nothing_at_info(run, records):
    """JSON-RPC calls over WebSocket and HTTP, a clean close, a kept-alive HTTP
    connection reaped idle, a close by the server: nothing at INFO or above; the
    normal ends appear at DEBUG (enabled here before start)."""

    async def body():
        srv = Server(limits=Limits(handshake_timeout=0.5, close_timeout=1.0))

        @srv.method("echo")
        def echo(x: int) -> int:
            return x

        await srv.start("127.0.0.1", 0)
        started = len(records.records)  # (start() may log, e.g. raising RLIMIT_NOFILE)
        try:
            ws = await RawWS.open(srv.port)
            for i in range(20):
                await ws.send_text(b'{"jsonrpc":"2.0","id":%d,"method":"echo","params":[%d]}' % (i, i))
                assert await ws.recv() == (OP_TEXT, b'{"jsonrpc":"2.0","id":%d,"result":%d}' % (i, i))
            port = local_port(ws.sock)
            await ws.send_close(1000)
            assert (await ws.expect_close())[0] == 1000
            ws.close()
            body_ = b'{"jsonrpc":"2.0","id":1,"method":"echo","params":[5]}'
            resp = await http_request(srv.port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                      b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body_), body_))
            assert resp.status == 200 and resp.body == b'{"jsonrpc":"2.0","id":1,"result":5}'
            health = await http_request(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert health.status == 200
            kept = await open_socket(srv.port)  # answered, kept alive, then reaped idle
            await asyncio.get_running_loop().sock_sendall(
                kept, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body_), body_))
            await wait_until(lambda: srv.metrics()["http_rpc_requests"] == 2, what="second POST answered")
            await expect_line(records, f"closed 1000 by the peer peer=127.0.0.1:{port}")
            await expect_line(records, f"closed idle timeout peer=127.0.0.1:{local_port(kept)}")
            kept.close()
            byserver = await RawWS.open(srv.port)
            [cid] = srv.connections()
            srv.close(cid, 1001)
            assert (await byserver.expect_close())[0] == 1001
            await expect_line(records, f"closed 1001 by the server peer=127.0.0.1:{local_port(byserver.sock)}")
            byserver.close()
        finally:
            await srv.stop()
        del records.records[:started]
        assert records.at_least(logging.INFO) == []
        assert records.lines(logging.DEBUG)  # the DEBUG lines above

    run(body())


def test_log_rate_zero_turns_the_log_off(run, server, records):
    async def body():
        srv = await server(server_kw={"log_rate": 0})
        assert srv.reactor.on_event is None and srv.reactor.event_mask == 0
        sock = await open_socket(srv.port)
        await asyncio.get_running_loop().sock_sendall(sock, BAD_START)
        assert (await read_until_eof(sock)).startswith(b"HTTP/1.1 400 ")
        sock.close()
        ws = await RawWS.open(srv.port)
        ws.close()
        await wait_until(lambda: len(srv.reactor) == 0, what="both gone")
        assert records.lines() == []
        assert srv.metrics()["log_lines"] == 0

    run(body())
