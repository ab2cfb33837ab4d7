"""fastrpc.isolation: bulkheads, timeouts, circuit breakers, threaded services.

The isolation tests assert that healthy calls *complete* while another namespace fails,
hangs or is saturated; they print latencies but never assert on wall-clock speed.
"""
from __future__ import annotations

import asyncio
import threading

import orjson
import pytest

from fastrpc.dispatch import Dispatcher
from fastrpc.errors import RPCError
from fastrpc.isolation import CLOSED, DEFAULT, DEFAULT_THREADS, HALF_OPEN, OPEN, Bulkhead
from fastrpc.limits import Limits
from fastrpc.service import Context, Registry
from fakes import FakeTransport, req, run, send


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(limits: Limits = Limits()):
    t = FakeTransport()
    reg = Registry()
    return t, reg, Dispatcher(t, limits, registry=reg)


def code_of(reply):
    return reply["error"]["code"] if "error" in reply else None


class TestBulkheadStateMachine:
    def test_opens_after_consecutive_failures(self):
        clock = Clock()
        bh = Bulkhead("x", failure_threshold=3, cooldown=10, clock=clock)
        bh.failure()
        bh.failure()
        bh.success()  # not consecutive any more
        bh.failure()
        bh.failure()
        assert bh.state == CLOSED
        bh.failure()
        assert bh.state == OPEN and bh.check() == -32002

    def test_open_half_open_closed(self):
        clock = Clock()
        bh = Bulkhead("x", failure_threshold=1, cooldown=10, clock=clock)
        bh.failure()
        assert bh.check() == -32002
        clock.now += 9.9
        assert bh.check() == -32002
        clock.now += 0.2
        assert bh.check() == 0 and bh.state == HALF_OPEN  # the probe
        assert bh.check() == -32002  # only one probe at a time
        bh.success()
        assert bh.state == CLOSED and bh.check() == 0

    def test_failed_probe_reopens_for_a_new_cooldown(self):
        clock = Clock()
        bh = Bulkhead("x", failure_threshold=1, cooldown=10, clock=clock)
        bh.failure()
        clock.now += 11
        assert bh.check() == 0
        bh.failure(timed_out=True)
        assert bh.state == OPEN and bh.opened_at == clock.now
        clock.now += 5
        assert bh.check() == -32002
        assert bh.stats()["timeouts"] == 1 and bh.stats()["failures"] == 2

    def test_cancelled_probe_is_given_back(self):
        clock = Clock()
        bh = Bulkhead("x", failure_threshold=1, cooldown=0, clock=clock, half_open_probes=1)
        bh.failure()
        assert bh.check() == 0
        bh.cancelled()
        assert bh.check() == 0

    def test_concurrency_limit(self):
        bh = Bulkhead("x", max_concurrency=2)
        assert bh.acquire() == 0 and bh.acquire() == 0
        assert bh.acquire() == -32003 and bh.busy_count == 1
        bh.release()
        assert bh.acquire() == 0 and bh.active == 2

    def test_unlimited_by_default_but_threads_are_bounded(self):
        bh = Bulkhead("x")
        assert bh.limit is None
        bh.configure(threaded=True)
        assert bh.limit == DEFAULT_THREADS

    def test_settings_validated(self):
        for bad in ({"max_concurrency": 0}, {"timeout": 0}, {"failure_threshold": 0}, {"cooldown": -1}):
            with pytest.raises(ValueError):
                Bulkhead("x", **bad)

    def test_timeout_default_and_override(self):
        bh = Bulkhead("x")
        assert bh.timeout is DEFAULT
        bh.configure(timeout=None)
        assert bh.timeout is None
        bh.configure(max_concurrency=3)  # leaves the timeout alone
        assert bh.timeout is None
        bh.reset_timeout()
        assert bh.timeout is DEFAULT


