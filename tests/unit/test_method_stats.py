"""Request counters (issue 11): ``Dispatcher.method_stats()`` and the dispatcher counters
of ``Dispatcher.metrics()``, against a FakeTransport.

Every test runs through the compiled entry (``on_message``, ``fastrpc._fastcall``) and
the pure-Python path (``on_message_py``): each call is counted exactly once, under the
same outcome, whichever path answers it. ``tests/unit/test_fastcall.py`` and
``test_transcripts.py`` compare the two paths' counters on generated requests and on
every transcript.
"""
from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest

from fastrpc import _fastcall
from fastrpc.dispatch import BATCH_BUCKETS, DURATION_BUCKETS, Dispatcher
from fastrpc.errors import MethodNotFound, RequestTimedOut, RPCError, ServerBusy, UpstreamLost
from fastrpc.limits import Limits
from fastrpc.service import Registry
from fakes import FakeTransport, counter_snapshot, note, req, run

ENTRIES = ["compiled", "python"]
OUTCOME_KEYS = ("success", "error", "failure", "timeout", "refused")


class Counting(Dispatcher):
    """Counts how often the compiled entry handed a message to the Python path."""

    def __init__(self, *a, **kw):
        self.fallbacks = 0
        super().__init__(*a, **kw)

    def _call(self, *a):
        self.fallbacks += 1
        return super()._call(*a)


def registry() -> Registry:
    reg = Registry()
    reg.service("b", failure_threshold=2, cooldown=3600)
    reg.service("a", timeout=0.05)
    reg.service("c", max_concurrency=1)
    reg.service("th", threaded=True, max_concurrency=4)

    def s_ok():
        return "ok"

    def s_app():
        raise RPCError(-32050, "app error")

    def s_boom():
        raise ValueError("boom")

    def s_bad():
        return object()  # not JSON: -32603

    def s_typed(a: int):
        return a

    def s_sleep(seconds: float):
        time.sleep(seconds)
        return seconds

    def s_shed():
        raise ServerBusy()

    def s_timedout():
        raise RequestTimedOut()

    def s_lost():
        raise UpstreamLost()

    def s_unknown():
        raise MethodNotFound(-32601, "the method s_unknown does not exist")

    def b_ok():
        return 1

    def b_boom():
        raise ValueError("boom")

    async def a_ok():
        return "ok"

    async def a_app():
        raise RPCError(-32051, "app error")

    async def a_boom():
        raise ValueError("boom")

    async def a_slow(seconds: float):
        await asyncio.sleep(seconds)

    async def a_typed(x: int):
        return x

    async def c_sleep(seconds: float):
        await asyncio.sleep(seconds)
        return seconds

    def th_ok():
        return "thread"

    def th_boom():
        raise ValueError("boom")

    for fn in (s_ok, s_app, s_boom, s_bad, s_typed, s_sleep, s_shed, s_timedout, s_lost, s_unknown,
               b_ok, b_boom, a_ok, a_app, a_boom, a_slow, a_typed, c_sleep, th_ok, th_boom):
        reg.add(fn.__name__, fn)
    reg.topic("s", "ticks")
    return reg


def make(entry: str, limits: Limits = Limits(), reg: Registry | None = None):
    t = FakeTransport()
    d = Counting(t, limits, registry=reg or registry())
    on_message = d.on_message if entry == "compiled" else d.on_message_py
    return t, d, on_message


def feed(on_message, msg, cid: int = 1):
    data = msg if isinstance(msg, bytes) else orjson.dumps(msg)
    reply = on_message(cid, data)
    return None if reply is None else orjson.loads(reply)


def outcomes(d: Dispatcher) -> dict[str, dict[str, int]]:
    """Per method, the outcomes that are not zero (and ``ran``, the durations counted)."""
    methods, _ = counter_snapshot(d)  # also checks buckets == outcomes that ran
    return {name: {k: v for k, v in s.items() if v} for name, s in methods.items()}


@pytest.fixture
def quiet_log():
    log = logging.getLogger("fastrpc.dispatch")
    log.disabled = True
    yield
    log.disabled = False


# --- synchronous calls --------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_sync_outcomes_each_counted_once(entry, quiet_log):
    _, d, on_message = make(entry)
    for msg in (req("s_ok"), req("s_ok", []), note("s_ok"), req("s_ok", [1]),
                req("s_app"), req("s_app", id="x"), req("s_boom"), note("s_boom"), req("s_bad"),
                req("s_typed", [1]), req("s_typed", ["x"]), req("s_typed", {"a": 2})):
        feed(on_message, msg)
    assert outcomes(d) == {
        "s_ok": {"success": 3, "error": 1, "ran": 4},  # [1]: -32602, an error answer
        "s_app": {"error": 2, "ran": 2},
        "s_boom": {"failure": 2, "ran": 2},
        "s_bad": {"failure": 1, "ran": 1},
        "s_typed": {"success": 2, "error": 1, "ran": 3},
    }
    if entry == "compiled":
        assert d.fallbacks == 0  # every one of these was counted by the compiled call


