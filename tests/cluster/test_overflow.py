"""Overflow forwarding between three real node processes (``node.py``).

Every call is counted: each gets exactly one answer, a result or the documented
``-32005 "server busy"`` (``-32007`` for a non-idempotent call in flight on a node
killed mid-run); a result names the node that ran it, and that node's log holds the
token once: nothing lost, nothing run twice. The request counters (issue 11) of the
nodes agree with what the client saw: per method on the node the client called (its
local and forwarded calls under one name), per upstream on its forwarder, and each
forwarded call once more on the peer that ran or refused it.
"""
from __future__ import annotations

import asyncio
import collections

from fastrpc import Client, RPCError
from fastrpc.errors import SERVER_BUSY, UPSTREAM_LOST

WAIT = 20.0


def _executed(nodes):
    ran = collections.defaultdict(list)
    for n in nodes:
        for t in n.tokens():
            ran[t].append(n.name)
    return ran


async def _stats(node):
    """The node's request counters (``node.py``'s ``stats`` method)."""
    async with Client(node.url) as c:
        return await c.call("stats")


def _peer_url(node):
    return f"ws://127.0.0.1:{node.port}/"  # as node.py's pool has it


async def _settle(nodes, client):
    # Every node has connected to its peers (the pools retry with backoff while the
    # later nodes start): a call that does not overflow proves nothing, so wait for
    # the peers' health to be read as well.
    await asyncio.sleep(0.6)


def test_overflow_goes_to_the_peers(crun, cluster):
    async def body():
        a, b, c = await cluster(["a", "b", "c"], concurrency={"a": 4})
        async with Client(a.url) as client:
            await _settle([a, b, c], client)
            tokens = [f"t{i}" for i in range(30)]
            outs = await asyncio.wait_for(asyncio.gather(
                *(client.call("work_do", t, 0.5) for t in tokens), return_exceptions=True), WAIT)
        ran = _executed([a, b, c])
        by = collections.Counter()
        for t, o in zip(tokens, outs):
            assert isinstance(o, list) and o[1] == t, f"{t}: {o!r}"
            assert ran[t] == [o[0]], f"{t} answered by {o[0]}, ran on {ran[t]}"
            by[o[0]] += 1
        assert by["a"] == 4, by  # a ran what its namespace holds, the rest went to b and c
        assert by["b"] > 0 and by["c"] > 0 and by["b"] + by["c"] == 26, by
        sa, sb, sc = [await _stats(n) for n in (a, b, c)]
        work = sa["methods"]["work_do"]
        assert (work["success"], sum(work["buckets"])) == (30, 30), work  # local and forwarded
        assert work["sum"] >= 30 * 0.5
        zero = {"busy": 0, "lost": 0, "timeout": 0}
        assert sa["upstreams"] == {_peer_url(b): {"ok": by["b"], **zero}, _peer_url(c): {"ok": by["c"], **zero}}
        for node, s in ((b, sb), (c, sc)):
            assert s["methods"]["work_do"]["success"] == by[node.name]  # the hop ran here
            assert all(v == {"ok": 0, **zero} for v in s["upstreams"].values())  # never forwarded

    crun(body(), 60)


