"""Every keepalive timeout driven past its limit: idle_timeout, ping_interval /
pong_timeout, close_timeout. One reaper sweep enforces them all; short timeouts here,
and every wait below is bounded by a generous deadline, never asserted as a speed."""
from __future__ import annotations

import asyncio

from helpers import wait_until, ws_url
from rawclient import OP_CLOSE, OP_PING, OP_PONG, RawWS
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def test_idle_timeout_closes_1001(run, server):
    async def body():
        srv = await server(idle_timeout=0.4)
        async with connect(ws_url(srv), proxy=None, ping_interval=None) as idle:
            busy = await RawWS.open(srv.port)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            # The busy connection sends a whole message every ~50 ms; the idle one nothing.
            closed = None
            n = 0
            while closed is None and loop.time() < deadline:
                await busy.send_text(f"tick {n}")
                assert await busy.recv() == (1, f"tick {n}".encode())
                n += 1
                try:
                    await asyncio.wait_for(idle.recv(), 0.05)
                except ConnectionClosed as exc:
                    closed = exc
                except (TimeoutError, asyncio.TimeoutError):
                    pass
            assert closed is not None, "idle connection never closed"
            assert closed.rcvd is not None and closed.rcvd.code == 1001
            # The busy connection keeps ticking for twice the idle timeout more and is
            # never closed: the timer counts whole messages, per connection.
            until = loop.time() + 0.8
            while loop.time() < until:
                await busy.send_text(f"tick {n}")
                assert await busy.recv() == (1, f"tick {n}".encode())
                n += 1
                await asyncio.sleep(0.05)
            busy.close()
        m = srv.metrics()
        assert m["closed_idle"] == 1

    run(body())


def test_unanswered_ping_drops_connection(run, server):
    async def body():
        srv = await server(ping_interval=0.2, pong_timeout=0.3)
        mute = await RawWS.open(srv.port)  # reads frames, never answers
        polite = await RawWS.open(srv.port)  # answers every ping, concurrently
        stop = asyncio.Event()
        pongs = 0

        async def answer_pings() -> None:
            nonlocal pongs
            while not stop.is_set():
                try:
                    ev = await polite.recv_event(timeout=0.05)
                except (TimeoutError, asyncio.TimeoutError):
                    continue
                assert ev is not None, "polite client dropped"
                assert ev[0] == OP_PING, ev
                await polite.send_frame(OP_PONG, ev[1])
                pongs += 1

        answerer = asyncio.create_task(answer_pings())
        try:
            ev = await mute.recv_event(timeout=5)
            assert ev is not None and ev[0] == OP_PING, ev
            assert len(ev[1]) <= 125
            # Dropped without a close frame once pong_timeout passes.
            await mute.expect_dropped(timeout=5)
            m = srv.metrics()
            assert m["closed_pong_timeout"] == 1
            assert m["pings_sent"] >= 1
            # The polite client keeps answering for a few more intervals and stays.
            await wait_until(lambda: pongs >= 3, timeout=10, what="3 pings answered")
        finally:
            stop.set()
            await answerer
        await polite.send_text("here")
        assert await polite.recv() == (1, b"here")
        assert srv.metrics()["closed_pong_timeout"] == 1
        polite.close()
        mute.close()

    run(body())


def test_close_timeout_drops_peer_that_never_answers(run, server):
    async def body():
        srv = await server(close_timeout=0.3)
        raw = await RawWS.open(srv.port)
        await raw.send_text("x")
        await raw.recv()
        (cid,) = srv.connections()
        assert srv.close(cid, 1000, "bye") is True
        ev = await raw.recv_event()
        assert ev is not None and ev[0] == OP_CLOSE
        assert raw.close_frame == (1000, "bye")
        # We never send our close frame: the server gives up after close_timeout.
        await raw.expect_eof(timeout=5)
        await wait_until(lambda: len(srv.reactor) == 0, what="slot freed")
        m = srv.metrics()
        assert m["closed_close_timeout"] == 1
        assert m["closed_by_server"] == 1
        raw.close()

    run(body())
