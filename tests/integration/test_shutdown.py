"""Graceful stop: requests in flight are answered before the 1001 close; sockets that
reach the HTTP phase during the drain get 503; stop() returns with the table empty,
also when requests never finish (drain_timeout) or peers never answer (close_timeout)."""
from __future__ import annotations

import asyncio
import json

import pytest
from helpers import Echo, wait_until, ws_url
from rawclient import OP_CLOSE, RawWS, http_request, open_socket, parse_http_head, read_until_eof, upgrade_request
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


class Slow(Echo):
    """``slow*`` requests begin, and finish later through loop.call_later +
    server.send + server.end once the test sets ``release`` (polled every 20 ms)."""

    def __init__(self) -> None:
        super().__init__()
        self.srv = None
        self.release = False
        self.answered: list[bytes] = []

    def on_text(self, cid: int, data: bytes) -> bytes | None:
        if data.startswith(b"slow"):
            self.srv.begin(cid)
            asyncio.get_running_loop().call_later(0.02, self._finish, cid, data, 500)
            return None
        return data

    def _finish(self, cid: int, data: bytes, tries: int) -> None:
        if not self.release and tries > 0:
            asyncio.get_running_loop().call_later(0.02, self._finish, cid, data, tries - 1)
            return
        self.answered.append(data)
        self.srv.send(cid, b"done:" + data)
        self.srv.end(cid)