@pytest.mark.parametrize("entry", ENTRIES)
def test_shape_of_method_stats(entry):
    _, d, on_message = make(entry)
    assert d.method_stats() == {}  # nothing called yet: no entry at all
    feed(on_message, req("s_ok"))
    stats = d.method_stats()
    assert list(stats) == ["s_ok"]
    s = stats["s_ok"]
    assert set(s) == {*OUTCOME_KEYS, "buckets", "sum"}
    assert all(type(s[k]) is int for k in OUTCOME_KEYS)
    assert type(s["buckets"]) is list and len(s["buckets"]) == len(DURATION_BUCKETS) + 1
    assert all(type(n) is int for n in s["buckets"])
    assert type(s["sum"]) is float and 0 < s["sum"] < 1
    assert s["success"] == sum(s["buckets"]) == 1


@pytest.mark.parametrize("entry", ENTRIES)
def test_open_breaker_counts_refused_without_a_duration(entry, quiet_log):
    _, d, on_message = make(entry)
    for _ in range(2):
        feed(on_message, req("b_boom"))  # two failures: the breaker opens
    for msg in (req("b_ok"), req("b_ok"), note("b_ok"), req("b_boom")):
        assert feed(on_message, msg) in (None, {"jsonrpc": "2.0", "id": 1,
                                                "error": {"code": -32002, "message": "service unavailable"}})
    got = d.method_stats()
    assert outcomes(d) == {"b_boom": {"failure": 2, "refused": 1, "ran": 2}, "b_ok": {"refused": 3}}
    assert got["b_ok"]["sum"] == 0.0 and sum(got["b_ok"]["buckets"]) == 0


@pytest.mark.parametrize("entry", ENTRIES)
def test_rpc_error_subclasses_count_as_what_they_answer(entry):
    """The answers cluster forwarding gives carry their outcome: refused, timeout,
    failure, and "method not found" relayed from an upstream is an unknown method."""
    _, d, on_message = make(entry)
    for name in ("s_shed", "s_timedout", "s_lost", "s_unknown"):
        feed(on_message, req(name))
    assert outcomes(d) == {"s_shed": {"refused": 1}, "s_timedout": {"timeout": 1, "ran": 1},
                           "s_lost": {"failure": 1, "ran": 1}}
    assert d.metrics()["unknown_methods"] == 1
    assert feed(on_message, req("s_unknown"))["error"]["code"] == -32601


# --- what the dispatcher answers before any method runs --------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_unknown_methods_make_no_entry(entry):
    """Names come from clients: counting them per method would let any client grow the
    counters (and a Prometheus label set) without bound."""
    reg = registry()
    reg.add("hidden_x", lambda: 1)
    reg.expose(["s", "b", "a", "c", "th"])
    _, d, on_message = make(entry, reg=reg)
    for i in range(200):
        feed(on_message, req(f"nope_{i}", [i]))
    feed(on_message, note("nope_note"))
    feed(on_message, req("hidden_x"))  # namespace not exposed: -32601 too
    feed(on_message, [req("nope_a"), req("s_ok"), note("nope_b")])
    assert d.method_stats().keys() == {"s_ok"}
    m = d.metrics()
    assert m["unknown_methods"] == 200 + 1 + 1 + 2


@pytest.mark.parametrize("entry", ENTRIES)
def test_parse_errors_and_invalid_requests(entry):
    _, d, on_message = make(entry)
    for data in (b"{bad", b"", b'[{"jsonrpc":"2.0"', b"\xff\xfe"):
        assert feed(on_message, data)["error"]["code"] == -32700
    for msg in (b"7", b'"x"', b"null", req("s_ok", jsonrpc="1.0"), req("s_ok", id=True), req(5),
                req("s_ok", "x"), b"[]", [1, "two"], [req("s_ok"), {"method": "s_ok"}]):
        reply = feed(on_message, msg)
        codes = [r["error"]["code"] for r in (reply if type(reply) is list else [reply]) if "error" in r]
        assert -32600 in codes, msg
    m = d.metrics()
    assert m["parse_errors"] == 4
    # 7, "x", null | "1.0", id true, method 5, params "x" | [] (one for the batch) |
    # [1, "two"] (one per entry) | the entry without "jsonrpc"
    assert m["invalid_requests"] == 3 + 4 + 1 + 2 + 1
    assert m["batches"] == 2 and m["batch_sum"] == 4  # [] is not a batch answered entry by entry
    assert outcomes(d) == {"s_ok": {"success": 1, "ran": 1}}


