"""fastrpc.Client against fastrpc's own Server, over 127.0.0.1, on asyncio and uvloop.

Calls (positional and named), notifications, batches, error replies, timeouts and
late replies, cancellation, subscriptions (unsubscribe on leaving, a shared channel id,
slow-consumer overflow, the server's own -32004 drop), the server closing or stopping
mid-call, keep-alive pings answered, a clean close, limits (message size), and
refusals: 503 (full, draining), 429 (per-IP cap), connect refused, open timeout.
"""
from __future__ import annotations

import asyncio
import socket

import pytest
from helpers import TINY, wait_until

import fastrpc
from fastrpc import (
    CallTimeout,
    ConnectError,
    ConnectionLost,
    RPCError,
    Server,
    SubscriptionOverflow,
)
from fastrpc.client import reactors
from fastrpc.limits import KiB, Limits

WAIT = 5.0


def build(limits=TINY, **kw) -> Server:
    srv = Server(limits=limits, **kw)
    srv.topic("feed", "ticks")
    seen: list = []
    srv._test_seen = seen  # type: ignore[attr-defined]

    @srv.method("echo")
    def echo(x):
        return x

    @srv.method("add")
    def add(a: int, b: int) -> int:
        return a + b

    @srv.method("fail")
    def fail():
        raise RPCError(-32010, "it failed", {"detail": [1, 2]})

    @srv.method("record")
    def record(*items):
        seen.append(list(items))

    @srv.method("sleep")
    async def sleep(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    @srv.method("big")
    def big(n: int) -> str:
        return "x" * n

    return srv


def url(srv: Server, path: str = "/") -> str:
    return f"ws://127.0.0.1:{srv.port}{path}"


def subs(srv: Server) -> int:
    return int(srv.dispatcher.metrics()["subscriptions"])


def test_calls_positional_named_and_errors(crun, rpc_server):
    async def body():
        srv = await rpc_server(build())
        async with fastrpc.connect(url(srv)) as c:
            assert c.open and c.subprotocol is None
            assert await c.call("echo", {"a": [1, "b", None]}) == {"a": [1, "b", None]}
            assert await c.call("add", 2, 3) == 5
            assert await c.call("add", params={"a": 4, "b": 5}) == 9
            assert await c.call("add", params=[6, 7]) == 13
            with pytest.raises(RPCError) as e:
                await c.call("fail")
            assert (e.value.code, e.value.message, e.value.data) == (-32010, "it failed", {"detail": [1, 2]})
            with pytest.raises(RPCError) as e:
                await c.call("nope")
            assert e.value.code == -32601
            with pytest.raises(RPCError) as e:
                await c.call("add", 1)
            assert e.value.code == -32602
            with pytest.raises(TypeError):
                await c.call("add", 1, params={"b": 2})
            with pytest.raises(TypeError):
                await c.call("echo", object())  # not JSON: nothing sent
            # Many calls in flight on one connection, answered out of order.
            slow = asyncio.ensure_future(c.call("sleep", 0.2))
            results = await asyncio.gather(*(c.call("echo", i) for i in range(500)))
            assert results == list(range(500)) and not slow.done()
            assert await slow == 0.2
            st = c.stats()
            assert st["in_flight"] == 0 and st["malformed"] == 0 and st["unknown_ids"] == 0
            assert st["errors"] == 3
        assert c.closed and c.close_code == 1000

    crun(body())


def test_a_burst_of_pipelined_calls_does_not_stall(crun, rpc_server):
    """20,000 calls of 2 KB queued in one loop turn (40 MB each way). The client keeps
    reading replies while its own requests are still queued: were it to stop reading
    at a write high-water mark, as a server does, both sides would wait for each
    other for ever."""

    async def body():
        srv = await rpc_server(build(Limits()))
        async with fastrpc.connect(url(srv), call_timeout=30) as c:
            blob = "x" * 2000
            results = await asyncio.gather(*(c.call("echo", blob) for _ in range(20_000)))
            assert len(results) == 20_000 and results[-1] == blob

    crun(body())


def test_notifications_reach_the_server(crun, rpc_server):
    async def body():
        srv = await rpc_server(build())
        async with fastrpc.connect(url(srv)) as c:
            await c.notify("record", 1, "two")
            await c.notify("record", params={})
            await c.notify("nope")  # unknown method: a notification gets no answer at all
            assert await c.call("echo", "after") == "after"  # the server read them in order
            assert srv._test_seen == [[1, "two"], []]
            assert c.stats()["replies"] == 1

    crun(body())


def test_batches(crun, rpc_server):
    async def body():
        srv = await rpc_server(build())
        async with fastrpc.connect(url(srv)) as c:
            async with c.batch() as b:
                f1 = b.call("echo", "a")
                f2 = b.call("add", params={"a": 1, "b": 1})
                b.notify("record", "in batch")
                f3 = b.call("fail")
            assert len(b) == 4
            assert await f1 == "a" and await f2 == 2
            with pytest.raises(RPCError):
                await f3
            assert srv._test_seen == [["in batch"]]

            b = c.batch()
            for i in range(20):
                b.call("echo", i)
            assert await b.send() == list(range(20))

            b = c.batch()
            b.call("echo", 1)
            b.call("fail")
            with pytest.raises(RPCError):
                await b.send()
            b = c.batch()
            b.call("echo", 1)
            b.call("nope")
            r = await b.send(return_exceptions=True)
            assert r[0] == 1 and isinstance(r[1], RPCError) and r[1].code == -32601
            with pytest.raises(RuntimeError):
                await b.send()  # sent once

            b = c.batch()
            b.notify("record", "only notifications")
            assert await b.send() == []
            assert await c.batch().send() == []  # empty: nothing sent

            # A block that raises sends nothing; its futures are cancelled.
            with pytest.raises(KeyError):
                async with c.batch() as b:
                    f = b.call("record", "never")
                    raise KeyError
            assert f.cancelled()

            # A batch past the server's cap is answered with one id-null -32600:
            # the only message waiting, so it fails that batch's calls.
            big = c.batch()
            futs = [big.call("echo", i) for i in range(TINY.max_batch_length + 1)]
            with pytest.raises(RPCError) as e:
                await big.send()
            assert e.value.code == -32600 and all(f.done() for f in futs)
            assert await c.call("echo", "still open") == "still open"
            assert srv._test_seen == [["in batch"], ["only notifications"]]

    crun(body())


def test_timeouts_late_replies_and_cancellation(crun, rpc_server):
    async def body():
        srv = await rpc_server(build())
        async with fastrpc.connect(url(srv), call_timeout=0.1) as c:
            with pytest.raises(CallTimeout) as e:
                await c.call("sleep", 0.3)
            assert isinstance(e.value, asyncio.TimeoutError) and isinstance(e.value, TimeoutError)
            assert e.value.method == "sleep"
            assert await c.call("sleep", 0.2, timeout=1.0) == 0.2  # per-call override
            with pytest.raises(CallTimeout):
                async with c.batch() as b:
                    f = b.call("sleep", 0.3)
                await f
            task = asyncio.ensure_future(c.call("sleep", 0.2, timeout=5))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert c.in_flight == 0
            await wait_until(lambda: c.stats()["late_replies"] == 3, WAIT, "the late replies")
            st = c.stats()
            assert st["timeouts"] == 2 and st["malformed"] == 0 and st["unknown_ids"] == 0

    crun(body())


def test_held_sends_are_written_on_release(crun, rpc_server):
    """The reactor writes what is sent while held (``hold_sends``) at
    ``release_sends()``, not on a later loop turn; unheld, on the next turn."""

    async def body():
        srv = await rpc_server(build())
        async with fastrpc.connect(url(srv)) as c:
            [r] = reactors()
            out = r.counters_dict()["bytes_out"]
            req = b'{"jsonrpc":"2.0","id":1000,"method":"echo","params":[1]}'
            assert r.hold_sends() and not r.hold_sends()  # held already: not to release
            assert r.send(c._cid, req)
            await asyncio.sleep(0)
            assert r.counters_dict()["bytes_out"] == out  # held across the turn
            r.release_sends()
            assert r.counters_dict()["bytes_out"] > out
            out = r.counters_dict()["bytes_out"]
            assert r.send(c._cid, req.replace(b"1000", b"1001"))
            assert r.counters_dict()["bytes_out"] == out
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert r.counters_dict()["bytes_out"] > out
            await wait_until(lambda: c.stats()["late_replies"] + c.stats()["unknown_ids"] == 2,
                             WAIT, "the two replies")
            assert await c.call("echo", "still fine") == "still fine"

    crun(body())


def test_many_tasks_in_flight_with_cancellations(crun, rpc_server):
    """64 tasks making calls one after another on one connection while some are
    cancelled mid-call: every other call gets its own result, nothing stays pending."""

    async def body():
        srv = await rpc_server(build(Limits()))
        async with fastrpc.connect(url(srv)) as c:
            done = []

            async def caller(k):
                for i in range(50):
                    assert await c.call("add", k, i) == k + i
                done.append(k)

            tasks = [asyncio.ensure_future(caller(k)) for k in range(64)]
            await asyncio.sleep(0.01)
            for t in tasks[::8]:
                t.cancel()
            res = await asyncio.gather(*tasks, return_exceptions=True)
            cancelled = [r for r in res if isinstance(r, asyncio.CancelledError)]
            assert len(cancelled) + len(done) == 64 and len(done) >= 56
            assert all(r is None for r in res if not isinstance(r, asyncio.CancelledError))
            assert c.in_flight == 0

    crun(body())


def test_subscription_routes_and_unsubscribes(crun, rpc_server):
    async def body():
        srv = await rpc_server(build())
        async with fastrpc.connect(url(srv)) as c:
            got = []
            sub = c.subscribe("feed", "ticks")
            assert sub.id is None
            async def consume():
                async for x in sub:
                    got.append(x)
                    if len(got) == 50:
                        break
            task = asyncio.ensure_future(consume())
            await wait_until(lambda: subs(srv) == 1, WAIT, "subscribed")
            assert sub.id is not None and sub.id.startswith("0x")
            for i in range(60):
                srv.publish("feed.ticks", {"n": i})
                await asyncio.sleep(0)
            await asyncio.wait_for(task, WAIT)
            assert got == [{"n": i} for i in range(50)]
            await sub.aclose()
            assert subs(srv) == 0

            # async with: subscribed on entry, unsubscribed on exit.
            async with c.subscribe("feed", "ticks") as s2:
                assert subs(srv) == 1
                srv.publish("feed.ticks", "one")
                assert await asyncio.wait_for(s2.__anext__(), WAIT) == "one"
            assert subs(srv) == 0
            with pytest.raises(StopAsyncIteration):
                await s2.__anext__()

            # A `break` out of `async for x in c.subscribe(...)` drops the iterator:
            # it unsubscribes without being closed explicitly.
            async def first():
                async for x in c.subscribe("feed", "ticks"):
                    return x
            t = asyncio.ensure_future(first())
            await wait_until(lambda: subs(srv) == 1, WAIT, "subscribed")
            srv.publish("feed.ticks", "first")
            assert await asyncio.wait_for(t, WAIT) == "first"
            await wait_until(lambda: subs(srv) == 0, WAIT, "unsubscribed on drop")
            assert c.stats()["subscriptions"] == 0

            with pytest.raises(RPCError) as e:
                await c.subscribe("feed", "nope")
            assert e.value.code == -32602

    crun(body())


def test_two_subscriptions_share_the_channel_id(crun, rpc_server):
    """fastrpc gives every subscriber of a channel the same id and counts a
    connection once: both iterators get every notification, and the channel is
    unsubscribed only when the last one leaves."""

    async def body():
        srv = await rpc_server(build())
        async with fastrpc.connect(url(srv)) as c:
            a = await c.subscribe("feed", "ticks")
            b = await c.subscribe("feed", "ticks")
            assert a.id == b.id and subs(srv) == 1
            for i in range(3):
                srv.publish("feed.ticks", i)
            assert [await a.__anext__() for _ in range(3)] == [0, 1, 2]
            assert [await b.__anext__() for _ in range(3)] == [0, 1, 2]
            await a.aclose()
            assert subs(srv) == 1
            srv.publish("feed.ticks", 3)
            assert await asyncio.wait_for(b.__anext__(), WAIT) == 3
            await b.aclose()
            assert subs(srv) == 0

            # Unsubscribing while another subscribe to the same channel is in flight:
            # the second subscribe is not left holding an id the server just dropped.
            a = await c.subscribe("feed", "ticks")
            pending = asyncio.ensure_future(_subscribed(c))
            await asyncio.sleep(0)  # the subscribe request is queued
            await a.aclose()
            b = await asyncio.wait_for(pending, WAIT)
            await wait_until(lambda: subs(srv) == 1, WAIT, "subscribed again")
            srv.publish("feed.ticks", "after")
            assert await asyncio.wait_for(b.__anext__(), WAIT) == "after"
            await b.aclose()

    crun(body())


async def _subscribed(c):
    return await c.subscribe("feed", "ticks")


def test_slow_consumer_overflow(crun, rpc_server):
    async def body():
        srv = await rpc_server(build())
        async with fastrpc.connect(url(srv), subscription_buffer=10) as c:
            sub = await c.subscribe("feed", "ticks")
            for i in range(15):
                srv.publish("feed.ticks", i)
            await wait_until(lambda: c.stats()["overflows"] == 1, WAIT, "the overflow")
            await wait_until(lambda: subs(srv) == 0, WAIT, "unsubscribed after the overflow")
            got = []
            with pytest.raises(SubscriptionOverflow) as e:
                async for x in sub:
                    got.append(x)
            assert got == list(range(10)), "every notification before the gap"
            assert e.value.subscription == sub.id and e.value.buffered == 10
            with pytest.raises(StopAsyncIteration):
                await sub.__anext__()
            assert await c.call("echo", 1) == 1

    crun(body())


def test_server_drops_a_slow_subscriber(crun, rpc_server):
    """The server's own slow-subscriber policy (-32004 notification) ends the iterator
    with that RPCError after what arrived before it."""

    async def body():
        srv = await rpc_server(build(TINY.replace(max_subscriber_queue=1 * KiB)))
        async with fastrpc.connect(url(srv)) as c:
            sub = await c.subscribe("feed", "ticks")
            payload = "x" * 300
            delivered = 0
            for _ in range(50):  # one loop turn: the output queue passes 1 KiB
                delivered += srv.publish("feed.ticks", payload)
            assert 0 < delivered < 50
            got = 0
            with pytest.raises(RPCError) as e:
                async for x in sub:
                    assert x == payload
                    got += 1
            assert e.value.code == fastrpc.errors.SUBSCRIBER_TOO_SLOW and got == delivered

    crun(body())


def test_server_close_and_stop_mid_call(crun, rpc_server):
    async def body():
        srv = await rpc_server(build())
        async with fastrpc.connect(url(srv)) as c:
            sub = await c.subscribe("feed", "ticks")
            call = asyncio.ensure_future(c.call("sleep", 5))
            await asyncio.sleep(0.05)
            (cid,) = srv.connections()
            srv.close(cid, 4001, "bye")
            with pytest.raises(ConnectionLost) as e:
                await asyncio.wait_for(call, WAIT)
            assert e.value.code == 4001 and e.value.sent
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(sub.__anext__(), WAIT)
            assert c.closed and c.close_code == 4001
            with pytest.raises(ConnectionLost) as e:
                await c.call("echo", 1)
            assert not e.value.sent
            with pytest.raises(ConnectionLost):
                await c.notify("record")

        c = await fastrpc.connect(url(srv))
        calls = [asyncio.ensure_future(c.call("sleep", 30)) for _ in range(5)]
        await asyncio.sleep(0.05)
        await srv.stop()  # drains (2 s), then closes every connection with 1001
        for f in calls:
            with pytest.raises(ConnectionLost) as e:
                await asyncio.wait_for(f, WAIT)
            assert e.value.code in (1001, 1006)
        assert await c.wait_closed() in (1001, 1006)
        await c.close()

    crun(body())


def test_clean_close_and_keepalive(crun, rpc_server):
    async def body():
        srv = await rpc_server(build())
        c = await fastrpc.connect(url(srv), ping_interval=0.1, pong_timeout=0.2)
        await asyncio.sleep(0.8)  # several ping intervals: fastrpc's core answers each ping
        (r,) = reactors()  # the client's reactor, with its own ping settings
        assert r.counters_dict()["pings_sent"] >= 3
        assert c.open and await c.call("echo", 1) == 1
        await c.close(4000, "done")
        await c.close()  # idempotent
        assert c.closed and c.close_code == 4000
        await wait_until(lambda: srv.metrics()["closed_peer"] == 1, WAIT, "the server saw our close")
        c2 = await fastrpc.connect(url(srv))
        with pytest.raises(ValueError):
            await c2.close(1006)  # not a code a client may send
        await c2.close()

    crun(body())


def test_message_size_limit(crun, rpc_server):
    async def body():
        srv = await rpc_server(build(TINY.replace(max_message_size=64 * KiB)))
        async with fastrpc.connect(url(srv), max_message_size=16 * KiB) as c:
            assert len(await c.call("big", 16 * KiB - 100)) == 16 * KiB - 100
            with pytest.raises(ConnectionLost) as e:
                await c.call("big", 20 * KiB)
            assert e.value.code == 1009

    crun(body())


def test_refusals_503_429(crun, rpc_server):
    async def body():
        srv = await rpc_server(build(TINY.replace(max_connections=1)))
        async with fastrpc.connect(url(srv)) as c:
            with pytest.raises(ConnectError) as e:
                await fastrpc.connect(url(srv))
            assert e.value.status == 503 and e.value.retry_after == TINY.retry_after
            assert "503" in str(e.value)
            assert await c.call("echo", 1) == 1
        srv2 = await rpc_server(build(TINY.replace(max_connections_per_ip=1)))
        async with fastrpc.connect(url(srv2)):
            with pytest.raises(ConnectError) as e:
                await fastrpc.connect(url(srv2))
            assert e.value.status == 429
        srv2.begin_drain()
        with pytest.raises(ConnectError) as e:
            await fastrpc.connect(url(srv2))
        assert e.value.status == 503
        srv3 = await rpc_server(Server(limits=TINY, origins=["http://good.example"], subprotocols=("v1",)))
        with pytest.raises(ConnectError) as e:
            await fastrpc.connect(url(srv3))
        assert e.value.status == 403
        async with fastrpc.connect(url(srv3, "/any?x=1"), origin="http://good.example",
                                   subprotocols=["v2", "v1"]) as c:
            assert c.open and c.subprotocol == "v1"

    crun(body())


def test_connect_refused_and_bad_urls(crun):
    async def body():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        with pytest.raises(ConnectError) as e:
            await fastrpc.connect(f"ws://127.0.0.1:{port}/")
        assert e.value.status is None and "refused" in str(e.value)
        with pytest.raises(ConnectError) as e:
            await fastrpc.connect(f"ws://localhost:{port}/")  # resolved; every address refuses
        with pytest.raises(ConnectError) as e:
            await fastrpc.connect("ws://no-such-host.invalid/", open_timeout=5)
        assert "resolve" in str(e.value)
        with pytest.raises(ValueError, match="wss://"):
            fastrpc.connect("wss://127.0.0.1/")
        for bad in ("http://127.0.0.1/", "ws:///x", "ws://127.0.0.1/#frag", "ws://127.0.0.1:99999/"):
            with pytest.raises(ValueError):
                fastrpc.connect(bad)
        c = fastrpc.Client(f"ws://127.0.0.1:{port}/")
        with pytest.raises(RuntimeError):
            await c.call("x")
        await c.close()

    crun(body())


def test_open_timeout(crun):
    async def body():
        # A listener that never accepts at the HTTP level: the upgrade gets no answer.
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(8)
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(ConnectError) as e:
                await fastrpc.connect(f"ws://127.0.0.1:{lsock.getsockname()[1]}/", open_timeout=0.2)
            assert "timed out" in str(e.value) and loop.time() - t0 < 2
        finally:
            lsock.close()

    crun(body())