class TestFailingNamespace:
    def test_healthy_namespace_unaffected_by_one_that_always_raises(self, caplog):
        t, reg, d = make()
        reg.service("bad", failure_threshold=5)

        @reg.method("bad_call")
        def bad_call():
            raise RuntimeError("down")

        @reg.method("good_call")
        def good_call(i: int):
            return i

        codes = []
        for i in range(50):
            codes.append(code_of(send(d, req("bad_call", id=i))))
            assert send(d, req("good_call", [i], id=i))["result"] == i
        assert codes[:5] == [-32603] * 5 and codes[5:] == [-32002] * 45
        assert reg.get_service("good").bulkhead.state == CLOSED

    def test_rpc_errors_do_not_open_the_breaker(self):
        t, reg, d = make()
        reg.service("app", failure_threshold=2)

        @reg.method("app_revert")
        def revert():
            raise RPCError(3, "execution reverted")

        for i in range(10):
            assert code_of(send(d, req("app_revert", id=i))) == 3
        assert reg.get_service("app").bulkhead.state == CLOSED

    def test_invalid_params_do_not_open_the_breaker(self):
        t, reg, d = make()
        reg.service("app", failure_threshold=2)
        reg.add("app_one", lambda a: a)
        for i in range(5):
            assert code_of(send(d, req("app_one", id=i))) == -32602
        assert reg.get_service("app").bulkhead.state == CLOSED


class TestCircuitBreakerCycle:
    def test_sync_open_fast_fail_half_open_close(self):
        t, reg, d = make()
        clock = Clock()
        svc = reg.service("flaky", failure_threshold=3, cooldown=30)
        svc.bulkhead.clock = clock
        state = {"healthy": False, "calls": 0}

        @reg.method("flaky_get")
        def get():
            state["calls"] += 1
            if not state["healthy"]:
                raise ConnectionError("backend down")
            return "ok"

        assert [code_of(send(d, req("flaky_get", id=i))) for i in range(3)] == [-32603] * 3
        assert svc.bulkhead.state == OPEN
        # Open: fails fast without running the handler.
        assert [code_of(send(d, req("flaky_get", id=i))) for i in range(10)] == [-32002] * 10
        assert state["calls"] == 3
        reply = send(d, req("flaky_get", id=1))
        assert reply["error"] == {"code": -32002, "message": "service unavailable"}
        # Cool-down over, still broken: the probe fails and the breaker reopens.
        clock.now += 31
        assert code_of(send(d, req("flaky_get", id=1))) == -32603
        assert svc.bulkhead.state == OPEN and state["calls"] == 4
        assert code_of(send(d, req("flaky_get", id=1))) == -32002
        # Next cool-down, healthy again: the probe succeeds and closes the breaker.
        clock.now += 31
        state["healthy"] = True
        assert send(d, req("flaky_get", id=1))["result"] == "ok"
        assert svc.bulkhead.state == CLOSED
        assert all(send(d, req("flaky_get", id=i))["result"] == "ok" for i in range(5))

    def test_async_half_open_lets_one_probe_through(self):
        t, reg, d = make()
        clock = Clock()
        svc = reg.service("flaky", failure_threshold=1, cooldown=5)
        svc.bulkhead.clock = clock
        async def main():
            release = asyncio.Event()
            mode = {"fail": True}

            @reg.method("flaky_get")
            async def get():
                if mode["fail"]:
                    raise OSError("down")
                await release.wait()
                return "ok"

            d.on_message(1, orjson.dumps(req("flaky_get", id=1)))
            await t.wait_sent(1)
            assert svc.bulkhead.state == OPEN
            assert code_of(send(d, req("flaky_get", id=2))) == -32002
            clock.now += 6
            mode["fail"] = False
            assert d.on_message(1, orjson.dumps(req("flaky_get", id=3))) is None  # the probe
            assert svc.bulkhead.state == HALF_OPEN
            assert code_of(send(d, req("flaky_get", id=4))) == -32002  # probe still running
            release.set()
            await t.wait_sent(2)
            assert t.messages(1)[-1] == {"jsonrpc": "2.0", "id": 3, "result": "ok"}
            assert svc.bulkhead.state == CLOSED

        run(main)

    def test_timeouts_open_the_breaker(self):
        t, reg, d = make()
        svc = reg.service("slow", failure_threshold=2, cooldown=60, timeout=0.02)

        @reg.method("slow_hang")
        async def hang():
            await asyncio.sleep(60)

        async def main():
            for i in range(2):
                d.on_message(1, orjson.dumps(req("slow_hang", id=i)))
            await t.wait_sent(2)
            assert {m["error"]["code"] for m in t.messages(1)} == {-32001}
            assert svc.bulkhead.state == OPEN
            assert code_of(send(d, req("slow_hang", id=9))) == -32002
            await t.wait_for(lambda: t.in_flight() == 0)

        run(main)


