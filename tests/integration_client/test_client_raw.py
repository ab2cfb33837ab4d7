"""fastrpc.Client against servers that break a rule (``rawservers.py``): every invalid
101 is refused with ``ConnectError``, a server that stops answering pings is dropped,
an error reply the server could not tie to an id fails the one message waiting.
"""
from __future__ import annotations

import asyncio

import orjson
import pytest
from rawservers import Conn, RawServer, answer_101, drain_until_eof, frames, send_text

import fastrpc
from fastrpc import ConnectError, ConnectionLost, RPCError
from fastrpc.client import reactors

WAIT = 5.0


def refuse_with(make):
    async def behaviour(conn: Conn) -> None:
        conn.writer.write(make(conn.key))
        await conn.writer.drain()
        await drain_until_eof(conn)

    return behaviour


BAD_101 = {
    "wrong accept key": (lambda k: answer_101(k, accept="dGhlIHNhbXBsZSBub25jZQ=="), "Sec-WebSocket-Accept"),
    "no accept key": (lambda k: b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      b"Connection: Upgrade\r\n\r\n", "Sec-WebSocket-Accept"),
    "Upgrade not websocket": (lambda k: answer_101(k, upgrade=b"h2c"), "Upgrade"),
    "Connection not upgrade": (lambda k: answer_101(k, connection=b"keep-alive"), "Connection"),
    "extension accepted": (lambda k: answer_101(k, extra=b"Sec-WebSocket-Extensions: permessage-deflate\r\n"),
                           "extension"),
    "subprotocol not offered": (lambda k: answer_101(k, extra=b"Sec-WebSocket-Protocol: chat\r\n"),
                                "subprotocol"),
    "HTTP/1.0": (lambda k: answer_101(k).replace(b"HTTP/1.1", b"HTTP/1.0"), "status line"),
    "garbage": (lambda k: b"SSH-2.0-OpenSSH_9.0\r\n\r\n", "status line"),
}


@pytest.mark.parametrize("case", sorted(BAD_101))
def test_invalid_101_refused(crun, case):
    make, words = BAD_101[case]

    async def body():
        async with RawServer(refuse_with(make)) as srv:
            with pytest.raises(ConnectError) as e:
                await fastrpc.connect(srv.url, open_timeout=WAIT)
            assert words in str(e.value)
            assert srv.connections == 1  # not retried
            head = srv.heads[0]
            assert head.startswith(b"GET / HTTP/1.1\r\n") and b"\r\nSec-WebSocket-Version: 13\r\n" in head

    crun(body())


def test_http_503_from_a_raw_server(crun):
    async def body():
        resp = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\nContent-Length: 5\r\n"
                b"Connection: close\r\n\r\nfull\n")
        async with RawServer(refuse_with(lambda k: resp)) as srv:
            with pytest.raises(ConnectError) as e:
                await fastrpc.connect(srv.url)
            assert e.value.status == 503 and e.value.retry_after == 3.0
            assert "HTTP 503 Service Unavailable" in str(e.value)

    crun(body())


def test_request_head(crun):
    async def body():
        async with RawServer(refuse_with(lambda k: b"HTTP/1.1 404 Not Found\r\n\r\n")) as srv:
            with pytest.raises(ConnectError):
                await fastrpc.connect(f"ws://user:p%40ss@127.0.0.1:{srv.port}/rpc?a=b", origin="http://o.example",
                                      headers=[("X-Token", "t1")], subprotocols=["a", "b"])
            head = srv.heads[0].decode()
            lines = head.split("\r\n")
            assert lines[0] == "GET /rpc?a=b HTTP/1.1"
            assert f"Host: 127.0.0.1:{srv.port}" in lines
            for want in ("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
                         "Origin: http://o.example", "X-Token: t1", "Sec-WebSocket-Protocol: a, b",
                         "Authorization: Basic dXNlcjpwQHNz"):
                assert want in lines, want
            assert not any(line.lower().startswith("sec-websocket-extensions") for line in lines)

    crun(body())


def test_server_that_stops_answering_pings_is_dropped(crun):
    async def body():
        async def silent(conn: Conn) -> None:
            conn.writer.write(answer_101(conn.key))
            await drain_until_eof(conn)  # reads everything, answers nothing: no pongs

        async with RawServer(silent) as srv:
            loop = asyncio.get_running_loop()
            c = await fastrpc.connect(srv.url, ping_interval=0.1, pong_timeout=0.2)
            (r,) = reactors()  # this client's own (its ping settings differ from the default)
            t0 = loop.time()
            with pytest.raises(ConnectionLost) as e:
                await asyncio.wait_for(c.call("anything", timeout=30), WAIT)
            assert e.value.code == 1006
            assert 0.2 <= loop.time() - t0 < 2.0
            assert c.closed
            assert r.counters_dict()["closed_pong_timeout"] == 1
            await c.close()

    crun(body())


def test_close_waits_for_the_server_then_gives_up(crun):
    async def body():
        async def no_close_reply(conn: Conn) -> None:
            conn.writer.write(answer_101(conn.key))
            await drain_until_eof(conn)

        async with RawServer(no_close_reply) as srv:
            loop = asyncio.get_running_loop()
            c = await fastrpc.connect(srv.url, close_timeout=0.2)
            t0 = loop.time()
            await c.close()
            assert c.closed and 0.15 <= loop.time() - t0 < 2.0

    crun(body())


def test_error_reply_with_null_id(crun):
    async def body():
        async def answer_null(conn: Conn) -> None:
            conn.writer.write(answer_101(conn.key))
            async for op, payload in frames(conn):
                if op == 1:
                    msg = orjson.loads(payload)
                    if isinstance(msg, dict) and msg.get("method") == "parallel":
                        continue  # never answered
                    send_text(conn, b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}')
                elif op == 8:
                    conn.writer.write(fastrpc._core.encode_close(1000))
                    return

        async with RawServer(answer_null) as srv:
            async with fastrpc.connect(srv.url) as c:
                with pytest.raises(RPCError) as e:
                    await c.call("x")
                assert e.value.code == -32700
                # Two messages waiting: the id-null error cannot be tied to either.
                p = asyncio.ensure_future(c.call("parallel", timeout=0.5))
                await asyncio.sleep(0.05)
                with pytest.raises(fastrpc.CallTimeout):
                    await c.call("y", timeout=0.5)
                with pytest.raises(fastrpc.CallTimeout):
                    await p
                assert c.stats()["malformed"] == 1

    crun(body())
