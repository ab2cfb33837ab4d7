"""Test doubles for the JSON-RPC layer: a Transport that records everything, no sockets.

``FakeTransport`` implements the ``fastrpc.dispatch.Transport`` protocol the server
implements. Every cid is connected unless ``disconnect(cid)`` was called. Output is
"read by the client" at once unless the cid is ``stall``-ed: then its queued bytes grow
with every message, which is how tests make a subscriber slow.
"""
from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, Callable

import orjson


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []  #: every message queued, in order
        self.send_many_calls: list[tuple[list[int], bytes, int]] = []
        self.closed: list[tuple[int, int, str]] = []
        self.begun: dict[int, int] = defaultdict(int)  #: begin() calls per cid
        self.ended: dict[int, int] = defaultdict(int)  #: end() calls per cid
        self.gone: set[int] = set()
        self.stalled: set[int] = set()
        self.queued: dict[int, int] = defaultdict(int)  #: bytes pending per stalled cid
        self.peers: dict[int, tuple[str, int]] = {}
        self.header_lists: dict[int, list[tuple[str, str]]] = {}
        self.peer_calls = 0
        self.header_calls = 0

    # --- the Transport protocol ------------------------------------------------------

    def send(self, cid: int, data: bytes) -> bool:
        assert type(data) is bytes, type(data)
        if cid in self.gone:
            return False
        self._queue(cid, data)
        return True

    def send_many(self, cids: list[int], data: bytes, max_queued: int) -> list[int]:
        assert type(data) is bytes and type(cids) is list
        self.send_many_calls.append((list(cids), data, max_queued))
        refused = []
        for cid in cids:
            if cid in self.gone or self.queued[cid] + len(data) > max_queued:
                refused.append(cid)
            else:
                self._queue(cid, data)
        return refused

    def begin(self, cid: int) -> None:
        self.begun[cid] += 1

    def end(self, cid: int) -> None:
        self.ended[cid] += 1
        assert self.ended[cid] <= self.begun[cid], f"end() without begin() for cid {cid}"

    def close(self, cid: int, code: int, reason: str) -> None:
        self.closed.append((cid, code, reason))
        self.gone.add(cid)

    def peer(self, cid: int) -> tuple[str, int]:
        self.peer_calls += 1
        return self.peers.get(cid, ("127.0.0.1", 40000 + cid))

    def headers(self, cid: int) -> list[tuple[str, str]] | None:
        self.header_calls += 1
        return self.header_lists.get(cid)

    # --- helpers for tests -----------------------------------------------------------

    def _queue(self, cid: int, data: bytes) -> None:
        self.sent.append((cid, data))
        if cid in self.stalled:
            self.queued[cid] += len(data)

    def disconnect(self, cid: int) -> None:
        self.gone.add(cid)

    def stall(self, cid: int) -> None:
        self.stalled.add(cid)

    def drain(self, cid: int) -> None:
        """The client read everything queued to it."""
        self.stalled.discard(cid)
        self.queued[cid] = 0

    def in_flight(self, cid: int | None = None) -> int:
        if cid is None:
            return sum(self.begun.values()) - sum(self.ended.values())
        return self.begun[cid] - self.ended[cid]

    def messages(self, cid: int) -> list[Any]:
        """Decoded messages sent to ``cid``, in order."""
        return [orjson.loads(d) for c, d in self.sent if c == cid]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 2.0) -> None:
        """Poll ``predicate`` on the loop until true; fail after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError("condition not met within %.1f s" % timeout)
            await asyncio.sleep(0.001)

    async def wait_sent(self, n: int, cid: int | None = None, timeout: float = 2.0) -> None:
        def enough() -> bool:
            return sum(1 for c, _ in self.sent if cid is None or c == cid) >= n

        await self.wait_for(enough, timeout)


# --- request helpers -------------------------------------------------------------------

_ABSENT: Any = object()


def req(method: Any, params: Any = _ABSENT, id: Any = 1, **extra: Any) -> dict[str, Any]:
    """A Request object as a dict (``id=None`` gives "id": null; use ``note`` for a notification)."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id, "method": method}
    if params is not _ABSENT:
        msg["params"] = params
    msg.update(extra)
    return msg


def note(method: Any, params: Any = _ABSENT) -> dict[str, Any]:
    """A notification (no id member)."""
    msg: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not _ABSENT:
        msg["params"] = params
    return msg


def send(dispatcher: Any, msg: Any, cid: int = 1) -> Any:
    """Feed ``msg`` (a dict/list, or raw bytes) to the dispatcher; decode what it returns."""
    data = msg if isinstance(msg, bytes) else orjson.dumps(msg)
    reply = dispatcher.on_message(cid, data)
    return None if reply is None else orjson.loads(reply)


def run(coro_fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Run ``coro_fn()`` in a fresh event loop, bounded by ``timeout`` seconds."""

    async def bounded() -> Any:
        return await asyncio.wait_for(coro_fn(), timeout)

    return asyncio.run(bounded())


# --- request counters ------------------------------------------------------------------

#: The dispatcher counters of ``Dispatcher.metrics()`` (issue 11) that tests compare.
COUNTER_KEYS = ("parse_errors", "invalid_requests", "unknown_methods", "batches",
                "batch_buckets", "batch_sum", "notifications_sent")


def counter_snapshot(dispatcher: Any) -> tuple[dict[str, dict[str, int]], dict[str, Any]]:
    """What two dispatchers fed the same messages must agree on: per method the count
    of each outcome and of the calls timed (``ran``: the bucket counts' total, which
    the test checks against the outcomes that ran), and the dispatcher counters.
    Durations themselves differ from run to run and are left out."""
    methods: dict[str, dict[str, int]] = {}
    for name, s in dispatcher.method_stats().items():
        ran = sum(s["buckets"])
        assert ran == s["success"] + s["error"] + s["failure"] + s["timeout"], (name, s)
        assert ran or s["sum"] == 0, (name, s)  # refused calls have no duration
        methods[name] = {k: v for k, v in s.items() if k not in ("buckets", "sum")}
        methods[name]["ran"] = ran
    m = dispatcher.metrics()
    return methods, {k: m[k] for k in COUNTER_KEYS}
