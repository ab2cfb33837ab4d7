"""Subscriptions over real sockets: encode-once fan-out, slow subscribers, lifetime, caps.

* N ``websockets`` subscribers of one topic receive every published payload, in order,
  as byte-identical messages carrying the channel's one id.
* A raw client that subscribes and then stops reading (small SO_RCVBUF, small
  ``max_subscriber_queue``) is dropped once its pending output passes the cap: with
  ``on_slow="notify"`` it finds, after the messages it had been sent, one -32004 error
  notification and its connection still answers calls; with ``on_slow="close"`` it gets
  close 1008. Meanwhile the other subscribers receive every message.
* Subscriptions end with their connection, whether it closes cleanly, just drops, or
  is closed by ``server.stop()``.
* ``max_subscriptions`` per connection → -32005.
"""
from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from helpers import TINY, wait_until
from rawclient import RawWS
from rpcclient import RpcClient, RpcError

from fastrpc.errors import CLOSE_POLICY_VIOLATION, SUBSCRIBER_TOO_SLOW, TOO_MANY_SUBSCRIPTIONS
from fastrpc.limits import KiB
from fastrpc.server import Server

WAIT = 5.0


def build(limits=TINY, **server_kw) -> Server:
    srv = Server(limits=limits, **server_kw)
    srv.topic("feed", "ticks")
    srv.topic("feed", "other")

    @srv.method("util_echo")
    def echo(x):
        return x

    return srv


def subs(srv: Server) -> int:
    return int(srv.dispatcher.metrics()["subscriptions"])


async def raw_call(ws: RawWS, rid, method: str, params=None) -> dict:
    """One call on a raw connection; the next data message must be its reply."""
    msg = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        msg["params"] = params
    await ws.send_text(orjson.dumps(msg))
    _, data = await ws.recv(WAIT)
    reply = orjson.loads(data)
    assert reply.get("id") == rid, reply
    return reply


N_SUBSCRIBERS = 5
N_MESSAGES = 200


def test_fan_out_identical_to_every_subscriber(run, rpc_server):
    async def body():
        srv = await rpc_server(build())
        clients = [await RpcClient.open(srv.port) for _ in range(N_SUBSCRIBERS)]
        try:
            ids = {await c.call("feed_subscribe", ["ticks"]) for c in clients}
            assert len(ids) == 1, "one channel, one id shared by its subscribers"
            (sub_id,) = ids
            assert subs(srv) == N_SUBSCRIBERS and len(srv.dispatcher.subscriptions) == 1
            payloads = [{"n": i, "hash": "0x%064x" % (i * 7919), "list": list(range(i % 7))} for i in range(N_MESSAGES)]
            t0 = time.perf_counter()
            for p in payloads:
                assert srv.publish("feed.ticks", p) == N_SUBSCRIBERS
                await asyncio.sleep(0)
            for c in clients:
                await c.wait_notifications(N_MESSAGES, WAIT)
            dt = time.perf_counter() - t0
            print(f"\nfan-out: {N_MESSAGES} messages x {N_SUBSCRIBERS} subscribers in {dt * 1000:.1f} ms")
            first = clients[0].raw_notifications
            for c in clients:
                assert c.raw_notifications == first, "every subscriber gets the very same bytes"
                assert [n["params"]["result"] for n in c.notifications] == payloads
                assert {n["method"] for n in c.notifications} == {"feed_subscription"}
                assert {n["params"]["subscription"] for n in c.notifications} == {sub_id}
                assert c.unexpected == []
            # Another topic's publish reaches nobody; unsubscribing ends one stream only.
            assert srv.publish("feed.other", 1) == 0
            assert await clients[0].call("feed_unsubscribe", [sub_id]) is True
            assert srv.publish("feed.ticks", "last") == N_SUBSCRIBERS - 1
            for c in clients[1:]:
                await c.wait_notifications(N_MESSAGES + 1, WAIT)
            assert await clients[0].call("util_echo", ["still here"]) == "still here"
            assert len(clients[0].notifications) == N_MESSAGES
        finally:
            for c in clients:
                await c.close()
        await wait_until(lambda: subs(srv) == 0, WAIT, "subscriptions to end")

    run(body())