class TestTimeouts:
    def test_hanging_namespace_times_out_while_healthy_calls_complete(self):
        t, reg, d = make(Limits(request_timeout=0.1))

        @reg.method("hang_forever")
        async def forever():
            await asyncio.sleep(3600)

        @reg.method("good_echo")
        async def echo(x):
            await asyncio.sleep(0)
            return x

        async def main():
            loop = asyncio.get_running_loop()
            started = loop.time()
            for i in range(5):
                assert d.on_message(1, orjson.dumps(req("hang_forever", id=f"h{i}"))) is None
            latencies = []
            for i in range(20):
                t0 = loop.time()
                d.on_message(2, orjson.dumps(req("good_echo", [i], id=i)))
                await t.wait_sent(i + 1, cid=2)
                latencies.append(loop.time() - t0)
            assert [m["result"] for m in t.messages(2)] == list(range(20))
            assert t.messages(1) == []  # the hung calls are still running
            print(f"healthy latency max {max(latencies) * 1e3:.2f} ms while 5 calls hang")
            await t.wait_sent(5, cid=1)
            assert [m["error"] for m in t.messages(1)] == [{"code": -32001, "message": "request timed out"}] * 5
            assert loop.time() - started < 5  # bounded: the timeout fired
            assert t.in_flight() == 0 and reg.get_service("hang").bulkhead.active == 0

        run(main)

    def test_service_timeout_overrides_the_default(self):
        t, reg, d = make(Limits(request_timeout=60))
        reg.service("quick", timeout=0.02)

        @reg.method("quick_hang")
        async def hang():
            await asyncio.sleep(60)

        async def main():
            d.on_message(1, orjson.dumps(req("quick_hang", id=1)))
            await t.wait_sent(1)
            assert code_of(t.messages(1)[0]) == -32001

        run(main)

    def test_no_timeout(self):
        t, reg, d = make(Limits(request_timeout=0.01))
        reg.service("long", timeout=None)

        @reg.method("long_wait")
        async def wait():
            await asyncio.sleep(0.05)
            return "done"

        async def main():
            d.on_message(1, orjson.dumps(req("long_wait", id=1)))
            await t.wait_sent(1)
            assert t.messages(1)[0]["result"] == "done"

        run(main)

    def test_handlers_own_timeout_error_is_internal(self):
        t, reg, d = make(Limits(request_timeout=10))

        @reg.method("t_own")
        async def own():
            raise TimeoutError("backend")

        async def main():
            d.on_message(1, orjson.dumps(req("t_own", id=1)))
            await t.wait_sent(1)
            assert code_of(t.messages(1)[0]) == -32603

        run(main)


class TestSaturation:
    def test_saturated_namespace_answers_busy_at_once(self):
        t, reg, d = make(Limits(request_timeout=None))
        reg.service("full", max_concurrency=2)

        async def main():
            gate = asyncio.Event()

            @reg.method("full_wait")
            async def wait():
                await gate.wait()
                return "released"

            @reg.method("good_echo")
            async def echo(x):
                return x

            assert d.on_message(1, orjson.dumps(req("full_wait", id=1))) is None
            assert d.on_message(1, orjson.dumps(req("full_wait", id=2))) is None
            reply = send(d, req("full_wait", id=3))  # answered now, not queued
            assert reply == {"jsonrpc": "2.0", "id": 3, "error": {"code": -32003, "message": "service busy"}}
            for i in range(10):
                d.on_message(2, orjson.dumps(req("good_echo", [i], id=i)))
            await t.wait_sent(10, cid=2)
            assert [m["result"] for m in t.messages(2)] == list(range(10))
            gate.set()
            await t.wait_sent(2, cid=1)
            bh = reg.get_service("full").bulkhead
            await t.wait_for(lambda: bh.active == 0)
            assert d.on_message(1, orjson.dumps(req("full_wait", id=4))) is None  # slots free again
            await t.wait_sent(3, cid=1)
            assert [m["result"] for m in t.messages(1)] == ["released"] * 3
            assert bh.stats()["busy"] == 1

        run(main)

    def test_busy_inside_a_batch(self):
        t, reg, d = make(Limits(request_timeout=0.05))
        reg.service("one", max_concurrency=1)

        @reg.method("one_hang")
        async def hang():
            await asyncio.sleep(60)

        async def main():
            d.on_message(1, orjson.dumps([req("one_hang", id=1), req("one_hang", id=2)]))
            await t.wait_sent(1)
            (reply,) = t.messages(1)
            assert [(r["id"], r["error"]["code"]) for r in reply] == [(1, -32001), (2, -32003)]

        run(main)