def test_graceful_stop_answers_in_flight_then_1001(run, server):
    async def body():
        handler = Slow()
        srv = await server(handler, drain_timeout=20, close_timeout=2)
        handler.srv = srv
        port = srv.port
        loop = asyncio.get_running_loop()
        async with connect(ws_url(srv), proxy=None, ping_interval=None) as ws:
            # Two sockets accepted before the stop; their requests come during the drain.
            late_upgrade = await open_socket(port)
            late_health = await open_socket(port)
            await wait_until(lambda: srv.reactor.n_pending == 2, what="2 pending sockets")
            await ws.send("slow-1")
            await ws.send("slow-2")
            await wait_until(lambda: srv.metrics()["requests_in_flight"] == 2, what="2 in flight")

            stopping = asyncio.create_task(srv.stop())
            await wait_until(lambda: srv.sockets == (), what="listener closed")
            assert not stopping.done()
            # Draining: no new connections.
            with pytest.raises(ConnectionRefusedError):
                s = await open_socket(port)
                s.close()
            # Requests from sockets accepted earlier are answered 503.
            await loop.sock_sendall(late_upgrade, upgrade_request())
            resp = parse_http_head(await read_until_eof(late_upgrade))
            assert resp.status == 503
            assert resp.headers["retry-after"] == "7"
            await loop.sock_sendall(late_health, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            resp = parse_http_head(await read_until_eof(late_health))
            assert resp.status == 503
            assert json.loads(resp.body)["status"] == "draining"
            late_upgrade.close()
            late_health.close()
            assert not stopping.done()
            assert srv.metrics()["refused_draining"] == 1

            # The requests finish: answered first, then the 1001.
            handler.release = True
            assert await asyncio.wait_for(ws.recv(), 5) == "done:slow-1"
            assert await asyncio.wait_for(ws.recv(), 5) == "done:slow-2"
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
            await asyncio.wait_for(stopping, 10)
        assert len(srv.reactor) == 0
        assert srv.pool.bytes_in_use == 0
        m = srv.metrics()
        assert m["closed_by_server"] == 1
        assert m["requests_in_flight"] == 0
        assert handler.answered == [b"slow-1", b"slow-2"]
        assert [c for _, c in handler.closes] == [1001]

    run(body())


def test_stop_bounded_by_drain_and_close_timeouts(run, server):
    async def body():
        handler = Slow()  # never released: its requests never finish
        srv = await server(handler, drain_timeout=0.3, close_timeout=0.3)
        handler.srv = srv
        stuck = await RawWS.open(srv.port)
        mute = await RawWS.open(srv.port)  # will never answer our close frame
        polite = await RawWS.open(srv.port)
        await stuck.send_text("slow-forever")
        await wait_until(lambda: srv.metrics()["requests_in_flight"] == 1, what="in flight")

        stopping = asyncio.create_task(srv.stop())
        ev = await mute.recv_event(timeout=5)
        assert ev is not None and ev[0] == OP_CLOSE
        assert mute.close_frame[0] == 1001
        assert (await polite.expect_close())[0] == 1001
        await asyncio.wait_for(stopping, 10)
        assert len(srv.reactor) == 0
        assert srv.pool.bytes_in_use == 0
        # The mute one was dropped after close_timeout, not waited on forever.
        await mute.expect_eof(timeout=5)
        await stuck.expect_eof(timeout=5)
        for ws in (stuck, mute, polite):
            ws.close()
        # A second stop() is a no-op.
        await srv.stop()
        m = srv.metrics()
        assert m["connections"] == 0 and m["requests_in_flight"] == 0

    run(body())


def test_stop_with_idle_clients_and_pending_handshakes(run, server):
    async def body():
        srv = await server()
        port = srv.port
        clients = [await RawWS.open(srv.port) for _ in range(5)]
        pending = [await open_socket(srv.port) for _ in range(3)]
        await wait_until(lambda: srv.reactor.n_pending == 3 and srv.reactor.n_open == 5,
                         what="5 open, 3 pending")
        stopping = asyncio.create_task(srv.stop())
        for ws in clients:
            assert (await ws.expect_close())[0] == 1001
        for s in pending:
            assert await read_until_eof(s) == b""  # dropped, no HTTP answer
            s.close()
        await asyncio.wait_for(stopping, 10)
        assert len(srv.reactor) == 0
        for ws in clients:
            ws.close()
        # Nothing listens any more.
        with pytest.raises(ConnectionRefusedError):
            await http_request(port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")

    run(body())


# --- None and 0 for the two waits of stop() (Limits docstrings) -------------------------

STOP_WAIT = 15.0  #: bound on any stop(): a bug must fail the test, not hang the suite
QUIET = 0.5  #: how long "stop() is still waiting" is watched (many reaper sweeps)


async def stop_task(srv) -> "asyncio.Task[None]":
    task = asyncio.create_task(asyncio.wait_for(srv.stop(), STOP_WAIT))
    await asyncio.sleep(0)  # stop() has begun: listeners closed, the drain started
    return task


def test_stop_drain_timeout_none_waits_for_every_request(run, server):
    async def body():
        handler = Slow()
        srv = await server(handler, drain_timeout=None, handshake_timeout=0.2)
        handler.srv = srv
        ws = await RawWS.open(srv.port)
        await ws.send_text("slow-1")
        await wait_until(lambda: srv.metrics()["requests_in_flight"] == 1, what="in flight")
        stopping = await stop_task(srv)
        await ws.expect_silence(QUIET)  # no close frame while the request runs
        assert not stopping.done()
        handler.release = True
        assert await ws.recv() == (1, b"done:slow-1")
        assert (await ws.expect_close())[0] == 1001
        await stopping
        assert [c for _, c in handler.closes] == [1001]
        ws.close()

    run(body())


def test_stop_drain_timeout_zero_does_not_wait(run, server):
    async def body():
        handler = Slow()  # never released
        srv = await server(handler, drain_timeout=0)
        handler.srv = srv
        ws = await RawWS.open(srv.port)
        await ws.send_text("slow-1")
        await wait_until(lambda: srv.metrics()["requests_in_flight"] == 1, what="in flight")
        stopping = await stop_task(srv)
        # The 1001 comes while the request is still in flight: nothing was waited for.
        assert (await ws.expect_close())[0] == 1001
        assert handler.answered == []
        await stopping
        ws.close()

    run(body())


def test_stop_close_timeout_none_waits_for_the_peers_close_frame(run, server):
    async def body():
        handler = Echo()
        # handshake_timeout only makes the reaper sweep often (every 50 ms) meanwhile.
        srv = await server(handler, close_timeout=None, handshake_timeout=0.2)
        mute = await RawWS.open(srv.port)
        try:
            stopping = await stop_task(srv)
            ev = await mute.recv_event()
            assert ev is not None and ev[0] == OP_CLOSE and mute.close_frame[0] == 1001
            await asyncio.sleep(QUIET)  # the peer takes its time: neither stop() nor the reaper drops it
            assert not stopping.done()
            assert len(srv.reactor) == 1 and srv.metrics()["closed_close_timeout"] == 0
            await mute.send_close(1001)
            await mute.expect_eof()
            await stopping
        finally:
            mute.close()  # a failed assertion must not leave stop() waiting on this peer
        assert [c for _, c in handler.closes] == [1001]

    run(body())


def test_stop_close_timeout_zero_drops_without_waiting(run, server):
    async def body():
        handler = Echo()
        srv = await server(handler, close_timeout=0)
        clients = [await RawWS.open(srv.port) for _ in range(2)]
        stopping = await stop_task(srv)
        for ws in clients:
            # Our close frame is written, then the socket is dropped at once: a peer
            # that answers (expect_close replies) is not waited for either.
            code, _ = await ws.expect_close()
            assert code == 1001
        await stopping
        assert [c for _, c in handler.closes] == [1006, 1006]
        assert srv.metrics()["closed_close_timeout"] == 0  # stop() dropped them, no sweep
        for ws in clients:
            ws.close()

    run(body())


def test_reaper_close_timeout_none_keeps_a_closing_connection(run, server):
    async def body():
        handler = Echo()
        srv = await server(handler, close_timeout=None, handshake_timeout=0.2)
        mute = await RawWS.open(srv.port)
        try:
            (cid,) = srv.connections()
            assert srv.close(cid, 1000, "bye")
            ev = await mute.recv_event()
            assert ev is not None and ev[0] == OP_CLOSE
            # A witness the reaper drops after its handshake_timeout: sweeps have run
            # since our close frame, and none may have dropped the closing connection.
            witness = await open_socket(srv.port)
            await wait_until(lambda: srv.metrics()["handshake_timeout"] == 1, what="witness dropped")
            witness.close()
            assert len(srv.reactor) == 1 and srv.metrics()["closed_close_timeout"] == 0
            await mute.send_close(1000)
            await mute.expect_eof()
        finally:
            mute.close()
        await wait_until(lambda: len(srv.reactor) == 0, what="connection gone")
        assert srv.metrics()["closed_close_timeout"] == 0

    run(body())


def test_reaper_close_timeout_zero_drops_at_the_next_sweep(run, server):
    async def body():
        handler = Echo()
        srv = await server(handler, close_timeout=0, handshake_timeout=0.2)
        mute = await RawWS.open(srv.port)
        (cid,) = srv.connections()
        assert srv.close(cid, 1000, "bye")
        ev = await mute.recv_event()
        assert ev is not None and ev[0] == OP_CLOSE
        await mute.expect_eof()  # never answered: dropped, not waited for
        assert srv.metrics()["closed_close_timeout"] == 1
        assert [c for _, c in handler.closes] == [1006]
        mute.close()

    run(body())
