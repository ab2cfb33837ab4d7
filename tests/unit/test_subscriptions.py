"""fastrpc.subscriptions through the Dispatcher: subscribe, publish fan-out, slow subscribers, caps."""
from __future__ import annotations

import asyncio
import re

import orjson
import pytest

from fastrpc import jsonrpc
from fastrpc.dispatch import Dispatcher
from fastrpc.errors import InvalidParams
from fastrpc.limits import Limits
from fastrpc.service import Registry
from fakes import FakeTransport, note, req, run, send


def make(limits: Limits = Limits(), on_slow: str = "notify"):
    t = FakeTransport()
    reg = Registry()
    heads = reg.topic("eth", "newHeads")
    d = Dispatcher(t, limits, registry=reg, on_slow=on_slow)
    return t, reg, d, heads


def subscribe(d, cid, *params, rid=1):
    reply = send(d, req("eth_subscribe", list(params), id=rid), cid=cid)
    assert "result" in reply, reply
    return reply["result"]


class TestSubscribe:
    def test_id_format_and_notification_shape(self):
        t, reg, d, heads = make()
        sub = subscribe(d, 1, "newHeads")
        assert re.fullmatch(r"0x[0-9a-f]{32}", sub)
        assert d.publish(heads, {"number": "0x1"}) == 1
        assert t.messages(1) == [
            {
                "jsonrpc": "2.0",
                "method": "eth_subscription",
                "params": {"subscription": sub, "result": {"number": "0x1"}},
            }
        ]

    def test_fan_out_encodes_once_and_calls_send_many_once(self):
        t, reg, d, heads = make()
        ids = {subscribe(d, cid, "newHeads") for cid in range(1, 101)}
        assert len(ids) == 1  # one id per channel, shared by its subscribers
        assert d.publish(heads, {"number": "0x2"}) == 100
        assert len(t.send_many_calls) == 1
        cids, data, max_queued = t.send_many_calls[0]
        assert cids == list(range(1, 101)) and max_queued == Limits().max_subscriber_queue
        assert {d for _, d in t.sent} == {data}  # the very same bytes for everyone
        assert len(t.sent) == 100

    def test_publish_by_name(self):
        t, reg, d, heads = make()
        subscribe(d, 1, "newHeads")
        assert d.publish("newHeads", 1) == 1
        assert d.publish("eth.newHeads", 2) == 1
        with pytest.raises(KeyError):
            d.publish("nope", 3)

    def test_publish_without_subscribers_sends_nothing(self):
        t, reg, d, heads = make()
        assert d.publish(heads, {"x": 1}) == 0
        assert t.send_many_calls == []

    def test_publish_not_json_raises_to_the_caller(self):
        t, reg, d, heads = make()
        subscribe(d, 1, "newHeads")
        with pytest.raises(TypeError):
            d.publish(heads, object())

    def test_publish_fragment(self):
        t, reg, d, heads = make()
        sub = subscribe(d, 1, "newHeads")
        d.publish(heads, orjson.Fragment(b'{"pre":1}'))
        assert t.messages(1)[0]["params"] == {"subscription": sub, "result": {"pre": 1}}

    def test_resubscribing_returns_the_same_id_and_counts_once(self):
        t, reg, d, heads = make()
        a = subscribe(d, 1, "newHeads")
        assert subscribe(d, 1, "newHeads", rid=2) == a
        assert d.subscriptions.count(1) == 1
        d.publish(heads, 1)
        assert len(t.sent) == 1

    def test_unknown_topic_and_bad_params(self):
        t, reg, d, heads = make()
        for params, message in (
            (["logs"], "unknown topic 'logs'"),
            ([], "want params [topic, ...topic params]"),
            ([5], "want params [topic, ...topic params]"),
            (["newHeads", 1], "topic 'newHeads' takes no parameters"),
        ):
            assert send(d, req("eth_subscribe", params, id=1))["error"] == {"code": -32602, "message": message}
        assert send(d, req("eth_subscribe", {"topic": "newHeads"}, id=1))["error"]["code"] == -32602
        assert d.subscriptions.count() == 0

    def test_topic_with_params_makes_channels_per_key(self):
        t = FakeTransport()
        reg = Registry()

        def key(address: str, full: bool = False):
            if not address.startswith("0x"):
                raise InvalidParams("address must be hex")
            return (address.lower(), full)

        logs = reg.topic("eth", "logs", params=key)
        d = Dispatcher(t, registry=reg)
        a = subscribe(d, 1, "logs", "0xAB")
        b = subscribe(d, 2, "logs", "0xab")
        c = subscribe(d, 3, "logs", "0xcd", True)
        assert a == b != c
        assert sorted(d.subscriptions.keys(logs)) == [("0xab", False), ("0xcd", True)]
        assert d.publish(logs, "x", key=("0xab", False)) == 2
        assert d.publish(logs, "y", key=("0xcd", True)) == 1
        assert [cid for cid, _ in t.sent] == [1, 2, 3]
        assert send(d, req("eth_subscribe", ["logs", 5], id=1))["error"] == {
            "code": -32602,
            "message": "invalid argument 0 (address): want string, got integer",
        }
        assert send(d, req("eth_subscribe", ["logs", "zz"], id=1))["error"]["message"] == "address must be hex"
        assert send(d, req("eth_subscribe", ["logs"], id=1))["error"]["code"] == -32602