class TestThreaded:
    def test_blocking_handler_does_not_block_the_loop(self):
        t, reg, d = make()
        reg.service("db", threaded=True)
        release = threading.Event()
        threads = []

        @reg.method("db_query")
        def query(x: int):
            threads.append(threading.get_ident())
            assert release.wait(5)
            return x + 1

        @reg.method("good_echo")
        async def echo(x):
            return x

        async def main():
            assert d.on_message(1, orjson.dumps(req("db_query", [41], id=1))) is None
            ticks = 0
            for _ in range(5):
                await asyncio.sleep(0.001)  # the loop runs while the thread blocks
                ticks += 1
            for i in range(5):
                d.on_message(2, orjson.dumps(req("good_echo", [i], id=i)))
            await t.wait_sent(5, cid=2)
            assert ticks == 5 and t.messages(1) == []
            release.set()
            await t.wait_sent(1, cid=1)
            assert t.messages(1) == [{"jsonrpc": "2.0", "id": 1, "result": 42}]
            assert threads and threads[0] != threading.get_ident()
            await t.wait_for(lambda: reg.get_service("db").bulkhead.active == 0)
            assert t.begun[1] == t.ended[1] == 1

        try:
            run(main)
        finally:
            release.set()
            reg.close()

    def test_threaded_timeout_keeps_the_slot_until_the_thread_returns(self):
        t, reg, d = make()
        reg.service("db", threaded=True, max_concurrency=1, timeout=0.05)
        release = threading.Event()

        @reg.method("db_stuck")
        def stuck():
            release.wait(5)
            return "late"

        async def main():
            d.on_message(1, orjson.dumps(req("db_stuck", id=1)))
            await t.wait_sent(1)
            assert code_of(t.messages(1)[0]) == -32001
            bh = reg.get_service("db").bulkhead
            assert bh.active == 1  # the thread still runs
            assert code_of(send(d, req("db_stuck", id=2))) == -32003
            release.set()
            await t.wait_for(lambda: bh.active == 0)
            assert d.on_message(1, orjson.dumps(req("db_stuck", id=3))) is None
            await t.wait_sent(2)
            assert t.messages(1)[-1] == {"jsonrpc": "2.0", "id": 3, "result": "late"}

        try:
            run(main)
        finally:
            release.set()
            reg.close()

    def test_threaded_errors_and_context(self, caplog):
        class Transport(FakeTransport):
            def peer(self, cid):
                self.peer_thread = threading.get_ident()
                return super().peer(cid)

        t = Transport()
        reg = Registry()
        d = Dispatcher(t, registry=reg)
        reg.service("db", threaded=True)

        @reg.method("db_who")
        def who(ctx: Context):
            return [ctx.cid, list(ctx.peer)]

        @reg.method("db_fail")
        def fail():
            raise ValueError("in thread")

        @reg.method("db_app")
        def app():
            raise RPCError(-32050, "app")

        async def main():
            d.on_message(4, orjson.dumps(req("db_who", id=1)))
            d.on_message(4, orjson.dumps(req("db_fail", id=2)))
            d.on_message(4, orjson.dumps(req("db_app", id=3)))
            await t.wait_sent(3)
            replies = {m["id"]: m for m in t.messages(4)}
            assert replies[1]["result"] == [4, ["127.0.0.1", 40004]]
            assert replies[2]["error"]["code"] == -32603
            assert replies[3]["error"] == {"code": -32050, "message": "app"}
            assert t.peer_thread == threading.get_ident()  # read on the loop, not in the thread
            await t.wait_for(lambda: t.in_flight() == 0)

        try:
            run(main)
        finally:
            reg.close()
        assert "in thread" in caplog.text

    def test_threaded_bad_params_answered_at_once(self):
        t, reg, d = make()
        reg.service("db", threaded=True)
        reg.add("db_get", lambda key: key)
        try:
            assert code_of(send(d, req("db_get", [1, 2], id=1))) == -32602
            assert reg.get_service("db").bulkhead.active == 0
        finally:
            reg.close()
