"""Issue 10: every soft limit of a node, driven past, forwards to the peers.

Three real node processes (``node.py``) that overflow ``work_*`` to each other. For
each node-wide limit (``max_in_flight``, the memory soft limit) and for the breaker of
a namespace, a test drives node ``a`` past it and shows, on the wire:

* the calls are answered by a peer (``work_do`` answers ``[node, token]``), and the
  token is in exactly that node's log once (ran once, where it says);
* each request id gets exactly one reply (``Caller`` keeps every reply it reads, and
  a second one for an id fails the test);
* ``a``'s ``/health`` says ``"busy": true`` (and ``namespaces_busy`` for the breaker)
  while over the limit, ``false`` after, and its ``forwarded`` counter moved;
* back under the limit, calls run on ``a`` again;
* with the peers over their limits as well, the client gets ``-32005 "server busy"``
  at once (well before any running call ends) and ``refused_busy`` moves.

(The busy-namespace limit, ``max_concurrency``, is ``test_overflow.py``'s.) Calls go
over a raw WebSocket (``rawclient.RawWS``), so nothing between the wire and the test
can hide or merge a duplicate reply.
"""
from __future__ import annotations

import asyncio
import collections
import json
from typing import Any

from rawclient import OP_BINARY, RawWS, http_request

from fastrpc._core import encode_frame
from fastrpc.cluster import HOP_HEADER
from fastrpc.errors import INTERNAL_ERROR, SERVER_BUSY

#: Bound of any one wait (seconds).
WAIT = 10.0
#: A refusal "at once": well under the shortest call still running when it is made.
AT_ONCE = 0.25
#: The nodes poll their peers' /health every 0.1 s: wait this long to see a change.
POLLED = 0.35

HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


async def health(node: Any) -> tuple[int, dict[str, Any]]:
    r = await http_request(node.port, HEALTH)
    return r.status, json.loads(r.body)


async def wait_busy(node: Any, busy: bool, timeout: float = WAIT) -> dict[str, Any]:
    """Poll ``node``'s /health until ``busy`` is ``busy``; its body."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        _, body = await health(node)
        if body["busy"] is busy:
            return body
        assert loop.time() < deadline, f"{node.name} /health busy stayed {body['busy']}: {body}"
        await asyncio.sleep(0.02)


class Caller:
    """JSON-RPC calls on one raw WebSocket. Every reply read is kept under its id;
    ``check_once()`` fails unless each id sent got exactly one."""

    def __init__(self, ws: RawWS) -> None:
        self.ws = ws
        self.n = 0
        self.sent: dict[int, float] = {}
        self.replies: dict[int, list[tuple[dict[str, Any], float]]] = collections.defaultdict(list)

    @classmethod
    async def open(cls, node: Any) -> "Caller":
        return cls(await RawWS.open(node.port))

    async def send(self, method: str, *params: Any) -> int:
        self.n += 1
        rid = self.n
        self.sent[rid] = asyncio.get_running_loop().time()
        await self.ws.send_text(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params}))
        return rid

    async def wait(self, ids: list[int], timeout: float = WAIT) -> list[tuple[dict[str, Any], float]]:
        """The first reply to each of ``ids`` and its seconds after the send."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(i not in self.replies for i in ids):
            _, payload = await self.ws.recv(max(0.0, deadline - loop.time()))
            msg = json.loads(payload)
            self.replies[msg["id"]].append((msg, loop.time() - self.sent[msg["id"]]))
        return [self.replies[i][0] for i in ids]

    async def calls(self, method: str, args: list[tuple[Any, ...]]) -> list[tuple[dict[str, Any], float]]:
        ids = [await self.send(method, *a) for a in args]
        return await self.wait(ids)

    async def close(self) -> None:
        await self.ws.expect_silence(0.1)  # no late second reply
        self.ws.close()
        self.check_once()

    def check_once(self) -> None:
        assert set(self.replies) == set(self.sent), (sorted(self.sent), sorted(self.replies))
        twice = {i: r for i, r in self.replies.items() if len(r) != 1}
        assert not twice, f"ids answered more than once: {twice}"