# --- batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_batches_counted_with_their_lengths(entry):
    _, d, on_message = make(entry)
    sizes = [1, 2, 3, 10, 11, 20, 21, 1000]
    for n in sizes:
        feed(on_message, [req("s_ok", id=i) if i % 3 else note("s_ok") for i in range(n)])
    assert feed(on_message, [req("s_ok")] * 1001)["error"]["message"] == "batch too large"
    m = d.metrics()
    assert m["batches"] == len(sizes)
    assert m["batch_sum"] == sum(sizes)
    assert len(m["batch_buckets"]) == len(BATCH_BUCKETS) + 1
    # 1 | 2 | 3 (<=5) | 10 | 11, 20 (<=20) | 21 (<=50) | ... | 1000 | longer
    assert m["batch_buckets"] == [1, 1, 1, 1, 2, 1, 0, 0, 0, 1, 0]
    assert m["invalid_requests"] == 1  # the batch of 1001
    # every entry ran and was counted once; nothing of the refused batch ran
    assert outcomes(d) == {"s_ok": {"success": sum(sizes), "ran": sum(sizes)}}


def test_batch_longer_than_the_largest_bucket():
    _, d, on_message = make("compiled", Limits(max_batch_length=1500))
    feed(on_message, [req("s_ok", id=i) for i in range(1500)])
    assert d.metrics()["batch_buckets"][-1] == 1
    assert d.method_stats()["s_ok"]["success"] == 1500


@pytest.mark.parametrize("entry", ENTRIES)
def test_batch_entries_past_the_answer_cap_are_not_counted(entry):
    """Entries answered -32006 without running are not calls; the one that ran and did
    not fit is."""
    _, d, on_message = make(entry, Limits(max_batch_response_size=200))
    replies = feed(on_message, [req("s_ok", id=i) for i in range(20)])
    results = sum(1 for r in replies if "result" in r)
    assert 0 < results < 20 and all(r["error"]["code"] == -32006 for r in replies if "error" in r)
    assert d.method_stats()["s_ok"]["success"] == results + 1


# --- async and threaded calls ----------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_async_and_threaded_outcomes(entry, quiet_log):
    async def main():
        t, d, on_message = make(entry)
        for msg in (req("a_ok"), note("a_ok"), req("a_app"), req("a_boom"), req("a_slow", [5]),
                    req("a_typed", [1]), req("th_ok"), req("th_boom"),
                    [req("a_ok", id=1), req("th_ok", id=2)]):
            feed(on_message, msg)
        # -32602 is answered before any task: an error, timed, not a task
        assert feed(on_message, req("a_typed", ["x"]))["error"]["code"] == -32602
        await t.wait_for(lambda: d.in_flight == 0, 5)
        got = d.method_stats()
        assert outcomes(d) == {
            "a_ok": {"success": 3, "ran": 3},
            "a_app": {"error": 1, "ran": 1},
            "a_boom": {"failure": 1, "ran": 1},
            "a_slow": {"timeout": 1, "ran": 1},
            "a_typed": {"success": 1, "error": 1, "ran": 2},
            "th_ok": {"success": 2, "ran": 2},
            "th_boom": {"failure": 1, "ran": 1},
        }
        # the timeout (0.05 s) ran at least that long: nothing at or below 25 ms
        assert sum(got["a_slow"]["buckets"][:DURATION_BUCKETS.index(0.025) + 1]) == 0
        assert got["a_slow"]["sum"] >= 0.05
        await d.aclose()
        d.registry.close()

    run(main)


@pytest.mark.parametrize("entry", ENTRIES)
def test_busy_namespace_counts_refused(entry):
    async def main():
        t, d, on_message = make(entry)
        replies = [feed(on_message, req("c_sleep", [0.05], id=i)) for i in range(3)]
        assert replies[0] is None  # running
        assert [r["error"]["code"] for r in replies[1:]] == [-32003, -32003]
        await t.wait_for(lambda: d.in_flight == 0, 5)
        assert outcomes(d) == {"c_sleep": {"success": 1, "refused": 2, "ran": 1}}
        assert d.method_stats()["c_sleep"]["sum"] >= 0.05

    run(main)


def test_a_call_cancelled_by_its_connection_closing_is_not_counted():
    async def main():
        t, d, on_message = make("compiled")
        feed(on_message, req("c_sleep", [10]), cid=5)
        await asyncio.sleep(0.01)  # it is running
        d.on_close(5)
        await t.wait_for(lambda: d.in_flight == 0, 5)
        assert d.method_stats() == {}  # no reply, no outcome
        feed(on_message, req("c_sleep", [0]), cid=6)
        await t.wait_for(lambda: d.in_flight == 0, 5)
        assert outcomes(d) == {"c_sleep": {"success": 1, "ran": 1}}

    run(main)


