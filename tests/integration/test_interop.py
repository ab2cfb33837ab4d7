"""Interoperability with WebSocket clients this project did not write.

The ``websockets`` client (``websockets.asyncio.client``) and aiohttp's client talk to
``Server(Echo())``: text, binary, fragmented messages, ping/pong, close codes in both
directions, and the message size limit at its exact edge (RFC 6455 §5.4, §5.5, §7.4).
"""
from __future__ import annotations

import asyncio

import aiohttp
import pytest
from helpers import Echo, wait_until, ws_url
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

LIMIT = 64 * 1024  # TINY.max_message_size


def ws_connect(srv, **kw):
    """websockets client: no proxy lookup, no keepalive pings of its own, room for
    messages above the server's limit (so a 1009 comes from the server, not from here)."""
    kw.setdefault("max_size", 4 * LIMIT)
    return connect(ws_url(srv), proxy=None, ping_interval=None, open_timeout=5, close_timeout=5, **kw)


class TestWebsocketsClient:
    def test_text_and_binary_echo(self, run, server):
        async def body():
            srv = await server()
            async with ws_connect(srv) as ws:
                for text in ("hello", "", "ünïcødé ✓ 𝄞", "x" * 200, "y" * (LIMIT - 1)):
                    await ws.send(text)
                    assert await ws.recv() == text
                for data in (b"\x00\xff" * 3, b"", bytes(range(256)) * 100):
                    await ws.send(data)
                    assert await ws.recv() == data
            await wait_until(lambda: len(srv.reactor) == 0, what="connection gone")
            m = srv.metrics()
            assert m["messages_in"] == m["messages_out"] == 8
            assert m["closed_peer"] == 1

        run(body())

    def test_fragmented_messages(self, run, server):
        async def body():
            srv = await server()
            async with ws_connect(srv) as ws:
                await ws.send(iter([b"ab", b"", b"cd", b"e" * 1000]))
                assert await ws.recv() == b"abcd" + b"e" * 1000
                # A text message fragmented inside a multi-byte character (§5.6: UTF-8 is
                # validated over the whole message, not per frame).
                await ws.send(iter(["h", "é", "llo"]))
                assert await ws.recv() == "héllo"
                parts = ["ab€"[i:i + 1] for i in range(3)]
                await ws.send(iter(parts))
                assert await ws.recv() == "ab€"
                # Fragments summing to exactly the limit are one message at the limit.
                await ws.send(iter([b"f" * (LIMIT // 4)] * 4))
                assert await ws.recv() == b"f" * LIMIT

        run(body())

    def test_ping_answered_with_pong(self, run, server):
        async def body():
            srv = await server()
            async with ws_connect(srv) as ws:
                for payload in (b"", b"abc", b"p" * 125):
                    waiter = await ws.ping(payload)
                    await wait_for_pong(waiter)
                await ws.send("after pings")
                assert await ws.recv() == "after pings"

        run(body())

    @pytest.mark.parametrize("code,reason", [(1000, ""), (4000, "client says bye")])
    def test_client_close_code_echoed(self, run, server, code, reason):
        async def body():
            echo = Echo()
            srv = await server(echo)
            async with ws_connect(srv) as ws:
                await ws.send("x")
                await ws.recv()
                await ws.close(code, reason)
                # RFC 6455 §5.5.1: the server's close frame echoes the status code.
                assert ws.protocol.close_rcvd is not None
                assert ws.protocol.close_rcvd.code == code
            await wait_until(lambda: echo.closes, what="on_close")
            assert [c for _, c in echo.closes] == [code]
            assert srv.metrics()["closed_peer"] == 1

        run(body())

    def test_server_initiated_close(self, run, server):
        async def body():
            echo = Echo()
            srv = await server(echo)
            async with ws_connect(srv) as ws:
                await ws.send("x")
                await ws.recv()
                (cid,) = srv.connections()
                srv.close(cid, 4001, "server says bye")
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
                assert info.value.rcvd.code == 4001
                assert info.value.rcvd.reason == "server says bye"
            await wait_until(lambda: len(srv.reactor) == 0, what="slot freed")
            assert srv.metrics()["closed_by_server"] == 1
            assert [c for _, c in echo.closes] == [4001]

        run(body())

    def test_message_exactly_at_limit_echoed(self, run, server):
        async def body():
            srv = await server()
            async with ws_connect(srv) as ws:
                await ws.send(b"\xab" * LIMIT)
                assert await ws.recv() == b"\xab" * LIMIT
                await ws.send("t" * LIMIT)
                assert await ws.recv() == "t" * LIMIT
            assert srv.metrics()["closed_too_big"] == 0

        run(body())

    @pytest.mark.parametrize("fragmented", [False, True])
    def test_message_one_byte_over_limit_gets_1009(self, run, server, fragmented):
        async def body():
            srv = await server()
            async with ws_connect(srv) as ws:
                if fragmented:
                    await ws.send(iter([b"a" * (LIMIT // 2), b"b" * (LIMIT // 2 + 1)]))
                else:
                    await ws.send(b"a" * (LIMIT + 1))
                with pytest.raises(ConnectionClosedError) as info:
                    await ws.recv()
                assert info.value.rcvd is not None, "no close frame from the server"
                assert info.value.rcvd.code == 1009
            await wait_until(lambda: len(srv.reactor) == 0, what="slot freed")
            assert srv.metrics()["closed_too_big"] == 1

        run(body())


async def wait_for_pong(waiter, timeout: float = 5.0) -> None:
    await asyncio.wait_for(waiter, timeout)


class TestAiohttpClient:
    def test_text_and_binary_echo(self, run, server):
        async def body():
            srv = await server()
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(ws_url(srv)) as ws:
                    for text in ("hello", "", "ünïcødé ✓", "z" * 5000):
                        await ws.send_str(text)
                        msg = await ws.receive(timeout=5)
                        assert msg.type == aiohttp.WSMsgType.TEXT and msg.data == text
                    for data in (b"\x00\x01", b"", b"\xfe" * 7000):
                        await ws.send_bytes(data)
                        msg = await ws.receive(timeout=5)
                        assert msg.type == aiohttp.WSMsgType.BINARY and msg.data == data
            await wait_until(lambda: len(srv.reactor) == 0, what="connection gone")
            assert srv.metrics()["messages_out"] == 7

        run(body())

    def test_ping_answered_with_pong(self, run, server):
        async def body():
            srv = await server()
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(ws_url(srv), autoping=False) as ws:
                    await ws.ping(b"are you there")
                    msg = await ws.receive(timeout=5)
                    assert msg.type == aiohttp.WSMsgType.PONG
                    assert msg.data == b"are you there"

        run(body())

    @pytest.mark.parametrize("code,reason", [(1000, b""), (4000, b"client says bye")])
    def test_client_close_code_echoed(self, run, server, code, reason):
        async def body():
            echo = Echo()
            srv = await server(echo)
            async with aiohttp.ClientSession() as session:
                ws = await session.ws_connect(ws_url(srv))
                await ws.send_str("x")
                await ws.receive(timeout=5)
                assert await ws.close(code=code, message=reason)
                assert ws.close_code == code  # the code in the server's close frame
            await wait_until(lambda: echo.closes, what="on_close")
            assert [c for _, c in echo.closes] == [code]

        run(body())

    def test_server_initiated_close(self, run, server):
        async def body():
            srv = await server()
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(ws_url(srv)) as ws:
                    await ws.send_str("x")
                    await ws.receive(timeout=5)
                    (cid,) = srv.connections()
                    srv.close(cid, 4001, "server says bye")
                    msg = await ws.receive(timeout=5)
                    assert msg.type == aiohttp.WSMsgType.CLOSE
                    assert msg.data == 4001
                    assert msg.extra == "server says bye"
            await wait_until(lambda: len(srv.reactor) == 0, what="slot freed")
            assert srv.metrics()["closed_by_server"] == 1

        run(body())

    def test_message_at_limit_and_one_over(self, run, server):
        async def body():
            srv = await server()
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(ws_url(srv), max_msg_size=4 * LIMIT) as ws:
                    await ws.send_bytes(b"\x01" * LIMIT)
                    msg = await ws.receive(timeout=5)
                    assert msg.type == aiohttp.WSMsgType.BINARY and msg.data == b"\x01" * LIMIT
                    await ws.send_bytes(b"\x01" * (LIMIT + 1))
                    msg = await ws.receive(timeout=5)
                    assert msg.type == aiohttp.WSMsgType.CLOSE
                    assert msg.data == 1009
            await wait_until(lambda: len(srv.reactor) == 0, what="slot freed")
            assert srv.metrics()["closed_too_big"] == 1

        run(body())