class TestUnsubscribe:
    def test_true_then_false(self):
        t, reg, d, heads = make()
        sub = subscribe(d, 1, "newHeads")
        assert send(d, req("eth_unsubscribe", [sub], id=2))["result"] is True
        assert send(d, req("eth_unsubscribe", [sub], id=3))["result"] is False
        assert d.publish(heads, 1) == 0 and t.sent == []

    def test_only_the_callers_own_subscription(self):
        t, reg, d, heads = make()
        sub = subscribe(d, 1, "newHeads")
        assert subscribe(d, 2, "newHeads") == sub
        assert send(d, req("eth_unsubscribe", [sub], id=2), cid=3)["result"] is False  # not cid 3's
        assert send(d, req("eth_unsubscribe", [sub], id=2), cid=2)["result"] is True
        assert d.subscriptions.subscribers(heads) == [1]

    def test_bad_params(self):
        t, reg, d, heads = make()
        for params in ([], [1], ["a", "b"], {"id": "x"}):
            assert send(d, req("eth_unsubscribe", params, id=1))["error"]["code"] == -32602

    def test_channel_id_renewed_after_everyone_left(self):
        t, reg, d, heads = make()
        first = subscribe(d, 1, "newHeads")
        send(d, req("eth_unsubscribe", [first], id=2))
        assert len(d.subscriptions) == 0
        assert subscribe(d, 1, "newHeads") != first

    def test_notifications(self):
        t, reg, d, heads = make()
        assert send(d, note("eth_subscribe", ["newHeads"])) is None  # subscribes, answers nothing
        assert d.subscriptions.count(1) == 1
        sub = d.subscriptions.channel_id(heads)
        assert send(d, note("eth_unsubscribe", [sub])) is None
        assert d.subscriptions.count(1) == 0