# --- subscriptions ---------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ENTRIES)
def test_subscribe_and_unsubscribe_counted(entry):
    t, d, on_message = make(entry)
    sub = feed(on_message, req("s_subscribe", ["ticks"]))["result"]
    assert feed(on_message, req("s_subscribe", ["nope"]))["error"]["code"] == -32602
    assert feed(on_message, req("s_subscribe", "x"))["error"]["code"] == -32600  # not counted: invalid
    feed(on_message, [req("s_subscribe", ["ticks"], id=1), req("s_ok", id=2)], cid=2)  # deferred, once
    assert feed(on_message, req("s_unsubscribe", [sub]))["result"] is True
    assert feed(on_message, req("s_unsubscribe", []))["error"]["code"] == -32602
    assert outcomes(d) == {"s_subscribe": {"success": 2, "error": 1, "ran": 3},
                           "s_unsubscribe": {"success": 1, "error": 1, "ran": 2},
                           "s_ok": {"success": 1, "ran": 1}}


def test_notifications_sent_per_subscriber_reached():
    t, d, on_message = make("compiled", Limits(max_subscriber_queue=300))
    for cid in (1, 2, 3):
        feed(on_message, req("s_subscribe", ["ticks"]), cid=cid)
    topic = d.registry.find_topic("s.ticks")
    assert d.publish(topic, {"n": 1}) == 3
    assert d.publish(topic, {"n": 2}) == 3
    assert d.metrics()["notifications_sent"] == 6
    t.stall(3)
    for n in range(20):  # cid 3 passes its queue cap and is dropped
        d.publish(topic, {"n": n, "pad": "x" * 50})
    m = d.metrics()
    assert m["subscribers_dropped_slow"] == 1
    delivered = sum(1 for cid, data in t.sent if b'"result":' in data and b"subscription" in data)
    assert m["notifications_sent"] == delivered  # the -32004 notice is not one of them
    assert d.publish(topic, {"n": 0}, key="nobody") == 0  # no such channel: nothing sent
    assert d.metrics()["notifications_sent"] == delivered


# --- durations -------------------------------------------------------------------------------


def bucket_of(seconds: float) -> int:
    """The index of the bucket a duration of ``seconds`` lands in (bounds inclusive)."""
    for i, bound in enumerate(DURATION_BUCKETS):
        if seconds <= bound:
            return i
    return len(DURATION_BUCKETS)


def test_duration_buckets_are_the_compiled_ones():
    assert DURATION_BUCKETS is _fastcall.DURATION_BUCKETS
    assert list(DURATION_BUCKETS) == sorted(set(DURATION_BUCKETS))
    assert _fastcall.OUTCOMES == OUTCOME_KEYS
    assert [_fastcall.SUCCESS, _fastcall.ERROR, _fastcall.FAILURE, _fastcall.TIMEOUT,
            _fastcall.REFUSED] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("ago", [0.3, 3.0, 20.0])
def test_done_puts_a_duration_in_its_bucket(ago):
    """``done`` reads the clock ``time.monotonic_ns`` reads (CLOCK_MONOTONIC): a start
    ``ago`` seconds back lands in the bucket of at least ``ago`` (the bounds are 2-2.5x
    apart: a stall of more than ~60 % of ``ago`` between the two lines would be needed
    to move it further)."""
    m = registry().lookup("s_ok")
    m.done(_fastcall.SUCCESS, time.monotonic_ns() - int(ago * 1e9))
    s = m.stats()
    assert s["buckets"].index(1) == bucket_of(ago) and sum(s["buckets"]) == 1
    assert ago <= s["sum"] < ago + 1.0


def test_done_refuses_other_outcomes_and_a_start_in_the_future_counts_zero():
    m = registry().lookup("s_ok")
    for bad in (_fastcall.REFUSED, _fastcall.UNKNOWN, -1, 7):
        with pytest.raises(ValueError):
            m.done(bad, time.monotonic_ns())
    m.done(_fastcall.ERROR, time.monotonic_ns() + 10**9)  # clamped: never negative
    s = m.stats()
    assert s["error"] == 1 and s["buckets"][0] == 1 and s["sum"] == 0.0
    m.refuse()
    assert m.stats()["refused"] == 1 and sum(m.stats()["buckets"]) == 1


@pytest.mark.parametrize("entry", ENTRIES)
def test_a_slow_sync_handler_is_timed(entry):
    _, d, on_message = make(entry)
    feed(on_message, req("s_sleep", [0.003]))
    s = d.method_stats()["s_sleep"]
    assert s["sum"] >= 0.003
    assert s["buckets"].index(1) >= bucket_of(0.003)