def test_every_peer_busy_answers_server_busy(crun, cluster):
    async def body():
        a, b, c = await cluster(["a", "b", "c"], concurrency={"a": 2, "b": 2, "c": 2})
        async with Client(a.url) as client:
            await _settle([a, b, c], client)
            tokens = [f"t{i}" for i in range(20)]
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            futs = [asyncio.ensure_future(client.call("work_do", t, 1.0)) for t in tokens]
            done, _ = await asyncio.wait(futs, timeout=0.5)
            busy_fast = [f for f in done if isinstance(f.exception(), RPCError)]
            outs = await asyncio.wait_for(asyncio.gather(*futs, return_exceptions=True), WAIT)
            assert loop.time() - t0 < 5
        ran = _executed([a, b, c])
        kinds = collections.Counter()
        for t, o in zip(tokens, outs):
            if isinstance(o, list):
                assert ran[t] == [o[0]]
                kinds[o[0]] += 1
            else:
                assert isinstance(o, RPCError) and o.code == SERVER_BUSY and o.message == "server busy", repr(o)
                assert ran[t] == [], f"{t} refused but ran on {ran[t]}"
                kinds["busy"] += 1
        assert kinds == {"a": 2, "b": 2, "c": 2, "busy": 14}, kinds
        assert len(busy_fast) == 14  # refused at once, not after the 1 s calls
        sa, sb, sc = [await _stats(n) for n in (a, b, c)]
        work = sa["methods"]["work_do"]
        # refused here or by a peer, the client's -32005 counts as refused on a
        assert (work["success"], work["refused"], sum(work["buckets"])) == (6, 14, 6), work
        up = sa["upstreams"]
        refused_by_peers = 0
        for node, s in ((b, sb), (c, sc)):
            peer_work = s["methods"]["work_do"]
            assert peer_work["success"] == 2, peer_work
            # each forwarded call reached the peer once: it ran or was refused there
            assert up[_peer_url(node)]["ok"] == peer_work["success"] + peer_work["refused"], (up, peer_work)
            refused_by_peers += peer_work["refused"]
        assert refused_by_peers + up.get("", {}).get("busy", 0) == 14, up

    crun(body(), 60)


def test_a_peer_killed_mid_run_calls_reroute(crun, cluster):
    async def body():
        a, b, c = await cluster(["a", "b", "c"], concurrency={"a": 2})
        async with Client(a.url) as client:
            await _settle([a, b, c], client)
            loop = asyncio.get_running_loop()
            calls: list[tuple[str, str, float, asyncio.Future]] = []

            async def issue():
                for i in range(300):
                    method = "work_read" if i % 2 else "work_do"
                    t = f"t{i}"
                    calls.append((method, t, loop.time(), asyncio.ensure_future(client.call(method, t, 0.1))))
                    await asyncio.sleep(0.005)

            issuing = asyncio.ensure_future(issue())
            await asyncio.sleep(0.6)
            b.kill()
            t_kill = loop.time()
            await asyncio.wait_for(issuing, WAIT)
            outs = await asyncio.wait_for(asyncio.gather(*(f for *_, f in calls), return_exceptions=True), WAIT)
        ran = _executed([a, b, c])
        kinds = collections.Counter()
        after = collections.Counter()
        for (method, t, at, _), o in zip(calls, outs):
            if isinstance(o, list):
                assert o[1] == t and o[0] in ran[t], f"{t}: answered by {o[0]}, ran on {ran[t]}"
                if method == "work_do":
                    assert ran[t] == [o[0]], f"non-idempotent {t} ran on {ran[t]}"
                kinds[f"{method} ok"] += 1
                if at > t_kill + 0.5:
                    after[o[0]] += 1
            elif isinstance(o, RPCError) and o.code == UPSTREAM_LOST:
                assert method == "work_do" and ran[t] == ["b"], f"{t}: {o!r} ran on {ran[t]}"
                kinds["lost with b"] += 1
            else:
                assert isinstance(o, RPCError) and o.code == SERVER_BUSY, f"{t}: {o!r}"
                assert ran[t] == []
                kinds["busy"] += 1
        assert sum(kinds.values()) == 300, kinds
        assert "b" in {n for names in ran.values() for n in names}  # b took calls before it died
        assert after["c"] > 0 and after["b"] == 0, after  # and c took them after
        sa = await _stats(a)
        assert sa["upstreams"][_peer_url(b)]["lost"] == kinds["lost with b"], sa["upstreams"]
        assert sa["methods"]["work_do"]["failure"] == kinds["lost with b"]  # -32007: no answer came
        assert sa["methods"]["work_do"]["success"] + sa["methods"]["work_read"]["success"] == \
            kinds["work_do ok"] + kinds["work_read ok"]
        # every call a did not run itself got exactly one upstream outcome
        forwarded = sum(sum(u.values()) for u in sa["upstreams"].values())
        ran_on_a = sum(1 for names in ran.values() if "a" in names)
        assert forwarded + ran_on_a == 300, (sa["upstreams"], ran_on_a)
        print(kinds, after)

    crun(body(), 90)