def ran_on(nodes: list[Any]) -> dict[str, list[str]]:
    ran: dict[str, list[str]] = collections.defaultdict(list)
    for n in nodes:
        for t in n.tokens():
            ran[t].append(n.name)
    return ran


def answered_by(replies: list[tuple[dict[str, Any], float]], tokens: list[str],
                nodes: list[Any]) -> collections.Counter[str]:
    """Each reply is ``[node, token]`` and the token ran once, on that node."""
    ran = ran_on(nodes)
    by: collections.Counter[str] = collections.Counter()
    for (msg, _), t in zip(replies, tokens):
        assert msg.get("result", [None, None])[1] == t, f"{t}: {msg}"
        who = msg["result"][0]
        assert ran[t] == [who], f"{t} answered by {who}, ran on {ran[t]}"
        by[who] += 1
    return by


def refused_at_once(replies: list[tuple[dict[str, Any], float]], tokens: list[str], nodes: list[Any]) -> None:
    ran = ran_on(nodes)
    for (msg, took), t in zip(replies, tokens):
        assert msg.get("error") == {"code": SERVER_BUSY, "message": "server busy"}, f"{t}: {msg}"
        assert took < AT_ONCE, f"{t} refused after {took:.3f} s"
        assert ran[t] == [], f"{t} refused but ran on {ran[t]}"


async def hop_caller(node: Any) -> Caller:
    """A connection with the hop header: its calls are forwarded ones, as a peer sends
    them (open it before the node is over its memory soft limit: upgrades get 503)."""
    return Caller(await RawWS.open(node.port, extra=((HOP_HEADER, "1"),)))


async def hop_refused(node: Any, hop: Caller, nodes: list[Any], token: str) -> None:
    """A forwarded call to ``node`` over its limit (as a peer whose view of ``node``'s
    /health is out of date would send it): -32005 at once, counted in ``node``'s
    ``refused_busy``, never run."""
    _, before = await health(node)
    refused_at_once(await hop.calls("work_do", [(token, 0.0)]), [token], nodes)
    _, after = await health(node)
    assert after["refused_busy"] == before["refused_busy"] + 1, (before, after)


async def settle() -> None:
    # The pools connect with backoff while later nodes start, and the first /health
    # polls must have been read: a call that does not overflow proves nothing.
    await asyncio.sleep(0.6)


# --- (a) max_in_flight ---------------------------------------------------------------------


def test_max_in_flight_overflows_to_peers(crun, cluster):
    """``a`` allows 3 calls in flight (``forward(max_in_flight=3)``), ``b`` and ``c`` 4:
    with 3 long calls running on ``a`` the next ones go to ``b``/``c``; when they end
    ``a`` runs calls again; with ``b`` and ``c`` at 4 as well, ``a`` answers -32005."""
    async def body():
        a, b, c = await cluster(["a", "b", "c"], args={
            "a": ["--max-in-flight", "3"], "b": ["--max-in-flight", "4"], "c": ["--max-in-flight", "4"]})
        nodes = [a, b, c]
        await settle()
        ca = await Caller.open(a)
        hb = await hop_caller(b)
        _, h0 = await health(a)
        assert h0["busy"] is False and h0["forwarded"] == 0, h0

        # Past the limit: 3 running, the 4th and later are forwarded.
        hold = [await ca.send("work_do", f"hold{i}", 0.8) for i in range(3)]
        h = await wait_busy(a, True)
        assert h["calls_in_flight"] == 3 and h["namespaces_busy"] == [], h
        tokens = [f"t{i}" for i in range(4)]
        by = answered_by(await ca.calls("work_do", [(t, 0.05) for t in tokens]), tokens, nodes)
        assert by["a"] == 0 and by["b"] + by["c"] == 4, by
        _, h = await health(a)
        assert h["busy"] is True and h["forwarded"] == 4, h
        assert answered_by(await ca.wait(hold), [f"hold{i}" for i in range(3)], nodes) == {"a": 3}

        # Under it again: not busy, the next call runs here.
        h = await wait_busy(a, False)
        assert h["forwarded"] == 4 and h["calls_in_flight"] == 0, h
        assert answered_by(await ca.calls("work_do", [("back", 0.0)]), ["back"], nodes) == {"a": 1}

        # Every node past its limit: refused at once, nothing runs.
        cb, cc = await Caller.open(b), await Caller.open(c)
        held = [(ca, [await ca.send("work_do", f"ha{i}", 1.0) for i in range(3)])]
        held += [(x, [await x.send("work_do", f"h{x_name}{i}", 1.0) for i in range(4)])
                 for x, x_name in ((cb, "b"), (cc, "c"))]
        for n in nodes:
            await wait_busy(n, True)
        await asyncio.sleep(POLLED)  # a has read its peers' busy /health
        tokens = [f"busy{i}" for i in range(5)]
        refused_at_once(await ca.calls("work_do", [(t, 0.0) for t in tokens]), tokens, nodes)
        _, h = await health(a)
        assert h["refused_busy"] == 5 and h["forwarded"] == 4, h
        await hop_refused(b, hb, nodes, "hop-b")  # b full: a forwarded call is not run there
        for x, ids in held:
            for msg, _ in await x.wait(ids):
                assert "result" in msg, msg
        for x in (ca, cb, cc, hb):
            await x.close()

    crun(body(), 60)


