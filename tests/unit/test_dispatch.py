"""fastrpc.dispatch.Dispatcher against a FakeTransport: the specification, end to end.

Section names follow jsonrpc.org/specification; ``TestSection7Examples`` replays the
specification's own examples (method names get a namespace: ``math_subtract``).
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import sys

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastrpc.dispatch import Dispatcher
from fastrpc.errors import RPCError
from fastrpc.limits import Limits
from fastrpc.service import Context, Registry
from fakes import FakeTransport, note, req, run, send


def make(limits: Limits = Limits(), registry: Registry | None = None):
    t = FakeTransport()
    reg = registry or Registry()
    return t, reg, Dispatcher(t, limits, registry=reg)


def err(rid, code, message=None):
    e = {"code": code}
    if message is not None:
        e["message"] = message
    return e


def error_of(reply):
    return reply["error"]["code"], reply["id"]


@pytest.fixture
def spec():
    t, reg, d = make()
    calls = []

    @reg.method("math_subtract")
    def subtract(minuend: int, subtrahend: int):
        return minuend - subtrahend

    @reg.method("math_sum")
    def total(*numbers):
        return sum(numbers)

    @reg.method("math_update")
    def update(*a):
        calls.append(("update", a))

    @reg.method("math_notifyHello")
    def notify_hello(*a):
        calls.append(("hello", a))

    @reg.method("math_getData")
    def get_data():
        return ["hello", 5]

    d.calls = calls
    return d


class TestSection7Examples:
    def test_positional(self, spec):
        assert send(spec, req("math_subtract", [42, 23], id=1)) == {"jsonrpc": "2.0", "result": 19, "id": 1}
        assert send(spec, req("math_subtract", [23, 42], id=2)) == {"jsonrpc": "2.0", "result": -19, "id": 2}

    def test_named(self, spec):
        msg = req("math_subtract", {"subtrahend": 23, "minuend": 42}, id=3)
        assert send(spec, msg) == {"jsonrpc": "2.0", "result": 19, "id": 3}

    def test_notifications(self, spec):
        assert send(spec, note("math_update", [1, 2, 3, 4, 5])) is None
        assert send(spec, note("math_foobar")) is None
        assert spec.calls == [("update", (1, 2, 3, 4, 5))]

    def test_method_not_found(self, spec):
        assert send(spec, req("math_foobar", id="1")) == {
            "jsonrpc": "2.0",
            "error": {"code": -32601, "message": "Method not found"},
            "id": "1",
        }

    def test_invalid_json(self, spec):
        raw = b'{"jsonrpc": "2.0", "method": "foobar, "params": "bar", "baz]'
        assert send(spec, raw) == {"jsonrpc": "2.0", "error": {"code": -32700, "message": "Parse error"}, "id": None}

    def test_invalid_request_object(self, spec):
        reply = send(spec, {"jsonrpc": "2.0", "method": 1, "params": "bar"})
        assert error_of(reply) == (-32600, None)

    def test_batch_invalid_json(self, spec):
        raw = b'[{"jsonrpc": "2.0", "method": "sum", "params": [1,2,4], "id": "1"},{"jsonrpc": "2.0", "method"]'
        assert error_of(send(spec, raw)) == (-32700, None)

    def test_empty_array(self, spec):
        reply = send(spec, [])
        assert isinstance(reply, dict) and error_of(reply) == (-32600, None)

    def test_invalid_batch_not_empty(self, spec):
        reply = send(spec, [1])
        assert [error_of(r) for r in reply] == [(-32600, None)]

    def test_invalid_batch(self, spec):
        reply = send(spec, [1, 2, 3])
        assert [error_of(r) for r in reply] == [(-32600, None)] * 3

    def test_rpc_call_batch(self, spec):
        reply = send(
            spec,
            [
                req("math_sum", [1, 2, 4], id="1"),
                note("math_notifyHello", [7]),
                req("math_subtract", [42, 23], id="2"),
                {"foo": "boo"},
                req("math_foo.get", {"name": "myself"}, id="5"),
                req("math_getData", id="9"),
            ],
        )
        assert reply == [
            {"jsonrpc": "2.0", "result": 7, "id": "1"},
            {"jsonrpc": "2.0", "result": 19, "id": "2"},
            {"jsonrpc": "2.0", "error": {"code": -32600, "message": 'jsonrpc must be "2.0"'}, "id": None},
            {"jsonrpc": "2.0", "error": {"code": -32601, "message": "Method not found"}, "id": "5"},
            {"jsonrpc": "2.0", "result": ["hello", 5], "id": "9"},
        ]
        assert spec.calls == [("hello", (7,))]

    def test_batch_all_notifications(self, spec):
        raw = orjson.dumps([note("math_notifyHello", [1, 2, 4]), note("math_notifyHello", [7])])
        assert spec.on_message(1, raw) is None
        assert len(spec.calls) == 2


class TestSection4Requests:
    @pytest.mark.parametrize("rid", ["abc", "", 0, -7, 1.5, None, 2**63 - 1])
    def test_id_echoed_exactly(self, spec, rid):
        assert send(spec, req("math_getData", id=rid))["id"] == rid

    @pytest.mark.parametrize("rid", [True, False, {}, [], [1], {"a": 1}])
    def test_id_of_wrong_type(self, spec, rid):
        reply = send(spec, req("math_getData", id=rid))
        assert reply["error"] == {"code": -32600, "message": "id must be a string, number or null"}
        assert reply["id"] is None

    @pytest.mark.parametrize("version", ["1.0", 2.0, None, "2"])
    def test_wrong_version_echoes_a_valid_id(self, spec, version):
        reply = send(spec, {"jsonrpc": version, "id": 4, "method": "math_getData"})
        assert reply == {"jsonrpc": "2.0", "id": 4, "error": {"code": -32600, "message": 'jsonrpc must be "2.0"'}}

    def test_missing_version(self, spec):
        assert error_of(send(spec, {"id": 4, "method": "math_getData"})) == (-32600, 4)

    @pytest.mark.parametrize("method", [None, 5, ["x"], {"a": 1}, True])
    def test_method_not_a_string(self, spec, method):
        assert send(spec, req(method, id=1))["error"] == {"code": -32600, "message": "method must be a string"}

    def test_method_missing(self, spec):
        assert error_of(send(spec, {"jsonrpc": "2.0", "id": 1})) == (-32600, 1)

    @pytest.mark.parametrize("params", ["bar", 3, None, True])
    def test_params_not_structured(self, spec, params):
        reply = send(spec, req("math_getData", params, id=1))
        assert reply["error"] == {"code": -32600, "message": "params must be an array or an object"}

    def test_invalid_notification_is_answered(self, spec):
        # Not a valid Request object, so not a notification: answered with id null.
        assert error_of(send(spec, {"jsonrpc": "2.0", "method": 1})) == (-32600, None)
        assert error_of(send(spec, {"jsonrpc": "2.0", "method": "math_getData", "params": 1})) == (-32600, None)

    @pytest.mark.parametrize("raw", [b"1", b'"x"', b"null", b"true", b" 3.5 "])
    def test_top_level_scalar(self, spec, raw):
        reply = send(spec, raw)
        assert reply == {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "request must be an object"}}

    @pytest.mark.parametrize("raw", [b"", b"   ", b"\xff\xfe", b"{,}", b"[1,]", b"NaN", b'{"a":1} x'])
    def test_not_json(self, spec, raw):
        assert error_of(send(spec, raw)) == (-32700, None)

    def test_whitespace_around_is_fine(self, spec):
        raw = b'  \n\t{"jsonrpc":"2.0","id":1,"method":"math_getData"}\r\n '
        assert send(spec, raw)["result"] == ["hello", 5]
        raw = b'\n [ {"jsonrpc":"2.0","id":1,"method":"math_getData"} ] '
        assert send(spec, raw)[0]["result"] == ["hello", 5]

    def test_binary_and_text_are_the_same(self, spec):
        raw = orjson.dumps(req("math_getData"))
        assert spec.on_binary(1, raw) == spec.on_text(1, raw) == spec.on_message(1, raw)


class TestNotificationsNeverAnswered:
    def test_every_error_is_silent(self, caplog):
        t, reg, d = make()
        reg.add("t_fail", lambda: 1 / 0)
        reg.add("t_app", lambda: (_ for _ in ()).throw(RPCError(-32010, "app")))
        reg.add("t_one", lambda a: a)
        with caplog.at_level(logging.ERROR, "fastrpc.dispatch"):
            for msg in (note("t_nope"), note("t_fail"), note("t_app"), note("t_one", [1, 2]), note("t_one", {"b": 1})):
                assert send(d, msg) is None
        assert "ZeroDivisionError" in caplog.text  # still logged
        assert t.sent == []


class TestErrors:
    def test_rpc_error_passes_through(self):
        t, reg, d = make()

        @reg.method("t_revert")
        def revert():
            raise RPCError(3, "execution reverted", {"reason": "0x08c379a0"})

        assert send(d, req("t_revert", id=1)) == {
            "jsonrpc": "2.0",
            "id": 1,
            "error": {"code": 3, "message": "execution reverted", "data": {"reason": "0x08c379a0"}},
        }

    def test_other_exceptions_are_internal_and_logged(self, caplog):
        t, reg, d = make()

        @reg.method("t_boom")
        def boom():
            raise KeyError("secret-detail")

        with caplog.at_level(logging.ERROR, "fastrpc.dispatch"):
            raw = d.on_message(1, orjson.dumps(req("t_boom", id=2)))
        assert orjson.loads(raw) == {"jsonrpc": "2.0", "id": 2, "error": {"code": -32603, "message": "Internal error"}}
        assert b"secret" not in raw
        assert "t_boom" in caplog.text and "secret-detail" in caplog.text and "Traceback" in caplog.text
        assert caplog.records[0].name == "fastrpc.dispatch"

    @pytest.mark.parametrize("value", [object(), {1, 2}, 2**64, b"bytes"])
    def test_result_not_json_is_internal(self, value, caplog):
        t, reg, d = make()
        reg.add("t_bad", lambda: value)
        with caplog.at_level(logging.ERROR, "fastrpc.dispatch"):
            assert error_of(send(d, req("t_bad", id=1))) == (-32603, 1)
        assert "t_bad" in caplog.text

    def test_fragment_result(self):
        t, reg, d = make()
        reg.add("t_block", lambda: orjson.Fragment(b'{"number":"0x1"}'))
        assert d.on_message(1, orjson.dumps(req("t_block", id=1))) == (
            b'{"jsonrpc":"2.0","id":1,"result":{"number":"0x1"}}'
        )

    def test_invalid_params_message(self):
        t, reg, d = make()
        reg.add("t_get", lambda block, full: 1)
        assert send(d, req("t_get", ["latest"], id=1))["error"] == {
            "code": -32602,
            "message": "missing value for required argument 1 (full)",
        }

    def test_namespace_not_exposed_is_not_found(self):
        reg = Registry(namespaces=["eth"])
        reg.add("admin_stop", lambda: 1)
        t, reg, d = make(registry=reg)
        assert error_of(send(d, req("admin_stop", id=1))) == (-32601, 1)


class TestSection6Batch:
    def test_order_kept_and_notifications_left_out(self):
        t, reg, d = make()
        reg.add("t_echo", lambda x: x)
        reply = send(d, [req("t_echo", [1], id=1), note("t_echo", [2]), req("t_echo", [3], id=3)])
        assert [r["result"] for r in reply] == [1, 3]

    def test_invalid_entries_mixed_with_valid(self):
        t, reg, d = make()
        reg.add("t_echo", lambda x: x)
        reply = send(d, [1, req("t_echo", [5], id=7), {"jsonrpc": "2.0", "id": 8, "method": 5}, "x", None])
        assert [error_of(r) if "error" in r else r["result"] for r in reply] == [
            (-32600, None),
            5,
            (-32600, 8),
            (-32600, None),
            (-32600, None),
        ]

    def test_nested_batch_is_an_invalid_entry(self):
        t, reg, d = make()
        reg.add("t_echo", lambda x: x)
        reply = send(d, [[req("t_echo", [1])]])
        assert [error_of(r) for r in reply] == [(-32600, None)]

    def test_batch_too_large(self):
        t, reg, d = make(Limits(max_batch_length=3))
        ran = []
        reg.add("t_run", lambda: ran.append(1))
        assert send(d, [req("t_run", id=i) for i in range(3)]) is not None
        reply = send(d, [req("t_run", id=i) for i in range(4)])
        assert reply == {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "batch too large"}}
        assert len(ran) == 3  # nothing of the refused batch ran

    def test_default_batch_limit_is_1000(self):
        t, reg, d = make()
        reg.add("t_one", lambda: 1)
        assert len(send(d, [req("t_one", id=i) for i in range(1000)])) == 1000
        assert error_of(send(d, [note("t_one")] * 1001)) == (-32600, None)

    def test_response_size_limit(self):
        # Each reply of t_big(60) is 96 bytes: "[" + 96 + "," + 96 + "," = 195 fits 200,
        # the third does not: it and every later call get -32006, and later calls with
        # an id do not run. Notifications still run.
        t, reg, d = make(Limits(max_batch_response_size=200))
        ran = []

        @reg.method("t_big")
        def big(n: int):
            ran.append(n)
            return "x" * n

        assert len(jsonrpc_result(1, "x" * 60)) == 96
        reply = send(
            d,
            [
                req("t_big", [60], id=1),
                req("t_big", [60], id=2),
                req("t_big", [60], id=3),
                req("t_big", [1], id=4),
                note("t_big", [0]),
                {"jsonrpc": "2.0", "method": 5, "id": 6},
            ],
        )
        assert [r.get("result", r.get("error")) for r in reply] == [
            "x" * 60,
            "x" * 60,
            {"code": -32006, "message": "response too large"},
            {"code": -32006, "message": "response too large"},
            {"code": -32006, "message": "response too large"},
        ]
        assert [r["id"] for r in reply] == [1, 2, 3, 4, 6]
        assert ran == [60, 60, 60, 0]  # id 3 ran (its size was unknown), id 4 did not

    def test_one_reply_larger_than_the_limit(self):
        t, reg, d = make(Limits(max_batch_response_size=50))
        reg.add("t_big", lambda n: "x" * n)
        reply = send(d, [req("t_big", [100], id=1)])
        assert reply == [{"jsonrpc": "2.0", "id": 1, "error": {"code": -32006, "message": "response too large"}}]

    def test_single_call_not_limited_by_batch_size(self):
        t, reg, d = make(Limits(max_batch_response_size=50))
        reg.add("t_big", lambda n: "x" * n)
        assert send(d, req("t_big", [100], id=1))["result"] == "x" * 100


def jsonrpc_result(rid, value):
    from fastrpc import jsonrpc

    return jsonrpc.result(rid, value)


class TestAsync:
    def test_async_call_replies_through_send(self):
        t, reg, d = make()

        @reg.method("t_slow")
        async def slow(x: int):
            await asyncio.sleep(0.01)
            return x * 2

        async def main():
            assert d.on_message(5, orjson.dumps(req("t_slow", [21], id=1))) is None
            assert t.in_flight(5) == 1 and d.in_flight == 1
            await t.wait_sent(1)
            assert t.messages(5) == [{"jsonrpc": "2.0", "id": 1, "result": 42}]
            await t.wait_for(lambda: d.in_flight == 0)
            assert t.begun[5] == t.ended[5] == 1

        run(main)

    def test_async_bad_params_answered_at_once(self):
        t, reg, d = make()

        @reg.method("t_slow")
        async def slow(x: int):
            return x

        async def main():
            assert error_of(send(d, req("t_slow", ["no"], id=1))) == (-32602, 1)
            assert t.begun == {} and d.in_flight == 0

        run(main)

    def test_async_errors(self, caplog):
        t, reg, d = make()

        @reg.method("t_app")
        async def app():
            raise RPCError(-32010, "nope", [1])

        @reg.method("t_boom")
        async def boom():
            await asyncio.sleep(0)
            raise ValueError("hidden")

        @reg.method("t_bad")
        async def bad_value():
            return object()

        async def main():
            with caplog.at_level(logging.ERROR, "fastrpc.dispatch"):
                for i, name in enumerate(("t_app", "t_boom", "t_bad")):
                    assert d.on_message(1, orjson.dumps(req(name, id=i))) is None
                await t.wait_sent(3)
            replies = sorted(t.messages(1), key=lambda r: r["id"])
            assert replies[0]["error"] == {"code": -32010, "message": "nope", "data": [1]}
            assert replies[1]["error"] == {"code": -32603, "message": "Internal error"}
            assert replies[2]["error"] == {"code": -32603, "message": "Internal error"}
            assert "hidden" in caplog.text and "hidden" not in str(replies)
            await t.wait_for(lambda: t.in_flight() == 0)

        run(main)

    def test_async_notification(self):
        t, reg, d = make()
        done = []

        @reg.method("t_slow")
        async def slow():
            await asyncio.sleep(0)
            done.append(1)
            return 1

        async def main():
            assert d.on_message(1, orjson.dumps(note("t_slow"))) is None
            await t.wait_for(lambda: done and t.in_flight() == 0)
            await asyncio.sleep(0.01)
            assert t.sent == [] and t.begun[1] == 1

        run(main)

    def test_one_task_per_request_never_per_connection(self):
        t, reg, d = make()

        @reg.method("t_slow")
        async def slow():
            await asyncio.sleep(0.01)
            return 1

        async def main():
            created = []
            loop = asyncio.get_running_loop()
            real = loop.create_task
            loop.create_task = lambda coro, **kw: created.append(1) or real(coro, **kw)
            try:
                for i in range(3):
                    d.on_message(1, orjson.dumps(req("t_slow", id=i)))
                assert d.on_message(1, orjson.dumps(req("t_nope", id=9))) is not None  # no task
            finally:
                del loop.create_task
            assert len(created) == 3
            await t.wait_sent(3)

        run(main)

    def test_sync_handlers_need_no_event_loop(self):
        # Outside any loop: a sync call creating a task or coroutine would fail here.
        t, reg, d = make()
        reg.add("t_one", lambda: 1)
        with pytest.raises(RuntimeError):
            asyncio.get_running_loop()
        assert send(d, [req("t_one", id=1), req("t_one", id=2)])[1]["result"] == 1

    def test_mixed_batch_sent_once_in_order(self):
        t, reg, d = make()
        reg.add("t_now", lambda x: x)

        @reg.method("t_later")
        async def later(x, delay: float):
            await asyncio.sleep(delay)
            return x

        async def main():
            batch = [
                req("t_later", [1, 0.02], id=1),
                req("t_now", [2], id=2),
                note("t_later", [0, 0]),
                req("t_later", [3, 0.0], id=3),
                req("t_nope", id=4),
            ]
            assert d.on_message(1, orjson.dumps(batch)) is None
            await t.wait_sent(1)
            await t.wait_for(lambda: t.in_flight() == 0)
            (reply,) = t.messages(1)
            assert [r["id"] for r in reply] == [1, 2, 3, 4]
            assert [r.get("result") for r in reply[:3]] == [1, 2, 3]
            assert t.begun[1] == t.ended[1] == 3

        run(main)

    def test_async_batch_of_notifications_sends_nothing(self):
        t, reg, d = make()

        @reg.method("t_later")
        async def later():
            return 1

        async def main():
            assert d.on_message(1, orjson.dumps([note("t_later"), note("t_later")])) is None
            await t.wait_for(lambda: t.ended[1] == 2)
            await asyncio.sleep(0.01)
            assert t.sent == []

        run(main)

    def test_async_batch_response_size(self):
        t, reg, d = make(Limits(max_batch_response_size=200))

        @reg.method("t_big")
        async def big(n: int, delay: float):
            await asyncio.sleep(delay)
            return "x" * n

        async def main():
            # Completion order 3, 2, 1: replies 3 and 2 fit (counted as they finish), 1 does not.
            batch = [req("t_big", [60, 0.03], id=1), req("t_big", [60, 0.015], id=2), req("t_big", [60, 0], id=3)]
            d.on_message(1, orjson.dumps(batch))
            await t.wait_sent(1)
            (reply,) = t.messages(1)
            assert [r["id"] for r in reply] == [1, 2, 3]
            assert reply[0]["error"]["code"] == -32006 and "result" in reply[1] and "result" in reply[2]

        run(main)

    def test_reply_to_a_gone_connection_is_dropped(self):
        t, reg, d = make()

        @reg.method("t_slow")
        async def slow():
            await asyncio.sleep(0.01)
            return 1

        async def main():
            d.on_message(3, orjson.dumps(req("t_slow", id=1)))
            t.disconnect(3)
            d.on_close(3, 1000)
            await t.wait_for(lambda: t.ended[3] == 1)
            assert t.sent == []

        run(main)

    def test_context_in_async_handler(self):
        t, reg, d = make()

        @reg.method("t_who")
        async def who(ctx: Context):
            return [ctx.cid, list(ctx.peer)]

        async def main():
            d.on_message(7, orjson.dumps(req("t_who", id=1)))
            await t.wait_sent(1)
            assert t.messages(7)[0]["result"] == [7, ["127.0.0.1", 40007]]

        run(main)

    def test_aclose_cancels_calls_in_flight(self):
        t, reg, d = make()
        cancelled = []

        @reg.method("t_hang")
        async def hang():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(1)
                raise

        async def main():
            for i in range(3):
                d.on_message(1, orjson.dumps(req("t_hang", id=i)))
            await d.aclose()
            assert cancelled == [1, 1, 1] and d.in_flight == 0
            assert t.begun[1] == t.ended[1] == 3 and t.sent == []
            assert reg.get_service("t").bulkhead.active == 0

        run(main)

    def test_aclose_right_after_scheduling(self):
        t, reg, d = make()

        @reg.method("t_hang")
        async def hang():
            await asyncio.sleep(60)

        async def main():
            d.on_message(1, orjson.dumps(req("t_hang", id=1)))
            await d.aclose()  # the task has not started yet: it must still clean up
            assert t.begun[1] == t.ended[1] == 1

        run(main)


class TestNoPerConnectionState:
    def test_many_connections_leave_nothing_behind(self):
        t, reg, d = make()
        reg.add("t_one", lambda: 1)
        reg.topic("t", "ticks")
        before = {k: len(v) if hasattr(v, "__len__") else v for k, v in vars(d).items()}
        for cid in range(1, 2001):
            d.on_message(cid, orjson.dumps(req("t_one", id=cid)))
            d.on_message(cid, b"garbage")
            d.on_message(cid, orjson.dumps([req("t_one"), note("t_nope")]))
            d.on_close(cid, 1000)
        after = {k: len(v) if hasattr(v, "__len__") else v for k, v in vars(d).items()}
        assert before == after
        assert d.subscriptions.count() == 0 and len(d.subscriptions) == 0

    def test_no_reference_kept_to_replies(self):
        t, reg, d = make()
        reg.add("t_one", lambda: "x" * 1000)
        for msg in (req("t_one", id=1), [req("t_one", id=1), req("t_one", id=2)], b"{", req("t_nope")):
            reply = d.on_message(1, msg if isinstance(msg, bytes) else orjson.dumps(msg))
            gc.collect()
            if reply is not PARSE_ERROR:
                assert sys.getrefcount(reply) == 2, msg  # the local and the call's argument


from fastrpc.jsonrpc import PARSE_ERROR_REPLY as PARSE_ERROR  # noqa: E402  (a constant: shared)


class TestNeverRaises:
    """Whatever a client sends, on_message returns None or well-formed answer(s)."""

    @staticmethod
    def check_response(r):
        assert isinstance(r, dict) and r["jsonrpc"] == "2.0" and "id" in r
        assert ("result" in r) != ("error" in r)
        if "error" in r:
            assert type(r["error"]["code"]) is int and type(r["error"]["message"]) is str
        assert set(r) <= {"jsonrpc", "id", "result", "error"}

    def dispatcher(self):
        t, reg, d = make(Limits(max_batch_length=8))
        reg.add("t_echo", lambda *a, **k: [a, k])
        reg.add("t_typed", lambda a, b=None: a)
        reg.add("t_fail", lambda *a: 1 / 0)
        return d

    @settings(max_examples=300, deadline=None)
    @given(
        st.lists(
            st.dictionaries(
                st.sampled_from(["jsonrpc", "method", "id", "params", "x"]),
                st.sampled_from(
                    ["2.0", "1.0", "t_echo", "t_typed", "t_fail", "t_nope", 1, 1.5, None, True, [], [1], {}, {"a": 1}, {"b": 2}]
                ),
            )
            | st.integers()
            | st.none(),
            max_size=10,
        )
        | st.dictionaries(st.sampled_from(["jsonrpc", "method", "id", "params"]), st.sampled_from(["2.0", "t_echo", 1, None, [1]]))
    )
    def test_structured_input(self, msg):
        d = self.dispatcher()
        logging.disable(logging.CRITICAL)
        try:
            reply = d.on_message(1, json.dumps(msg).encode())  # json: big integers too
        finally:
            logging.disable(logging.NOTSET)
        if reply is None:
            return
        decoded = orjson.loads(reply)
        for r in decoded if isinstance(decoded, list) else [decoded]:
            self.check_response(r)
        if isinstance(decoded, list):
            assert isinstance(msg, list) and 0 < len(decoded) <= len(msg)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=64) | st.text(alphabet='{}[]",:0123456789.-etrunlfas \\', max_size=40).map(str.encode))
    def test_arbitrary_bytes(self, data):
        reply = self.dispatcher().on_message(1, data)
        if reply is not None:
            decoded = orjson.loads(reply)
            for r in decoded if isinstance(decoded, list) else [decoded]:
                self.check_response(r)
