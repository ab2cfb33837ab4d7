"""Backpressure: max_requests_in_flight pauses reading; a peer that never reads is
dropped once its pending output passes max_pending_output, while others carry on."""
from __future__ import annotations

import asyncio

from helpers import Echo, wait_until, ws_url
from rawclient import OP_TEXT, RawWS
from websockets.asyncio.client import connect


class Holding(Echo):
    """``hold`` begins a request and never ends it (the test does); the rest echoes."""

    def __init__(self) -> None:
        super().__init__()
        self.srv = None
        self.held: list[int] = []

    def on_text(self, cid: int, data: bytes) -> bytes | None:
        if data == b"hold":
            self.srv.begin(cid)
            self.held.append(cid)
            return None
        return data


def test_max_requests_in_flight_pauses_reading(run, server):
    async def body():
        handler = Holding()
        srv = await server(handler, max_requests_in_flight=2)
        handler.srv = srv
        ws = await RawWS.open(srv.port)
        other = await RawWS.open(srv.port)
        await ws.send_text("hold")
        await ws.send_text("hold")
        await wait_until(lambda: len(handler.held) == 2, what="2 requests held")
        cid = handler.held[0]
        assert srv.metrics()["requests_in_flight"] == 2
        assert srv.metrics()["read_pauses"] == 1
        await ws.send_text("a")
        await ws.send_text("b")
        # Not read while 2 requests are in flight.
        await ws.expect_silence(0.3)
        assert srv.metrics()["messages_in"] == 2
        # Other connections are not paused.
        await other.send_text("other")
        assert await other.recv() == (OP_TEXT, b"other")
        # end() brings it under the cap: reading resumes, kept bytes are parsed.
        srv.end(cid)
        assert await ws.recv() == (OP_TEXT, b"a")
        assert await ws.recv() == (OP_TEXT, b"b")
        srv.end(cid)
        assert srv.metrics()["requests_in_flight"] == 0
        await ws.send_text("c")
        assert await ws.recv() == (OP_TEXT, b"c")
        assert srv.metrics()["read_pauses"] == 1
        ws.close()
        other.close()

    run(body())


class Feed(Echo):
    """``subscribe`` adds the connection to a feed the test publishes to."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribers: list[int] = []

    def on_text(self, cid: int, data: bytes) -> bytes | None:
        if data == b"subscribe":
            self.subscribers.append(cid)
            return b"subscribed"
        return data


def test_slow_reader_dropped_others_keep_replies(run, server):
    async def body():
        handler = Feed()
        srv = await server(handler, max_pending_output=256 * 1024, write_high_water=32 * 1024)
        # The slow reader: a small receive window and it never reads again.
        slow = await RawWS.open(srv.port, rcvbuf=4096)
        await slow.send_text("subscribe")
        assert await slow.recv() == (OP_TEXT, b"subscribed")
        async with connect(ws_url(srv), proxy=None, ping_interval=None, max_size=None) as fast:
            await fast.send("subscribe")
            assert await fast.recv() == "subscribed"
            slow_cid, fast_cid = handler.subscribers
            chunk = b"%08d" + b"p" * (32 * 1024 - 8)
            received: list[int] = []

            async def read_feed(n: int) -> None:
                while len(received) < n:
                    msg = await fast.recv()
                    received.append(int(msg[:8]))

            # Publish one 32 KiB message per loop turn (bounded) until the slow
            # reader is gone, then a few more; the fast one reads everything.
            sent = 0
            dropped_at = None
            reader = asyncio.create_task(read_feed(10_000))
            try:
                for i in range(2000):
                    msg = b"%08d" % i + chunk[8:]
                    srv.send(slow_cid, msg)
                    assert srv.send(fast_cid, msg), f"fast subscriber refused at {i}"
                    sent += 1
                    if dropped_at is None and slow_cid not in srv.connections():
                        dropped_at = i
                    if dropped_at is not None and i >= dropped_at + 20:
                        break
                    await asyncio.sleep(0.002)
                assert dropped_at is not None, "slow reader never dropped"
                await wait_until(lambda: len(received) == sent, timeout=20,
                                 what="fast subscriber got every message")
            finally:
                reader.cancel()
                try:
                    await reader
                except asyncio.CancelledError:
                    pass
            assert received == list(range(sent))
            # Request/reply still works for the fast one.
            await fast.send("ping?")
            assert await fast.recv() == "ping?"
        m = srv.metrics()
        assert m["closed_slow_reader"] == 1
        assert [c for c, _ in handler.closes if c == slow_cid] == [slow_cid]
        slow.close()

    run(body())