N_FAST = 3
PAD = 1000  #: bytes of padding per payload
MAX_PUBLISH = 5000  #: bound on the publishing loop (about 5 MB to the slow client)
AFTER_DROP = 100  #: messages published after the drop


@pytest.mark.parametrize("on_slow", ["notify", "close"])
def test_slow_subscriber_dropped_others_keep_up(run, rpc_server, on_slow):
    limits = TINY.replace(max_subscriber_queue=16 * KiB, max_pending_output=1024 * KiB, close_timeout=5.0)

    async def body():
        srv = await rpc_server(build(limits, on_slow=on_slow))
        fast = [await RpcClient.open(srv.port) for _ in range(N_FAST)]
        slow = await RawWS.open(srv.port, rcvbuf=4096)
        try:
            sub_id = (await raw_call(slow, "s1", "feed_subscribe", ["ticks"]))["result"]
            assert {await c.call("feed_subscribe", ["ticks"]) for c in fast} == {sub_id}
            assert subs(srv) == N_FAST + 1
            # From here the slow client reads nothing. Publish one message at a time and
            # let the fast subscribers take each one before the next (they read as fast
            # as they can: that pace is theirs, not the slow one's).
            sent = 0
            written: list[int] = []
            t0 = time.perf_counter()
            dropped_at = None
            while sent < MAX_PUBLISH:
                written.append(srv.publish("feed.ticks", {"n": sent, "pad": "x" * PAD}))
                sent += 1
                for c in fast:
                    await c.wait_notifications(sent, WAIT)
                if dropped_at is None and srv.dispatcher.subscriptions.dropped_slow:
                    dropped_at = sent
                if dropped_at is not None and sent >= dropped_at + AFTER_DROP:
                    break
            dt = time.perf_counter() - t0
            assert dropped_at is not None, f"the slow subscriber was never dropped after {sent} messages"
            print(
                f"\n[{on_slow}] slow subscriber dropped after {dropped_at} messages; fast subscribers got "
                f"{sent} messages of {PAD} B each in {dt * 1000:.0f} ms ({sent / dt:.0f} msg/s each)"
            )
            # The drop: exactly one subscriber, once; the fast ones were never refused.
            assert srv.dispatcher.metrics()["subscribers_dropped_slow"] == 1
            assert written[: dropped_at - 1] == [N_FAST + 1] * (dropped_at - 1)
            assert written[dropped_at - 1] == N_FAST  # the publish that found it over the cap
            assert written[dropped_at:] == [N_FAST] * (sent - dropped_at)
            assert subs(srv) == N_FAST
            for c in fast:
                got = [n["params"]["result"]["n"] for n in c.notifications]
                assert got == list(range(sent)), "a fast subscriber missed or reordered messages"
                assert c.unexpected == []

            # The slow client now reads what it had been sent.
            if on_slow == "notify":
                seen = []
                for _ in range(MAX_PUBLISH + 2):
                    _, data = await slow.recv(WAIT)
                    msg = orjson.loads(data)
                    assert msg["method"] == "feed_subscription" and msg["params"]["subscription"] == sub_id
                    if "error" in msg["params"]:
                        assert msg["params"]["error"] == {"code": SUBSCRIBER_TOO_SLOW, "message": "subscriber too slow"}
                        break
                    seen.append(msg["params"]["result"]["n"])
                else:
                    raise AssertionError("no -32004 notification")
                assert seen == list(range(len(seen))) and 0 < len(seen) < dropped_at
                # Its connection survives and answers calls; no more notifications.
                assert (await raw_call(slow, "s2", "util_echo", ["alive"]))["result"] == "alive"
                assert srv.publish("feed.ticks", "after") == N_FAST
                assert (await raw_call(slow, "s3", "util_echo", [3]))["result"] == 3
                await slow.send_close(1000)
                assert await slow.expect_close(WAIT, reply=False) == (1000, "")
            else:
                code, _reason = await slow.expect_close(WAIT)
                assert code == CLOSE_POLICY_VIOLATION
                seen = [orjson.loads(p)["params"]["result"]["n"] for _, p in slow.skipped]
                assert seen == list(range(len(seen))) and len(seen) < dropped_at
            for c in fast:
                assert await c.call("util_echo", [1]) == 1
        finally:
            slow.close()
            for c in fast:
                await c.close()
        await wait_until(lambda: subs(srv) == 0 and len(srv.reactor) == 0, WAIT, "everything to end")

    run(body())


