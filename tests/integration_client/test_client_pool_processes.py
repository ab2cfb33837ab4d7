"""ClientPool with endpoints in real processes (``node.py``), one SIGKILLed mid-run.

Every call is counted: each gets exactly one outcome (a result, or ``ConnectionLost``
for a non-idempotent call that was in flight on the killed node); idempotent calls all
succeed on the survivor; no non-idempotent call ran twice (each node logs every
``record`` token when it starts running it). Subscriptions get a ``Gap`` and then carry
on from the other endpoint, or from the same one once it is restarted.
"""
from __future__ import annotations

import asyncio
import collections

import pytest

from fastrpc import ClientPool, ConnectionLost, Gap, NoHealthyEndpoint

WAIT = 10.0


def test_kill_an_endpoint_mid_run(crun, nodes):
    async def body():
        a = await nodes("a")
        b = await nodes("b")
        async with ClientPool([a.url, b.url], size=2, idempotent={"slow_echo"}, backoff_initial=0.05) as pool:
            loop = asyncio.get_running_loop()
            calls: list[tuple[str, str, asyncio.Future]] = []

            async def issue():
                for i in range(400):
                    if i % 2:
                        calls.append(("slow_echo", str(i), asyncio.ensure_future(pool.call("slow_echo", i, 0.05))))
                    else:
                        token = f"t{i}"
                        calls.append(("record", token, asyncio.ensure_future(pool.call("record", token, 0.05))))
                    await asyncio.sleep(0.002)

            issuing = asyncio.ensure_future(issue())
            await asyncio.sleep(0.4)
            a.kill()  # mid-run: ~20 calls in flight on each node
            t_kill = loop.time()
            await asyncio.wait_for(issuing, WAIT)
            outcomes = await asyncio.wait_for(asyncio.gather(*(f for _, _, f in calls), return_exceptions=True), WAIT)

            assert len(outcomes) == 400
            kinds = collections.Counter()
            executed = collections.Counter(a.tokens() + b.tokens())
            for (method, arg, _), o in zip(calls, outcomes):
                if method == "slow_echo":
                    assert isinstance(o, list) and o[1] == int(arg), f"idempotent call {arg}: {o!r}"
                    kinds["idempotent ok"] += 1
                elif isinstance(o, list):
                    assert o[1] == arg
                    assert executed[arg] == 1, f"{arg} answered, ran {executed[arg]} times"
                    kinds["record ok"] += 1
                else:
                    assert isinstance(o, ConnectionLost) and o.sent and o.code == 1006, repr(o)
                    assert executed[arg] <= 1
                    kinds["record lost"] += 1
            assert max(executed.values()) == 1, "a non-idempotent call ran twice"
            assert kinds["idempotent ok"] == 200
            assert kinds["record lost"] >= 1, kinds
            assert pool.counters["retries"] >= 1
            st = pool.stats()
            assert not st[a.url]["healthy"] and st[a.url]["connections"] == 0 and st[a.url]["failures"] >= 1
            assert st[b.url]["healthy"] and st[b.url]["connections"] == 2
            # After the kill, new calls all go to b.
            assert set(await asyncio.gather(*(pool.call("whoami") for _ in range(50)))) == {"b"}
            assert loop.time() - t_kill < WAIT

    crun(body())


def test_subscription_moves_to_the_survivor(crun, nodes):
    async def body():
        a = await nodes("a")
        b = await nodes("b")
        async with ClientPool([a.url, b.url], size=1, backoff_initial=0.05) as pool:
            sub = await pool.subscribe("feed", "ticks")
            first, other = (a, b) if sub.endpoint == a.url else (b, a)
            items = []
            async for item in sub:
                items.append(item)
                if len(items) == 5:
                    first.kill()
                if isinstance(item, Gap):
                    break
            gap = items[-1]
            assert gap.endpoint == first.url and isinstance(gap.error, ConnectionLost)
            before = items[:-1]
            assert {x["node"] for x in before} == {first.name}
            ns = [x["n"] for x in before]
            assert ns == list(range(ns[0], ns[0] + len(ns))), "nothing missing before the gap"
            after = [await asyncio.wait_for(sub.__anext__(), WAIT) for _ in range(10)]
            assert {x["node"] for x in after} == {other.name}
            ns = [x["n"] for x in after]
            assert ns == list(range(ns[0], ns[0] + 10))
            assert sub.endpoint == other.url
            await sub.aclose()

    crun(body())


def test_restarted_endpoint_is_reconnected(crun, nodes):
    async def body():
        a = await nodes("a")
        async with ClientPool(a.url, size=2, acquire_timeout=0.5, backoff_initial=0.05, backoff_max=0.2) as pool:
            assert await pool.call("whoami") == "a"
            sub = await pool.subscribe("feed", "ticks")
            assert (await asyncio.wait_for(sub.__anext__(), WAIT))["node"] == "a"
            a.kill()
            item = await asyncio.wait_for(sub.__anext__(), WAIT)
            while not isinstance(item, Gap):  # notifications received before the kill
                item = await asyncio.wait_for(sub.__anext__(), WAIT)
            assert item.endpoint == a.url
            with pytest.raises(NoHealthyEndpoint):
                await pool.call("whoami")
            st = pool.stats()[a.url]
            assert not st["healthy"] and st["failures"] >= 2 and "refused" in st["last_error"]
            nxt = asyncio.ensure_future(sub.__anext__())  # waits for the endpoint
            await asyncio.sleep(0.3)
            assert not nxt.done()
            await a.start()  # the same port
            first_after = await asyncio.wait_for(nxt, WAIT)
            assert first_after["node"] == "a" and first_after["n"] < 100  # the new process
            assert await pool.call("whoami") == "a"
            st = pool.stats()[a.url]
            assert st["healthy"] and st["failures"] == 0 and st["connects"] >= 3
            await sub.aclose()

    crun(body())
