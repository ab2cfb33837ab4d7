"""ClientPool against fastrpc servers in the test's own process (asyncio and uvloop):
least-in-flight selection, stats, retries of idempotent calls only, resending calls
that never left, no healthy endpoint, subscriptions across a dropped connection,
notifications, close. (Real processes killed mid-run: ``test_client_pool_processes.py``.)
"""
from __future__ import annotations

import asyncio
import socket

import pytest
from helpers import TINY, wait_until

from fastrpc import ClientPool, ConnectionLost, Gap, NoHealthyEndpoint, RPCError, Server

WAIT = 5.0


def build(name: str) -> Server:
    srv = Server(limits=TINY)
    srv.topic("feed", "ticks")
    srv._test_notes = []  # type: ignore[attr-defined]

    @srv.method("whoami")
    def whoami() -> str:
        return name

    @srv.method("sleep")
    async def sleep(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return name

    @srv.method("sleep_id")
    async def sleep_id(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return name

    @srv.method("note")
    def note(x):
        srv._test_notes.append(x)  # type: ignore[attr-defined]

    @srv.method("fail")
    def fail():
        raise RPCError(-32011, "no")

    return srv


def url(srv: Server) -> str:
    return f"ws://127.0.0.1:{srv.port}/"


def test_least_in_flight_and_stats(crun, rpc_server):
    async def body():
        a = await rpc_server(build("a"))
        b = await rpc_server(build("b"))
        async with ClientPool([url(a), url(b)], size=2) as pool:
            st = pool.stats()
            assert set(st) == {url(a), url(b)}
            for s in st.values():
                assert s["healthy"] and s["connections"] == 2 and s["in_flight"] == 0 and s["failures"] == 0
            slow = [asyncio.ensure_future(pool.call("sleep", 0.3)) for _ in range(4)]
            await asyncio.sleep(0.05)
            # four calls on four connections: one each
            assert sorted(c.in_flight for _, c in pool._conns) == [1, 1, 1, 1]
            assert [s["in_flight"] for s in pool.stats().values()] == [2, 2]
            names = await asyncio.gather(*slow)
            assert sorted(names) == ["a", "a", "b", "b"]
            # Many quick calls spread over both endpoints.
            names = await asyncio.gather(*(pool.call("whoami") for _ in range(200)))
            assert {"a", "b"} == set(names)
            with pytest.raises(RPCError):
                await pool.call("fail")
            await pool.notify("note", 1)
            await wait_until(lambda: a._test_notes + b._test_notes == [1], WAIT, "the notification")

    crun(body())


def test_dropped_connections_retry_idempotent_only(crun, rpc_server):
    async def body():
        a = await rpc_server(build("a"))
        b = await rpc_server(build("b"))
        async with ClientPool([url(a), url(b)], size=2, idempotent={"sleep_id"}) as pool:
            # Least in flight: two of each kind on each of the four connections.
            methods = ["sleep"] * 8 + ["sleep_id"] * 8
            calls = [asyncio.ensure_future(pool.call(m, 0.3)) for m in methods]
            await asyncio.sleep(0.1)
            assert sorted(c.in_flight for _, c in pool._conns) == [4, 4, 4, 4]
            assert a.reactor.inflight_total and b.reactor.inflight_total
            a.reactor.abort_all()  # every connection to a drops mid-call
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            lost = [o for o in outcomes if isinstance(o, ConnectionLost)]
            assert lost, "the non-idempotent calls on a were lost"
            assert len(lost) == 4, outcomes
            for method, o in zip(methods, outcomes):
                if method == "sleep_id":
                    assert o in ("a", "b"), o  # retried (on b, or on a once reconnected)
                else:
                    assert o in ("a", "b") or (isinstance(o, ConnectionLost) and o.sent and o.code == 1006), o
            assert pool.counters["retries"] >= 1
            st = pool.stats()[url(a)]
            assert st["total_failures"] >= 1
            await wait_until(lambda: pool.stats()[url(a)]["healthy"], WAIT, "a reconnected")
            assert pool.stats()[url(a)]["connections"] == 2

    crun(body())


def test_a_call_that_never_left_is_sent_elsewhere(crun, rpc_server):
    async def body():
        a = await rpc_server(build("a"))
        async with ClientPool(url(a), size=2) as pool:
            c1, c2 = [c for _, c in pool._conns]
            await c1.close()  # closed, but hand it out once anyway (a race with its close)
            real_pick = pool._pick
            picks = iter([c1])
            pool._pick = lambda avoid=None: next(picks, None) or real_pick(avoid)  # type: ignore[method-assign]
            assert await pool.call("whoami") == "a"
            assert pool.counters["resent_unsent"] == 1

    crun(body())


def test_no_healthy_endpoint(crun):
    async def body():
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{s.getsockname()[1]}/"
        s.close()
        async with ClientPool(dead, size=1, acquire_timeout=0.3, backoff_initial=0.05) as pool:
            with pytest.raises(NoHealthyEndpoint) as e:
                await pool.call("x")
            assert dead in str(e.value) and "refused" in str(e.value)
            st = pool.stats()[dead]
            assert not st["healthy"] and st["connections"] == 0 and st["failures"] >= 2
            with pytest.raises(NoHealthyEndpoint):
                await pool.notify("x")
        with pytest.raises(ValueError):
            ClientPool("wss://127.0.0.1/")
        with pytest.raises(RuntimeError):
            await ClientPool(dead).call("x")

    crun(body())


def test_subscription_gap_and_resubscribe(crun, rpc_server):
    async def body():
        a = await rpc_server(build("a"))
        b = await rpc_server(build("b"))

        async def publish():
            n = 0
            while True:
                a.publish("feed.ticks", ["a", n])
                b.publish("feed.ticks", ["b", n])
                n += 1
                await asyncio.sleep(0.005)

        pub = asyncio.ensure_future(publish())
        try:
            async with ClientPool([url(a), url(b)], size=1) as pool:
                sub = await pool.subscribe("feed", "ticks")
                first = sub.endpoint
                carrier = a if first == url(a) else b
                got = []
                async for item in sub:
                    got.append(item)
                    if len(got) == 5:
                        carrier.reactor.abort_all()
                    if isinstance(item, Gap):
                        break
                assert len(got) >= 6 and all(not isinstance(x, Gap) for x in got[:-1])
                gap = got[-1]
                assert gap.endpoint == first and isinstance(gap.error, ConnectionLost)
                # consecutive before the gap
                ns = [x[1] for x in got[:-1]]
                assert ns == list(range(ns[0], ns[0] + len(ns)))
                after = [await asyncio.wait_for(sub.__anext__(), WAIT) for _ in range(5)]
                assert all(not isinstance(x, Gap) for x in after) and sub.gaps == 1
                await sub.aclose()
                with pytest.raises(StopAsyncIteration):
                    await sub.__anext__()

                # Closing the pool ends a subscription and fails calls in flight.
                sub2 = pool.subscribe("feed", "ticks")
                assert not isinstance(await asyncio.wait_for(sub2.__anext__(), WAIT), Gap)
                call = asyncio.ensure_future(pool.call("sleep", 5))
                await asyncio.sleep(0.05)
                await pool.close()
                with pytest.raises(ConnectionLost):
                    await call
                rest = [x async for x in sub2]
                assert not any(isinstance(x, Gap) for x in rest)
                with pytest.raises(ConnectionLost) as e:
                    await pool.call("whoami")
                assert not e.value.sent
        finally:
            pub.cancel()

    crun(body())