# --- (b) the memory soft limit --------------------------------------------------------------

#: Every node: memory_limit 4 MiB, soft ratio 1/8, so the soft limit is 512 KiB, far
#: above an idle node (a few connection slots) and under the hard ceiling with room.
MEMORY = ["--memory-limit", str(4 << 20), "--memory-soft-ratio", "0.125"]
#: A partial 60 KiB message borrows a 64 KiB block (sized from its length field) plus
#: its parser state, until it completes or its connection closes: 8 of them pass 512 KiB.
PARTIAL = encode_frame(OP_BINARY, b"m" * 60 * 1024, mask=True)[:100]
HOLDERS = 8


async def fill_memory(node: Any) -> list[RawWS]:
    """Drive ``node`` past its memory soft limit with held partial messages (the
    connections are opened first: over the soft limit upgrades get 503)."""
    holders = [await RawWS.open(node.port) for _ in range(HOLDERS)]
    for ws in holders:
        await ws.send_raw(PARTIAL)
    return holders


def test_memory_soft_limit_overflows_to_peers(crun, cluster):
    async def body():
        a, b, c = await cluster(["a", "b", "c"], args=MEMORY)
        nodes = [a, b, c]
        await settle()
        ca = await Caller.open(a)
        hb = await hop_caller(b)
        status, h = await health(a)
        assert status == 200 and h["busy"] is False and h["memory_bytes"] < 64 * 1024, h

        holders = await fill_memory(a)
        h = await wait_busy(a, True)
        status, h = await health(a)
        assert status == 503 and h["status"] == "over memory limit", (status, h)
        assert h["memory_bytes"] > h["memory_limit"] * 0.125 and h["namespaces_busy"] == [], h
        tokens = [f"t{i}" for i in range(4)]
        by = answered_by(await ca.calls("work_do", [(t, 0.05) for t in tokens]), tokens, nodes)
        assert by["a"] == 0 and by["b"] + by["c"] == 4, by
        _, h = await health(a)
        assert h["forwarded"] == 4, h

        # The partial messages' connections close: their blocks go back, a is under it.
        for ws in holders:
            ws.close()
        h = await wait_busy(a, False)
        status, h = await health(a)
        assert status == 200 and h["status"] == "ok" and h["forwarded"] == 4, (status, h)
        assert answered_by(await ca.calls("work_do", [("back", 0.0)]), ["back"], nodes) == {"a": 1}

        # Every node past its memory soft limit: refused at once, nothing runs.
        holders = [ws for n in nodes for ws in await fill_memory(n)]
        for n in nodes:
            await wait_busy(n, True)
        await asyncio.sleep(POLLED)
        tokens = [f"busy{i}" for i in range(4)]
        refused_at_once(await ca.calls("work_do", [(t, 0.0) for t in tokens]), tokens, nodes)
        _, h = await health(a)
        assert h["refused_busy"] == 4 and h["forwarded"] == 4, h
        await hop_refused(b, hb, nodes, "hop-b")
        for ws in holders:
            ws.close()
        for n in nodes:
            await wait_busy(n, False)
        await ca.close()
        await hb.close()

    crun(body(), 60)


