"""Admission and the HTTP phase driven past every limit (README "Limits" table).

Each test asserts the documented answer on the wire and its counter in
``server.metrics()``.
"""
from __future__ import annotations

import asyncio
import json

import pytest
from helpers import wait_until, ws_url
from fastrpc._core import encode_frame
from fastrpc.limits import KiB
from rawclient import OP_BINARY, RawWS, http_request, open_socket, read_until_eof, upgrade_request
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus


def ws_connect(srv, **kw):
    return connect(ws_url(srv), proxy=None, ping_interval=None, open_timeout=5, close_timeout=5, **kw)


async def echo_once(ws, text: str = "still here") -> None:
    await ws.send(text)
    assert await asyncio.wait_for(ws.recv(), 5) == text


def test_max_connections_503_with_retry_after(run, server):
    async def body():
        srv = await server(max_connections=2)
        async with ws_connect(srv) as a, ws_connect(srv) as b:
            with pytest.raises(InvalidStatus) as info:
                async with ws_connect(srv):
                    pass
            response = info.value.response
            assert response.status_code == 503
            assert response.headers["Retry-After"] == "7"
            assert srv.metrics()["refused_max_connections"] == 1
            await echo_once(a)
            await echo_once(b)
        # A slot is free again: the next client gets in.
        await wait_until(lambda: srv.reactor.n_open == 0, what="both closed")
        async with ws_connect(srv) as c:
            await echo_once(c)
        assert srv.metrics()["refused_max_connections"] == 1

    run(body())


def test_max_connections_per_ip_429_other_ips_still_admitted(run, server):
    async def body():
        srv = await server(max_connections_per_ip=2)
        async with ws_connect(srv, local_addr=("127.0.0.2", 0)) as a, \
                ws_connect(srv, local_addr=("127.0.0.2", 0)) as b:
            with pytest.raises(InvalidStatus) as info:
                async with ws_connect(srv, local_addr=("127.0.0.2", 0)):
                    pass
            assert info.value.response.status_code == 429
            assert info.value.response.headers["Retry-After"] == "7"
            assert srv.metrics()["refused_per_ip"] == 1
            # Another address is not affected by 127.0.0.2's cap.
            async with ws_connect(srv, local_addr=("127.0.0.3", 0)) as c, \
                    ws_connect(srv, local_addr=("127.0.0.3", 0)) as d:
                await echo_once(c)
                await echo_once(d)
                assert sorted(ip for ip, _ in map(srv.peer, srv.connections())) == [
                    "127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"]
            await echo_once(a)
            await echo_once(b)
        assert srv.metrics()["refused_per_ip"] == 1
        assert srv.metrics()["refused_max_connections"] == 0

    run(body())


def test_max_pending_handshakes_closed_at_accept(run, server):
    async def body():
        srv = await server(max_pending_handshakes=3)
        upgraded = await RawWS.open(srv.port)  # an open connection is not a pending one
        silent = [await open_socket(srv.port) for _ in range(3)]
        try:
            await wait_until(lambda: srv.reactor.n_pending == 3, what="3 pending handshakes")
            extra = await open_socket(srv.port)
            try:
                # Closed at accept: EOF before we send anything, and no HTTP answer.
                assert await read_until_eof(extra) == b""
            finally:
                extra.close()
            assert srv.metrics()["pending_overflow"] == 1
            assert srv.metrics()["pending_handshakes"] == 3
            await upgraded.send_text("open connections carry on")
            assert await upgraded.recv() == (1, b"open connections carry on")
        finally:
            for s in silent:
                s.close()
        await wait_until(lambda: srv.reactor.n_pending == 0, what="silent sockets gone")
        late = await RawWS.open(srv.port)
        await late.send_text("in")
        assert await late.recv() == (1, b"in")
        late.close()
        upgraded.close()
        assert srv.metrics()["pending_overflow"] == 1

    run(body())


def pad_request(total: int) -> bytes:
    """An upgrade request of exactly ``total`` bytes (an X-Pad header fills it)."""
    base = upgrade_request(extra=(("X-Pad", ""),))
    pad = total - len(base)
    assert pad >= 0
    req = upgrade_request(extra=(("X-Pad", "p" * pad),))
    assert len(req) == total
    return req


def test_max_handshake_size_431(run, server):
    async def body():
        srv = await server(max_handshake_size=1024)
        # Exactly at the limit: upgraded.
        sock = await RawWS.connect_only(srv.port)
        await sock.send_raw(pad_request(1024))
        assert (await sock.read_handshake()).status == 101
        await sock.send_text("ok")
        assert await sock.recv() == (1, b"ok")
        sock.close()
        # One byte over: 431, then the server closes.
        resp = await http_request(srv.port, pad_request(1025))
        assert resp.status == 431
        assert resp.headers.get("connection", "").lower() == "close"
        # Much larger, sent in one write: still a clean 431, not a reset.
        resp = await http_request(srv.port, pad_request(8000))
        assert resp.status == 431
        m = srv.metrics()
        assert m["handshake_too_large"] == 2
        assert m["upgraded"] == 1

    run(body())