def test_subscriptions_end_with_their_connection(run, rpc_server):
    async def body():
        srv = await rpc_server(build())
        clean = [await RpcClient.open(srv.port) for _ in range(3)]
        raw = [await RawWS.open(srv.port) for _ in range(3)]
        try:
            for c in clean:
                await c.call("feed_subscribe", ["ticks"])
                await c.call("feed_subscribe", ["other"])
            for i, r in enumerate(raw):
                assert "result" in await raw_call(r, i, "feed_subscribe", ["ticks"])
                assert "result" in await raw_call(r, 10 + i, "feed_subscribe", ["other"])
            assert subs(srv) == 12 and len(srv.dispatcher.subscriptions) == 2
            assert srv.publish("feed.ticks", 1) == 6
            # Clean closes (close handshake) and abrupt drops (TCP closed, no frame).
            for c in clean:
                await c.close()
            await wait_until(lambda: subs(srv) == 6, WAIT, "clean closes to end 6 subscriptions")
            for r in raw:
                r.close()
            await wait_until(lambda: subs(srv) == 0, WAIT, "dropped connections to end theirs")
            m = srv.dispatcher.metrics()
            assert m["subscriptions"] == 0 and m["channels"] == 0
            assert len(srv.dispatcher.subscriptions) == 0
            assert srv.publish("feed.ticks", 2) == 0 and srv.publish("feed.other", 2) == 0
            await wait_until(lambda: len(srv.reactor) == 0, WAIT, "connections to leave the table")

            # Subscribers still connected when the server stops: closed with 1001, and
            # their subscriptions end with them.
            late = [await RpcClient.open(srv.port) for _ in range(2)]
            clean += late
            for c in late:
                await c.call("feed_subscribe", ["ticks"])
            assert subs(srv) == 2
            await srv.stop()
            assert subs(srv) == 0 and len(srv.dispatcher.subscriptions) == 0
            assert len(srv.reactor) == 0 and srv.pool.bytes_in_use == 0
            for c in late:
                await asyncio.wait_for(c._reader, WAIT)
                assert c.close_rcvd is not None and c.close_rcvd.code == 1001
        finally:
            for r in raw:
                r.close()
            for c in clean:
                await c.close()

    run(body())


def test_max_subscriptions_per_connection(run, rpc_server):
    async def body():
        srv = await rpc_server(build(TINY.replace(max_subscriptions=2)))
        async with await RpcClient.open(srv.port) as a, await RpcClient.open(srv.port) as b:
            first = await a.call("feed_subscribe", ["ticks"])
            await a.call("feed_subscribe", ["other"])
            # Subscribing again to a channel it holds is not a new subscription.
            assert await a.call("feed_subscribe", ["ticks"]) == first
            with pytest.raises(RpcError) as info:
                await a.call("feed_subscribe", ["ticks", "extra"])  # -32602 comes first
            assert info.value.code == -32602
            srv.topic("feed", "third")
            with pytest.raises(RpcError) as info:
                await a.call("feed_subscribe", ["third"])
            assert info.value.code == TOO_MANY_SUBSCRIPTIONS
            assert info.value.message == "too many subscriptions"
            # The cap is per connection: another one still has room.
            await b.call("feed_subscribe", ["third"])
            await b.call("feed_subscribe", ["ticks"])
            with pytest.raises(RpcError) as info:
                await b.call("feed_subscribe", ["other"])
            assert info.value.code == TOO_MANY_SUBSCRIPTIONS
            # Unsubscribing makes room; the connection kept working throughout.
            assert await a.call("feed_unsubscribe", [first]) is True
            assert await a.call("feed_subscribe", ["third"])
            assert subs(srv) == 4
            assert srv.publish("feed.third", "x") == 2
            await a.wait_notifications(1, WAIT)
            await b.wait_notifications(1, WAIT)
        await wait_until(lambda: subs(srv) == 0, WAIT, "subscriptions to end")

    run(body())
