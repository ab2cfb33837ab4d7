"""Load sized for a 2-core machine: 2,000 connections from ten 127.0.0.x source
addresses, all open at once, each sending a few messages; every reply is checked, then
stop() closes them all with 1001. Marked slow; still in the default run."""
from __future__ import annotations

import asyncio

import pytest
from rawclient import OP_BINARY, OP_TEXT, RawWS

CONNECTIONS = 2000
SOURCES = [f"127.0.0.{10 + i}" for i in range(10)]
MESSAGES = 3
OPENING = 200  # handshakes in progress at once (client side)


def payload(i: int, k: int) -> tuple[int, bytes]:
    """Message k of connection i: text or binary, sizes across the length encodings."""
    size = (0, 125, 126, 700, 4000, 65535 - 8)[(i + k) % 6]
    body = f"{i:05d}:{k}:".encode()
    data = (body * (size // len(body) + 1))[:size] if size >= len(body) else body
    return (OP_TEXT if (i + k) % 2 else OP_BINARY), data


@pytest.mark.slow
def test_2000_connections_echo_then_stop(run, server):
    async def body():
        srv = await server(
            max_connections=CONNECTIONS + 16,
            max_connections_per_ip=CONNECTIONS // len(SOURCES) + 8,
            max_pending_handshakes=1024,
            handshake_timeout=30.0,
            close_timeout=10.0,
            memory_limit=64 << 20,
        )
        gate = asyncio.Semaphore(OPENING)

        async def open_one(i: int) -> RawWS:
            async with gate:
                return await RawWS.open(srv.port, local_ip=SOURCES[i % len(SOURCES)], timeout=30)

        clients = await asyncio.gather(*(open_one(i) for i in range(CONNECTIONS)))
        try:
            assert srv.metrics()["connections"] == CONNECTIONS
            assert len(srv.reactor) == CONNECTIONS
            peers = {srv.peer(cid)[0] for cid in srv.connections()}
            assert peers == set(SOURCES)

            async def talk(i: int, ws: RawWS) -> None:
                for k in range(MESSAGES):
                    op, data = payload(i, k)
                    await ws.send_frame(op, data)
                for k in range(MESSAGES):
                    assert await ws.recv(timeout=30) == payload(i, k), (i, k)

            await asyncio.gather(*(talk(i, ws) for i, ws in enumerate(clients)))
            m = srv.metrics()
            assert m["messages_in"] == m["messages_out"] == CONNECTIONS * MESSAGES
            assert m["refused_per_ip"] == m["refused_max_connections"] == 0
            assert m["closed_eof"] == m["closed_protocol"] == 0

            stopping = asyncio.create_task(srv.stop())
            codes = await asyncio.gather(*(ws.expect_close(timeout=30) for ws in clients))
            assert {code for code, _ in codes} == {1001}
            await asyncio.wait_for(stopping, 30)
            assert len(srv.reactor) == 0
            assert srv.metrics()["closed_by_server"] == CONNECTIONS
            assert srv.metrics()["closed_close_timeout"] == 0
        finally:
            for ws in clients:
                ws.close()

    run(body(), timeout=100)
