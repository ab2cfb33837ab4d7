"""The memory ceiling (README: "at 100 % the pool refuses blocks: the connection
needing one is closed 1013 (closed_nomem)").

Pool: size classes 1 KiB / 8 KiB / 64 KiB, 256 KiB arenas, ``memory_limit`` 512 KiB.
Partial 60 KiB messages each borrow one 64 KiB block until the pool can reserve no
more arenas; the next partial message must get close 1013 while the connections
holding blocks finish their messages and get their echoes. (The soft limit is set to
100 % here so admission does not refuse first; the soft limit has its own test in
``test_admission.py``.)
"""
from __future__ import annotations

import asyncio

import pytest
from helpers import Echo, wait_until
from rawclient import OP_BINARY, RawWS

from fastrpc._core import encode_frame

MESSAGE = 60 * 1024
CONNECTIONS = 10


@pytest.mark.parametrize("idle_arenas", ["kept", "trimmed_by_reaper"])
def test_pool_ceiling_closes_1013_others_unaffected(run, server, idle_arenas):
    async def body():
        srv = await server(memory_limit=512 * 1024, memory_soft_ratio=1.0)
        conns = [await RawWS.open(srv.port) for _ in range(CONNECTIONS)]
        if idle_arenas == "trimmed_by_reaper":
            # An idle server: the reaper returns the arenas nobody uses (about once a
            # second), so the pool starts empty, as it does in production.
            await wait_until(lambda: srv.pool.bytes_reserved == 0, timeout=10,
                             what="the reaper trims idle arenas")
        frame = encode_frame(OP_BINARY, b"m" * MESSAGE, mask=True)
        holders: list[RawWS] = []
        refused = None
        for ws in conns:
            await ws.send_raw(frame[:1000])
            before = len(holders)
            # Either this one borrowed a block or it was refused.
            await wait_until(
                lambda: srv.pool.bytes_in_use >= (before + 1) * 64 * 1024
                or srv.metrics()["closed_nomem"] > 0,
                what="block borrowed or refused")
            if srv.metrics()["closed_nomem"]:
                refused = ws
                break
            holders.append(ws)
        assert refused is not None, f"pool never refused a block: {srv.pool.stats()}"
        assert srv.metrics()["pool_failed_acquires"] >= 1
        # The refused connection is told why: close 1013 (try again later).
        code, _ = await refused.expect_close()
        assert code == 1013
        m = srv.metrics()
        assert m["closed_nomem"] == 1, m
        assert m["connections"] == CONNECTIONS - 1, m
        # The holders finish their messages and get them back.
        for ws in holders:
            await ws.send_raw(frame[1000:])
            assert await ws.recv() == (OP_BINARY, b"m" * MESSAGE)
        await wait_until(lambda: srv.pool.bytes_in_use == 0, what="every block returned")
        # And the refused client can come back.
        again = await RawWS.open(srv.port)
        await again.send_raw(frame)
        assert await again.recv() == (OP_BINARY, b"m" * MESSAGE)
        live = [ws for ws in conns if ws is not refused] + [again]
        for ws in live:
            await ws.send_close(1000)
        for ws in live:
            assert (await ws.expect_close())[0] == 1000
        await wait_until(lambda: len(srv.reactor) == 0, what="all closed")
        assert srv.reactor.n_open == 0
        assert srv.metrics()["closed_nomem"] == 1
        for ws in conns + [again]:
            ws.close()

    run(body())


class Named(Echo):
    """Remembers which id sent which text, so the test can address a raw client."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: dict[bytes, int] = {}

    def on_text(self, cid: int, data: bytes) -> bytes:
        self.ids.setdefault(data, cid)
        return data


def test_close_at_pool_ceiling_keeps_table_consistent(run, server):
    """``server.close(cid)`` while the pool can give no block for the close frame: the
    connection must end exactly once and the table's bookkeeping must stay right (the
    sweep must not find the freed slot later and end it a second time)."""

    async def body():
        handler = Named()
        srv = await server(handler, memory_limit=512 * 1024, memory_soft_ratio=1.0,
                           close_timeout=0.3)
        conns = [await RawWS.open(srv.port) for _ in range(10)]
        for i, ws in enumerate(conns):
            await ws.send_text(f"c{i}")
            assert await ws.recv() == (1, f"c{i}".encode())
        await wait_until(lambda: srv.pool.bytes_reserved == 0, timeout=10,
                         what="the reaper trims idle arenas")
        frame = encode_frame(OP_BINARY, b"m" * MESSAGE, mask=True)
        holders, bystander, victim = conns[:8], conns[8], conns[9]
        for ws in holders:
            await ws.send_raw(frame[:1000])
        # Full: every block the ceiling allows to large messages is out (the pool keeps
        # one small-class arena back, so a holder may already have been refused).
        await wait_until(lambda: srv.pool.bytes_in_use + 64 * 1024 > 512 * 1024 - srv.pool.reserve
                         or srv.pool.failed_acquires > 0, what="pool full")
        victim_cid = handler.ids[b"c9"]

        srv.close(victim_cid, 1000, "bye")
        await victim.expect_eof(timeout=5)  # the connection ends, with or without a close frame
        for ws in holders:
            ws.close()
        await wait_until(lambda: srv.pool.bytes_in_use == 0, what="holders' blocks returned")
        # Let several sweeps pass the victim's close_timeout.
        await asyncio.sleep(1.0)
        m = srv.metrics()
        assert [c for c, _ in handler.closes].count(victim_cid) == 1, handler.closes
        # The close frame goes out from the stack even at the ceiling; this raw client
        # never answers it, so the victim ends by one close timeout, never by two.
        assert m["closed_close_timeout"] <= 1, m
        assert len(srv.reactor) == 1 and srv.reactor.n_open == 1, (len(srv.reactor), srv.reactor.n_open)
        assert srv.connections() == [handler.ids[b"c8"]]
        await bystander.send_text("bystander")
        assert await bystander.recv() == (1, b"bystander")
        for ws in conns:
            ws.close()
        await wait_until(lambda: len(srv.reactor) == 0, what="all gone")
        assert srv.reactor.n_open == 0

    run(body())