class TestSlowSubscribers:
    def test_slow_subscriber_dropped_others_keep_receiving(self):
        size = len(jsonrpc.subscription_result("eth_subscription", "0x" + "0" * 32, {"n": 0, "p": "x" * 100}))
        limits = Limits(max_subscriber_queue=size * 5 // 2)  # room for two messages, not three
        t, reg, d, heads = make(limits)
        sub = None
        for cid in (1, 2, 3):
            sub = subscribe(d, cid, "newHeads")
        t.stall(2)  # cid 2 stops reading
        for n in range(10):
            written = d.publish(heads, {"n": n, "p": "x" * 100})
            assert written == (3 if n < 2 else 2)
        # cid 2 got what fit under 400 bytes, then one error notification, then nothing.
        to_2 = t.messages(2)
        results = [m for m in to_2 if "result" in m["params"]]
        assert len(results) == 2
        assert to_2[-1] == {
            "jsonrpc": "2.0",
            "method": "eth_subscription",
            "params": {"subscription": sub, "error": {"code": -32004, "message": "subscriber too slow"}},
        }
        assert [m["params"]["result"]["n"] for m in t.messages(1)] == list(range(10))
        assert [m["params"]["result"]["n"] for m in t.messages(3)] == list(range(10))
        assert d.subscriptions.subscribers(heads) == [1, 3]
        assert d.subscriptions.count(2) == 0 and d.subscriptions.dropped_slow == 1
        assert len(t.send_many_calls) == 10  # still one call per publish
        assert t.closed == []  # the connection survives
        # It may come back once it has caught up.
        t.drain(2)
        assert subscribe(d, 2, "newHeads") == sub

    def test_on_slow_close(self):
        t, reg, d, heads = make(Limits(max_subscriber_queue=300), on_slow="close")
        subscribe(d, 1, "newHeads")
        subscribe(d, 2, "newHeads")
        t.stall(2)
        for n in range(5):
            d.publish(heads, "y" * 60)
        assert t.closed == [(2, 1008, "subscriber too slow")]
        assert d.subscriptions.subscribers(heads) == [1]

    def test_gone_connection_is_dropped_quietly(self):
        t, reg, d, heads = make()
        subscribe(d, 1, "newHeads")
        subscribe(d, 2, "newHeads")
        t.disconnect(2)
        assert d.publish(heads, 1) == 1
        assert d.subscriptions.subscribers(heads) == [1]
        assert [c for c, _ in t.sent] == [1]

    def test_bad_on_slow(self):
        with pytest.raises(ValueError):
            Dispatcher(FakeTransport(), on_slow="ignore")


class TestCapsAndLifetime:
    def test_cap_per_connection(self):
        t = FakeTransport()
        reg = Registry()
        topics = [reg.topic("eth", f"t{i}") for i in range(4)]
        d = Dispatcher(t, Limits(max_subscriptions=3), registry=reg)
        for i in range(3):
            subscribe(d, 1, f"t{i}")
        assert send(d, req("eth_subscribe", ["t3"], id=9))["error"] == {
            "code": -32005,
            "message": "too many subscriptions",
        }
        subscribe(d, 2, "t3")  # the cap is per connection
        assert subscribe(d, 1, "t0", rid=5)  # re-subscribing an existing one is fine at the cap
        assert d.subscriptions.count(1) == 3 and len(topics) == 4

    def test_on_close_ends_every_subscription(self):
        t, reg, d, heads = make()
        logs = reg.topic("eth", "logs")
        subscribe(d, 1, "newHeads")
        subscribe(d, 1, "logs")
        subscribe(d, 2, "newHeads")
        d.on_close(1)
        assert d.subscriptions.count(1) == 0 and d.subscriptions.count() == 1
        assert d.publish(logs, 1) == 0 and len(d.subscriptions) == 1
        assert d.publish(heads, 1) == 1
        d.on_close(2, 1000)
        assert len(d.subscriptions) == 0 and d.subscriptions._by_cid == {}

    def test_metrics(self):
        t, reg, d, heads = make()
        subscribe(d, 1, "newHeads")
        m = d.metrics()
        assert m["subscriptions"] == 1 and m["channels"] == 1 and "eth" in m["services"]


class TestSubscribeInBatches:
    def test_sync_batch(self):
        t, reg, d, heads = make()
        reply = send(d, [req("eth_subscribe", ["newHeads"], id=1), req("eth_subscribe", ["nope"], id=2)])
        assert reply[0]["result"] == d.subscriptions.channel_id(heads)
        assert reply[1]["error"]["code"] == -32602

    def test_no_notification_before_the_batch_answer(self):
        t, reg, d, heads = make()

        @reg.method("eth_slow")
        async def slow():
            await asyncio.sleep(0.02)
            return "slow"

        async def main():
            batch = [req("eth_slow", id=1), req("eth_subscribe", ["newHeads"], id=2)]
            assert d.on_message(1, orjson.dumps(batch)) is None
            assert d.publish(heads, "early") == 0  # the subscription does not exist yet
            await t.wait_sent(1)
            (reply,) = t.messages(1)
            sub = reply[1]["result"]
            assert d.publish(heads, "late") == 1
            assert t.messages(1)[1]["params"] == {"subscription": sub, "result": "late"}

        run(main)

    def test_undelivered_batch_subscriptions_are_undone(self):
        t, reg, d, heads = make()

        @reg.method("eth_slow")
        async def slow():
            await asyncio.sleep(0.01)

        async def main():
            d.on_message(1, orjson.dumps([req("eth_slow", id=1), req("eth_subscribe", ["newHeads"], id=2)]))
            t.disconnect(1)
            d.on_close(1)
            await t.wait_for(lambda: t.ended[1] == 1)
            assert d.subscriptions.count() == 0 and len(d.subscriptions) == 0

        run(main)