def test_max_handshake_size_above_8k_default(run, server):
    """Raising the limit past the 8 KiB default raises it for the whole server: the
    Python handshake parser must not answer 431 below the core's limit."""
    async def body():
        srv = await server(max_handshake_size=16 * KiB, pool_size_classes=(1 * KiB, 8 * KiB, 64 * KiB))
        for size in (12 * KiB, 16 * KiB):
            ws = await RawWS.connect_only(srv.port)
            await ws.send_raw(pad_request(size))
            assert (await ws.read_handshake()).status == 101, size
            await ws.send_text("ok")
            assert await ws.recv() == (1, b"ok")
            ws.close()
        resp = await http_request(srv.port, pad_request(16 * KiB + 1))
        assert resp.status == 431
        m = srv.metrics()
        assert m["upgraded"] == 2
        assert m["handshake_too_large"] == 1
        assert m["refused_http"] == 0

    run(body())


def test_handshake_timeout_drops_socket(run, server):
    async def body():
        srv = await server(handshake_timeout=0.3)
        half = await open_socket(srv.port)
        silent = await open_socket(srv.port)
        ok = await RawWS.open(srv.port)
        try:
            req = upgrade_request()
            await asyncio.get_running_loop().sock_sendall(half, req[: len(req) // 2])
            # Dropped: EOF and no HTTP answer for either.
            assert await read_until_eof(half, timeout=5) == b""
            assert await read_until_eof(silent, timeout=5) == b""
        finally:
            half.close()
            silent.close()
        m = srv.metrics()
        assert m["handshake_timeout"] == 2
        assert m["pending_handshakes"] == 0
        # The timeout applies to the HTTP phase only: the upgraded one is still served.
        await ok.send_text("alive")
        assert await ok.recv() == (1, b"alive")
        ok.close()

    run(body())


def test_memory_soft_limit_refuses_upgrades_and_health(run, server):
    async def body():
        # 5 % of 1 MiB: one borrowed 64 KiB block puts the server over the soft limit.
        srv = await server(memory_limit=1024 * 1024, memory_soft_ratio=0.05)
        holder = await RawWS.open(srv.port)
        big = 60 * 1024
        frame = encode_frame(OP_BINARY, b"m" * big, mask=True)
        await holder.send_raw(frame[:1000])  # a partial message borrows a block
        await wait_until(lambda: srv.pool.bytes_in_use >= 64 * 1024, what="block borrowed")

        with pytest.raises(InvalidStatus) as info:
            async with ws_connect(srv):
                pass
        assert info.value.response.status_code == 503
        assert info.value.response.headers["Retry-After"] == "7"
        assert srv.metrics()["refused_memory"] == 1

        resp = await http_request(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.status == 503
        assert json.loads(resp.body)["status"] == "over memory limit"

        # The message completes, the block goes back: healthy again, upgrades admitted.
        await holder.send_raw(frame[1000:])
        assert await holder.recv() == (2, b"m" * big)
        await wait_until(lambda: srv.pool.bytes_in_use == 0, what="block returned")
        resp = await http_request(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.status == 200
        async with ws_connect(srv) as ws:
            await echo_once(ws)
        holder.close()
        assert srv.metrics()["refused_memory"] == 1

    run(body())


def test_origin_403_counted_apart_from_auth_403(run, server):
    """An Origin outside ``origins`` gets 403 and counts ``refused_origin`` (a browser's
    script cannot see the status: the counter is how the refusal shows); the auth hook's
    own 403 is not an origin refusal."""
    def auth(path: str, headers: list[tuple[str, str]]) -> bool | int:
        return 403 if path == "/deny" else True

    async def body():
        srv = await server(server_kw={"origins": ["http://good.test"], "auth": auth})
        for origin in ("http://evil.test", None):  # None: no Origin header, not listed
            with pytest.raises(InvalidStatus) as info:
                async with ws_connect(srv, origin=origin):
                    pass
            assert info.value.response.status_code == 403
            assert bytes(info.value.response.body) == b"origin not allowed\n"
        with pytest.raises(InvalidStatus) as info:
            async with connect(ws_url(srv, "/deny"), proxy=None, origin="http://good.test",
                               open_timeout=5):
                pass
        assert info.value.response.status_code == 403
        async with ws_connect(srv, origin="http://good.test") as ws:
            await echo_once(ws)
        m = srv.metrics()
        assert m["refused_origin"] == 2
        assert m["refused_http"] == 3 and m["upgraded"] == 1

    run(body())