# --- (d) an open breaker -------------------------------------------------------------------

#: Every node: the work breaker opens after 3 consecutive failures, for 1 s.
BREAKER = ["--failure-threshold", "3", "--cooldown", "1.0"]
COOLDOWN = 1.0


async def open_breaker(caller: Caller, prefix: str) -> float:
    """3 failing work calls: the breaker opens. Returns when (loop time)."""
    for msg, _ in await caller.calls("work_fail", [(f"{prefix}{i}",) for i in range(3)]):
        assert msg["error"]["code"] == INTERNAL_ERROR, msg
    return asyncio.get_running_loop().time()


def test_open_breaker_overflows_to_peers(crun, cluster):
    async def body():
        a, b, c = await cluster(["a", "b", "c"], args=BREAKER)
        nodes = [a, b, c]
        loop = asyncio.get_running_loop()
        await settle()
        ca = await Caller.open(a)
        hb = await hop_caller(b)
        _, h = await health(a)
        assert h["busy"] is False and h["namespaces_busy"] == [], h

        opened = await open_breaker(ca, "fail")
        assert ran_on(nodes) == {f"fail{i}": ["a"] for i in range(3)}  # failed here, not forwarded
        _, h = await health(a)
        assert h["busy"] is True and h["namespaces_busy"] == ["work"] and h["forwarded"] == 0, h
        tokens = [f"t{i}" for i in range(4)]
        by = answered_by(await ca.calls("work_do", [(t, 0.05) for t in tokens]), tokens, nodes)
        assert by["a"] == 0 and by["b"] + by["c"] == 4, by
        _, h = await health(a)
        assert h["forwarded"] == 4 and h["namespaces_busy"] == ["work"], h
        assert loop.time() < opened + COOLDOWN, "too slow: the breaker closed before the checks"

        # After the cool-down: not busy; the next call is the half-open probe and runs
        # here; calls made while it runs are forwarded (the namespace would refuse them:
        # one probe); once it succeeded the breaker is closed and calls run here again.
        await asyncio.sleep(max(0.0, opened + COOLDOWN + 0.05 - loop.time()))
        h = await wait_busy(a, False)
        assert h["namespaces_busy"] == [], h
        probe = await ca.send("work_do", "probe", 0.3)
        tokens = [f"p{i}" for i in range(3)]
        by = answered_by(await ca.calls("work_do", [(t, 0.0) for t in tokens]), tokens, nodes)
        assert by["a"] == 0 and by["b"] + by["c"] == 3, by
        assert answered_by(await ca.wait([probe]), ["probe"], nodes) == {"a": 1}
        h = await wait_busy(a, False)
        assert h["forwarded"] == 7, h
        tokens = [f"back{i}" for i in range(3)]
        assert answered_by(await ca.calls("work_do", [(t, 0.0) for t in tokens]), tokens, nodes) == {"a": 3}

        # Every node's breaker open: refused at once, nothing runs.
        cb, cc = await Caller.open(b), await Caller.open(c)
        opened = min([await open_breaker(x, f"fail{x_name}") for x, x_name in ((ca, "a"), (cb, "b"), (cc, "c"))])
        for n in nodes:
            _, h = await health(n)
            assert h["busy"] is True and h["namespaces_busy"] == ["work"], (n.name, h)
        await asyncio.sleep(POLLED)
        tokens = [f"busy{i}" for i in range(4)]
        refused_at_once(await ca.calls("work_do", [(t, 0.0) for t in tokens]), tokens, nodes)
        _, h = await health(a)
        assert h["refused_busy"] == 4 and h["forwarded"] == 7, h
        await hop_refused(b, hb, nodes, "hop-b")
        assert loop.time() < opened + COOLDOWN, "too slow: the breakers closed before the checks"
        for x in (ca, cb, cc, hb):
            await x.close()

    crun(body(), 60)
