"""fastrpc.Client against JSON-RPC servers built on other WebSocket libraries
(``peers.py``: the websockets server and aiohttp's), on asyncio and uvloop.

Calls, named params, notifications both ways, batches, error replies, timeouts, the
server dropping or closing the connection mid-call, subscriptions (notifications that
come before the subscribe reply, unsubscribe when the iterator is left, overflow),
malformed replies counted without harm.
"""
from __future__ import annotations

import asyncio

import pytest
from helpers import wait_until
from peers import PEERS, PeerState

import fastrpc
from fastrpc import CallTimeout, ConnectionLost, InvalidReply, RPCError, SubscriptionOverflow

WAIT = 5.0


@pytest.fixture(params=sorted(PEERS))
def peer_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def with_peer(peer_name, fn):
    async def body():
        state = PeerState()
        port, stop = await PEERS[peer_name](state)
        try:
            await fn(f"ws://127.0.0.1:{port}/", state)
        finally:
            await stop()

    return body()


def test_calls_notifications_batches_errors(crun, peer_name):
    async def fn(url, state):
        notices = []
        async with fastrpc.connect(url, on_notification=lambda m, p: notices.append((m, p))) as c:
            assert await c.call("echo", [1, {"a": None}]) == [1, {"a": None}]
            assert await c.call("add", 1, 2) == 3
            assert await c.call("add", params={"a": 5, "b": 6}) == 11
            with pytest.raises(RPCError) as e:
                await c.call("fail")
            assert (e.value.code, e.value.message, e.value.data) == (-32000, "failed", {"why": "asked"})
            with pytest.raises(RPCError) as e:
                await c.call("missing")
            assert e.value.code == -32601
            await c.notify("note", "hello", 1)
            assert await c.call("notify_me", 3) == 3
            assert notices == [("test_notice", [0]), ("test_notice", [1]), ("test_notice", [2])]
            assert state.notes == [["hello", 1]]
            async with c.batch() as b:
                f1 = b.call("echo", "x")
                b.notify("note", "in batch")
                f2 = b.call("fail")
                f3 = b.call("sleep", 0.01)
            assert await f1 == "x" and await f3 == 0.01
            with pytest.raises(RPCError):
                await f2
            assert await asyncio.gather(*(c.call("echo", i) for i in range(200))) == list(range(200))
            with pytest.raises(CallTimeout):
                await c.call("sleep", 0.5, timeout=0.05)
            st = c.stats()
            assert st["malformed"] == 0 and st["unknown_ids"] == 0 and st["in_flight"] == 0

    crun(with_peer(peer_name, fn))


def test_malformed_replies_are_counted(crun, peer_name):
    async def fn(url, state):
        async with fastrpc.connect(url) as c:
            assert await c.call("garbage") == "ok"
            st = c.stats()
            # not JSON, [1, 2] (two entries that are not objects), {} and a JSON string
            # are malformed; id 999999 and id "abc" are unknown ids.
            assert st["malformed"] == 5 and st["unknown_ids"] == 2
            with pytest.raises(InvalidReply):
                await c.call("bad_shape")
            with pytest.raises(InvalidReply):
                await c.call("bad_error")
            assert await c.call("echo", "still fine") == "still fine"

    crun(with_peer(peer_name, fn))


def test_drop_and_close_mid_call(crun, peer_name):
    async def fn(url, state):
        c = await fastrpc.connect(url)
        waiting = asyncio.ensure_future(c.call("sleep", 10))
        sub = await c.subscribe("eth", "ticks", 10_000, 0, 0.01)
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionLost) as e:
            await asyncio.wait_for(c.call("drop"), WAIT)
        assert e.value.code == 1006
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(waiting, WAIT)
        with pytest.raises(ConnectionLost):
            async for _ in sub:
                pass
        await c.close()

        c = await fastrpc.connect(url)
        waiting = asyncio.ensure_future(c.call("sleep", 10))
        with pytest.raises(ConnectionLost) as e:
            await asyncio.wait_for(c.call("close_me", 4002), WAIT)
        assert e.value.code == 4002
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(waiting, WAIT)
        assert c.close_code == 4002
        await c.close()

    crun(with_peer(peer_name, fn))


def test_subscriptions_early_notifications_and_unsubscribe(crun, peer_name):
    async def fn(url, state):
        async with fastrpc.connect(url) as c:
            # 5 notifications are sent before the subscribe reply: none is lost.
            got = []
            async for head in c.subscribe("eth", "ticks", 20, 5, 0.001):
                got.append(head["n"])
                if len(got) == 20:
                    break
            assert got == list(range(20))
            await wait_until(lambda: len(state.unsubscribed) == 1, WAIT, "unsubscribed on break")
            assert state.unsubscribed == state.subscribed[:1]

            async with c.subscribe("eth", "ticks", 1000, 0, 0.002) as sub:
                assert (await sub.__anext__())["n"] == 0
            assert state.unsubscribed[1] == sub.id

            # A consumer that does not read: the buffer (8) overflows, the iterator
            # gives the 8 then SubscriptionOverflow, and the client unsubscribes.
        async with fastrpc.connect(url, subscription_buffer=8) as c:
            sub = await c.subscribe("eth", "ticks", 100, 3, 0)
            await wait_until(lambda: c.stats()["overflows"] == 1, WAIT, "overflow")
            got = []
            with pytest.raises(SubscriptionOverflow):
                async for head in sub:
                    got.append(head["n"])
            assert got == list(range(8))
            await wait_until(lambda: sub.id in state.unsubscribed, WAIT, "unsubscribed after overflow")

            # Early notifications past the buffer overflow just the same.
            sub = await c.subscribe("eth", "ticks", 20, 12, 0)
            got = []
            with pytest.raises(SubscriptionOverflow):
                async for head in sub:
                    got.append(head["n"])
            assert got == list(range(8))

    crun(with_peer(peer_name, fn))
