"""The Dispatcher: whole WebSocket messages in, JSON-RPC replies out.

The server calls ``on_message(cid, data)`` for every complete message and
``on_close(cid)`` when a connection ends; the dispatcher talks back only through the
``Transport`` it was given. It holds no per-connection Python object: a connection that
never subscribes costs the dispatcher nothing (a subscribed one costs a dict entry per
subscription, see ``fastrpc.subscriptions``).

How each call runs (``fastrpc.service`` defines the kinds):

* **synchronous handler**: called inline, no task and no coroutine; its reply is part
  of the bytes ``on_message`` returns.
* **async handler**: one task per call (never per connection). ``transport.begin(cid)``
  is called when it is scheduled and ``transport.end(cid)`` when it finishes, whatever
  the outcome; the reply goes out later with ``transport.send(cid, reply)``.
* **threaded namespace** (``threaded=True``): the synchronous handler runs in the
  namespace's thread pool, otherwise as for an async handler.

Arguments are bound before anything is scheduled, so -32602 (like -32600, -32601,
-32002 and -32003) is answered without creating a task: in the returned bytes for a
single call, in the batch answer for a batch entry.

Errors: an ``RPCError`` raised by a handler becomes that error (code, message, data).
Any other exception, or a result that is not JSON, becomes -32603 "Internal error"; the
traceback goes to ``logging.getLogger("fastrpc.dispatch")``, never to the client.

Batches: answered with one array in request order, notifications left out, nothing at
all when every entry is a notification. Entries run in order; async ones run
concurrently and the array is sent once the last one finishes. ``[]`` → one -32600
"empty batch"; more than ``Limits.max_batch_length`` entries → one -32600 "batch too
large" and nothing runs. ``Limits.max_batch_response_size``: replies are counted as they
are produced (synchronous entries in request order, async ones as they finish); once
adding a reply would take the array past the limit, that reply and every later one is
replaced by -32006 "response too large" carrying its id, and entries with an id that
come after that point are not run at all (notifications still run). A
``<ns>_subscribe`` inside a batch runs when the batch answer is complete, just before it
is sent, so no notification can reach the client before the id it carries.

Request counters (issue 11; read with ``method_stats()`` and ``metrics()``): every call
of a known method is counted once, on its ``Method`` (C fields of
``fastrpc._fastcall.MethodCore``, shared by every dispatcher of the registry: WebSocket
and HTTP alike), by outcome:

* **success**: a result; **error**: the handler raised ``RPCError`` (an application
  error, -32602 included); **failure**: any other exception or a result that is not
  JSON (-32603); **timeout**: the namespace's timeout (-32001); **refused**: the breaker
  open (-32002), the namespace busy (-32003) or the cluster's server busy (-32005):
  the handler never ran. Forwarded calls count as the RPCError subclasses
  ``fastrpc.cluster`` raises say (``fastrpc.errors.ServerBusy``, ``RequestTimedOut``,
  ``UpstreamLost``, ``MethodNotFound``).
* **duration** of each call that ran (every outcome but refused): from its start to
  its reply (an async call: from its task's first step; a threaded one: from its
  submission to the pool), as non-cumulative counts over ``DURATION_BUCKETS`` and a
  sum. ``CLOCK_MONOTONIC`` is read twice per call; the compiled common call pays
  15-40 ns of CPU for the counters (the README's "Request counters" has the
  measurements).
* Not counted per method: a call cancelled before it answered (its connection closed,
  or the server stopped: no reply), and a batch entry answered -32006 without being
  run. Invalid requests, unknown methods (also names a gateway's upstream does not
  know) and parse errors are dispatcher counters (``metrics()``): a name a client
  sends never becomes an entry.

Ordering contract with the server: bytes returned by ``on_message`` must reach the
connection's output before anything the dispatcher queues later for that cid with
``send``/``send_many`` (a subscribe reply is returned; the first notification is
queued by a later ``publish``). Writing the returned bytes synchronously, or queueing
them in the same output buffer, satisfies it.
"""
from __future__ import annotations

import asyncio
import functools
import logging
from bisect import bisect_left
from concurrent.futures import Future
from time import monotonic_ns  # CLOCK_MONOTONIC, the clock of the compiled counters
from typing import Any, Callable, Iterable, Protocol

from ._fastcall import BATCH_BUCKETS, DURATION_BUCKETS, FAILURE, SUCCESS, TIMEOUT, UNKNOWN, FastCall
from .errors import REQUEST_TIMEOUT, RPCError
from .isolation import DEFAULT, Bulkhead
from .jsonrpc import (
    BATCH_TOO_LARGE_REPLY,
    EMPTY_BATCH_REPLY,
    ID_TYPES,
    NO_ID,
    NO_PARAMS,
    NOT_AN_OBJECT_REPLY,
    PARAMS_TYPES,
    PARSE_ERROR_REPLY,
    DecodeError,
    batch,
    decode,
    encode,
    error,
    fixed_error,
    internal_error,
    invalid_request,
    method_not_found,
    reply_id,
    response_too_large,
)
from .limits import Limits
from .service import ASYNC, ROUTE, SUBSCRIBE, SYNC, UNSUBSCRIBE, Method, Registry, Topic
from .subscriptions import Subscriptions

log = logging.getLogger("fastrpc.dispatch")

_timeout = getattr(asyncio, "timeout", None)  # Python >= 3.11


class Transport(Protocol):
    """What the dispatcher needs from the server (tests use a fake)."""

    def send(self, cid: int, data: bytes) -> bool:
        """Queue one text message; False if ``cid`` is gone."""

    def send_many(self, cids: list[int], data: bytes, max_queued: int) -> list[int]:
        """Write the same message to every cid; return those NOT written (pending output
        would pass ``max_queued`` bytes, or gone)."""

    def begin(self, cid: int) -> None:
        """A request of ``cid`` is in flight."""

    def end(self, cid: int) -> None:
        """A request of ``cid`` finished."""

    def close(self, cid: int, code: int, reason: str) -> None: ...

    def peer(self, cid: int) -> tuple[str, int]: ...

    def headers(self, cid: int) -> list[tuple[str, str]] | None: ...


class _Pending:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


#: ``_call`` inside a batch: the entry's reply will be filled in later.
PENDING: Any = _Pending()


class _Batch:
    """One batch being answered (a per-request object)."""

    __slots__ = ("cid", "replies", "size", "limit", "over", "pending", "open", "deferred", "subscribed")

    def __init__(self, cid: int, n: int, limit: int) -> None:
        self.cid = cid
        self.replies: list[bytes | None] = [None] * n  #: in request order; None: no reply
        self.size = 1  #: bytes of the answer so far: "[" and each reply plus its separator
        self.limit = limit
        self.over = False  #: a reply did not fit: every later one is replaced
        self.pending = 0  #: async entries not finished
        self.open = True  #: still inside on_message
        self.deferred: list[tuple[int, Any, Method, Any]] | None = None  #: subscribes to run last
        self.subscribed: list[str] | None = None  #: ids they produced (undone if undelivered)

    def fits(self, reply: bytes) -> bool:
        if not self.over:
            size = self.size + len(reply) + 1
            if size <= self.limit:
                self.size = size
                return True
            self.over = True
        return False

    def put(self, idx: int, reply: bytes, rid: Any) -> None:
        self.replies[idx] = reply if self.fits(reply) else response_too_large(rid)


def _release_from_thread(loop: asyncio.AbstractEventLoop, bulkhead: Bulkhead, _f: Future[Any]) -> None:
    # Runs in the worker thread (or on the loop if the job was cancelled before it started).
    try:
        loop.call_soon_threadsafe(bulkhead.release)
    except RuntimeError:  # loop closed: nobody else touches the bulkhead any more
        bulkhead.release()


class Dispatcher:
    """JSON-RPC 2.0 over any message transport. See the module docstring.

    ``transport``: the server (or a fake). ``limits``: batch length, batch answer size,
    default request timeout, subscription caps. ``loop``: the loop for async calls
    (default: the running loop at the first async call). ``registry``: the methods and
    topics served (default: a new, empty ``Registry``, reachable as ``.registry``).
    ``on_slow``: what happens to a subscriber over its queue cap: ``"notify"`` (drop the
    subscription with a -32004 error notification) or ``"close"`` (close with 1008).
    """

    def __init__(
        self,
        transport: Transport,
        limits: Limits = Limits(),
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        registry: Registry | None = None,
        on_slow: str = "notify",
    ) -> None:
        self.registry = registry if registry is not None else Registry()
        self.limits = limits
        self.subscriptions = Subscriptions(transport, limits, on_slow=on_slow)
        self._transport = transport
        self._table = self.registry.table  # the same dict: later registrations are seen
        self._loop = loop
        self._tasks: set[asyncio.Task[None]] = set()  # strong references to running calls
        # The same tasks by connection, so a connection that ends cancels its calls.
        # An entry exists only while a connection has calls running.
        self._by_cid: dict[int, set[asyncio.Task[None]]] = {}
        self._max_batch = limits.max_batch_length
        self._max_batch_bytes = limits.max_batch_response_size
        self._default_timeout = limits.request_timeout
        #: ``resolve(name) -> Method | None`` for names not in the table (a gateway
        #: forwards every method: ``fastrpc.cluster``); None answers -32601 at once.
        self.resolve: Any = None
        #: ``() -> Iterable[Method]``: the methods ``resolve`` handed out and keeps (a
        #: bounded cache), so that ``method_stats()`` shows them too.
        self.resolved_methods: Callable[[], Iterable[Method]] | None = None
        # Counters of what the Python path answers and of the batches it takes (the
        # compiled entry keeps its own: metrics() adds them).
        self._counts = {"parse_errors": 0, "invalid_requests": 0, "unknown_methods": 0,
                        "batches": 0, "batch_sum": 0}
        self._batch_buckets = [0] * (len(BATCH_BUCKETS) + 1)
        # The compiled entry point (fastrpc._fastcall): the common single synchronous
        # call without a Python frame, everything else through on_message's own path.
        # Instance attributes (a bound method of a compiled class, called with vectorcall),
        # so the server's reactor calls compiled code directly.
        self._fast = FastCall(self)
        self.on_message = self.on_text = self.on_binary = self._fast.on_message  # type: ignore[method-assign]

    # --- the server's entry points -------------------------------------------------

    def on_message(self, cid: int, data: bytes) -> bytes | None:  # replaced per instance
        """Handle one whole message (text or binary) of connection ``cid``.

        Returns the reply bytes to write now, or None when there is nothing to write
        now: notifications only, or async calls whose reply will come through
        ``transport.send``. Never raises for anything the client sent."""
        try:
            msg = decode(data)
        except DecodeError:
            self._counts["parse_errors"] += 1
            return PARSE_ERROR_REPLY
        if type(msg) is dict:
            return self._call(cid, msg, None, 0)
        if type(msg) is list:
            n = len(msg)
            if 0 < n <= self._max_batch:  # answered entry by entry (the compiled entry counts its own)
                counts = self._counts
                counts["batches"] += 1
                counts["batch_sum"] += n
                self._batch_buckets[bisect_left(BATCH_BUCKETS, n)] += 1
            return self._batch(cid, msg)
        self._counts["invalid_requests"] += 1
        return NOT_AN_OBJECT_REPLY

    # The pure-Python path, kept callable under its own name: the differential tests
    # require FastCall to answer every message with the same bytes as this.
    on_message_py = on_message
    # The server's MessageHandler protocol: text and binary messages are the same JSON.
    on_text = on_message
    on_binary = on_message

    def on_close(self, cid: int, code: int | None = None) -> None:
        """Connection ``cid`` ended: drop its subscriptions and cancel its async calls
        still running (nobody is left to read their replies). A threaded call cannot be
        cancelled: its thread finishes in the background and its reply is dropped."""
        self.subscriptions.drop(cid)
        mine = self._by_cid.pop(cid, None)
        if mine:
            for task in mine:
                task.cancel()

    def publish(self, topic: Topic | str, payload: Any, key: Any = None) -> int:
        """Notify every subscriber of ``topic`` (a Topic, ``"ns.name"`` or a unique bare
        name) and ``key``; returns how many were written. Encodes once, calls
        ``send_many`` once, never awaits. Call it on the loop thread."""
        if type(topic) is str:
            topic = self.registry.find_topic(topic)
        return self.subscriptions.publish(topic, payload, key)  # type: ignore[arg-type]

    # --- one call ------------------------------------------------------------------

    def _call(self, cid: int, msg: dict[str, Any], b: _Batch | None, idx: int) -> Any:
        """Run one Request object; returns reply bytes, None (nothing to send) or, in a
        batch, PENDING (the reply will be put into the batch later)."""
        rid = msg.get("id", NO_ID)
        method = msg.get("method")
        params = msg.get("params", NO_PARAMS)
        if (
            type(method) is not str
            or type(rid) not in ID_TYPES
            or type(params) not in PARAMS_TYPES
            or msg.get("jsonrpc") != "2.0"
        ):
            self._counts["invalid_requests"] += 1
            return invalid_request(msg)
        m = self._table.get(method)
        if m is None:
            resolve = self.resolve
            if resolve is None or (m := resolve(method)) is None:
                self._counts["unknown_methods"] += 1
                return None if rid is NO_ID else method_not_found(rid)
        if m.kind != SYNC:
            return self._call_special(cid, m, rid, params, b, idx)
        return self._call_sync(cid, m, rid, params)

    def _call_sync(self, cid: int, m: Method, rid: Any, params: Any) -> bytes | None:
        """A synchronous method, run inline; returns the reply bytes (None: no id)."""
        bh = m.bulkhead
        if bh.state:
            code = bh.check()
            if code:
                m.refuse()
                return None if rid is NO_ID else fixed_error(rid, code)
        start = monotonic_ns()
        try:
            # The common shape inline (saves a frame): an array the callable takes as is.
            if type(params) is list and not m.checks and m.lo <= len(params) <= m.hi:
                value = m.fn(*params)
            else:
                value = m.invoke(params, self._transport, cid)
            reply = None if rid is NO_ID else encode({"jsonrpc": "2.0", "id": rid, "result": value})
        except RPCError as e:
            reply = None if rid is NO_ID else error(rid, e.code, e.message, e.data)
            self._raised(m, e, start)
        except Exception:
            reply = self._failed(m, rid)
            m.done(FAILURE, start)
            return reply
        else:
            m.done(SUCCESS, start)
        if bh.state or bh.failures:
            bh.success()
        return reply

    def _raised(self, m: Method, e: RPCError, start: int) -> None:
        """Count ``m``'s call that raised ``e`` (called inside the ``except`` block)."""
        if m.raised(e, start) == UNKNOWN:
            self._counts["unknown_methods"] += 1

    def _failed(self, m: Method, rid: Any) -> bytes | None:
        """A synchronous handler raised (called inside the ``except`` block): log the
        traceback, count the failure, answer -32603 without detail."""
        log.exception("%s failed", m.name)
        m.bulkhead.failure()
        return None if rid is NO_ID else internal_error(rid)

    def _call_special(self, cid: int, m: Method, rid: Any, params: Any, b: _Batch | None, idx: int) -> Any:
        kind = m.kind
        if kind == ROUTE:  # forwardable (fastrpc.cluster): local or forwarded, per call
            m = m.route(cid)
            kind = m.kind
            if kind == SYNC:
                return self._call_sync(cid, m, rid, params)
        if kind == SUBSCRIBE:
            if b is not None:
                if b.deferred is None:
                    b.deferred = []
                b.deferred.append((idx, rid, m, params))
                return PENDING
            return self._subscribe(cid, m, rid, params, None)
        if kind == UNSUBSCRIBE:
            start = monotonic_ns()
            try:
                ok = self.subscriptions.unsubscribe(cid, params)
            except RPCError as e:
                reply = None if rid is NO_ID else error(rid, e.code, e.message, e.data)
                self._raised(m, e, start)
                return reply
            reply = None if rid is NO_ID else encode({"jsonrpc": "2.0", "id": rid, "result": ok})
            m.done(SUCCESS, start)
            return reply
        # ASYNC or THREADED
        bh = m.bulkhead
        code = bh.acquire()
        if code:
            m.refuse()
            return None if rid is NO_ID else fixed_error(rid, code)
        transport = self._transport
        aw = None
        start = monotonic_ns()
        try:
            if kind == ASYNC:
                aw = m.invoke(params, transport, cid)  # binds (may raise -32602), creates the coroutine
                loop = self._loop or self._running_loop()
                threaded = False
            else:
                args, kwargs = m.plan.bind(params, transport, cid, eager=True)
                loop = self._loop or self._running_loop()
                cf = bh.executor().submit(m.fn, *args, **kwargs)
                # From here the slot is given back when the thread returns (or the job is
                # cancelled before it started), never by this function.
                cf.add_done_callback(functools.partial(_release_from_thread, loop, bh))
                aw = asyncio.wrap_future(cf, loop=loop)
                threaded = True
        except RPCError as e:
            bh.release()
            bh.cancelled()
            reply = None if rid is NO_ID else error(rid, e.code, e.message, e.data)
            self._raised(m, e, start)
            return reply
        except Exception:
            close = getattr(aw, "close", None) if kind == ASYNC else None
            if close is not None:
                close()  # a coroutine never scheduled: close it rather than leak a warning
            bh.release()
            log.exception("%s failed", m.name)
            bh.failure()
            reply = None if rid is NO_ID else internal_error(rid)
            m.done(FAILURE, start)
            return reply
        timeout = bh.timeout
        if timeout is DEFAULT:
            timeout = self._default_timeout
        transport.begin(cid)
        if b is not None:
            b.pending += 1
        ran = [False]  # set by _run's finally; still False: cancelled before its first step
        # A threaded call is timed from its submission (its thread may be running
        # already); an async one from its task's first step.
        task = loop.create_task(self._run(cid, m, aw, rid, timeout, threaded, b, idx, ran,
                                          start if threaded else 0))
        self._tasks.add(task)
        mine = self._by_cid.get(cid)
        if mine is None:
            mine = self._by_cid[cid] = set()
        mine.add(task)
        task.add_done_callback(functools.partial(self._task_done, cid, m, aw, threaded, ran))
        return PENDING if b is not None else None

    def _task_done(
        self, cid: int, m: Method, aw: Any, threaded: bool, ran: list[bool], task: asyncio.Task[None]
    ) -> None:
        if not ran[0]:
            # Cancelled before its first step (its connection ended at once): _run's
            # cleanup never ran. Do it here, and close the handler's coroutine, which
            # was never awaited.
            close = getattr(aw, "close", None)
            if close is not None:
                close()
            m.bulkhead.cancelled()
            if not threaded:
                m.bulkhead.release()
            self._transport.end(cid)
        self._tasks.discard(task)
        mine = self._by_cid.get(cid)
        if mine is not None:
            mine.discard(task)
            if not mine:
                del self._by_cid[cid]

    async def _run(
        self,
        cid: int,
        m: Method,
        aw: Any,
        rid: Any,
        timeout: float | None,
        threaded: bool,
        b: _Batch | None,
        idx: int,
        ran: list[bool],
        start: int,
    ) -> None:
        """The task of one async or threaded call (``start``: monotonic_ns() it is
        timed from; 0: now)."""
        bh = m.bulkhead
        reply: bytes | None
        if not start:
            start = monotonic_ns()
        try:
            timed_out = False
            value = None
            if timeout is None:
                value = await aw
            elif _timeout is not None:
                cm = _timeout(timeout)
                try:
                    async with cm:
                        value = await aw
                except TimeoutError:
                    if not cm.expired():
                        raise  # the handler's own TimeoutError: an internal error
                    timed_out = True
            else:  # pragma: no cover - Python 3.10
                try:
                    value = await asyncio.wait_for(aw, timeout)
                except asyncio.TimeoutError:
                    timed_out = True
            if timed_out:
                bh.failure(timed_out=True)
                reply = None if rid is NO_ID else fixed_error(rid, REQUEST_TIMEOUT)
                m.done(TIMEOUT, start)
            else:
                reply = None if rid is NO_ID else encode({"jsonrpc": "2.0", "id": rid, "result": value})
                bh.success()
                m.done(SUCCESS, start)
        except RPCError as e:
            bh.success()
            reply = None if rid is NO_ID else error(rid, e.code, e.message, e.data)
            self._raised(m, e, start)
        except asyncio.CancelledError:
            bh.cancelled()
            raise
        except Exception:
            log.exception("%s failed", m.name)
            bh.failure()
            reply = None if rid is NO_ID else internal_error(rid)
            m.done(FAILURE, start)
        finally:
            ran[0] = True
            if not threaded:
                bh.release()  # a thread gives its slot back when it really returns
            self._transport.end(cid)
        if b is None:
            if reply is not None:
                self._transport.send(cid, reply)
        else:
            self._batch_done(b, idx, rid, reply)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop = asyncio.get_running_loop()
        return loop

    # --- subscriptions ---------------------------------------------------------------

    def _subscribe(self, cid: int, m: Method, rid: Any, params: Any, b: _Batch | None) -> bytes | None:
        start = monotonic_ns()
        try:
            sub_id = self.subscriptions.subscribe(cid, m.service, params)
        except RPCError as e:
            reply = None if rid is NO_ID else error(rid, e.code, e.message, e.data)
            self._raised(m, e, start)
            return reply
        except Exception:
            log.exception("%s failed", m.name)
            reply = None if rid is NO_ID else internal_error(rid)
            m.done(FAILURE, start)
            return reply
        if b is not None:
            if b.subscribed is None:
                b.subscribed = []
            b.subscribed.append(sub_id)
        reply = None if rid is NO_ID else encode({"jsonrpc": "2.0", "id": rid, "result": sub_id})
        m.done(SUCCESS, start)
        return reply

    # --- batches ---------------------------------------------------------------------

    def _batch(self, cid: int, items: list[Any], call: Any = None) -> bytes | None:
        """Answer a batch; ``call(cid, item, b, idx)`` runs each entry (default
        ``_call``; the compiled entry point passes its own, which answers the same)."""
        n = len(items)
        counts = self._counts
        if n == 0 or n > self._max_batch:
            counts["invalid_requests"] += 1  # one -32600 for the whole batch; nothing runs
            return EMPTY_BATCH_REPLY if n == 0 else BATCH_TOO_LARGE_REPLY
        b = _Batch(cid, n, self._max_batch_bytes)
        replies = b.replies
        if call is None:
            call = self._call
        limit = b.limit
        for idx in range(n):
            item = items[idx]
            if type(item) is not dict:
                counts["invalid_requests"] += 1
                b.put(idx, NOT_AN_OBJECT_REPLY, None)
                continue
            if b.over:
                rid = item.get("id", NO_ID)
                if rid is not NO_ID and type(rid) in ID_TYPES:
                    replies[idx] = response_too_large(rid)
                    continue
            r = call(cid, item, b, idx)
            if r is None or r is PENDING:
                continue
            # b.put, inlined; the id is looked up only when the reply does not fit.
            size = b.size + len(r) + 1
            if size <= limit and not b.over:
                b.size = size
                replies[idx] = r
            else:
                b.over = True
                replies[idx] = response_too_large(reply_id(item))
        b.open = False
        if b.pending:
            return None
        return self._assemble(b)

    def _batch_done(self, b: _Batch, idx: int, rid: Any, reply: bytes | None) -> None:
        b.pending -= 1
        if reply is not None:
            b.put(idx, reply, rid)
        if b.pending or b.open:
            return
        data = self._assemble(b)
        if data is not None and not self._transport.send(b.cid, data) and b.subscribed:
            # Never delivered: the client cannot know these ids, so end them.
            self.subscriptions.unsubscribe_ids(b.cid, b.subscribed)

    def _assemble(self, b: _Batch) -> bytes | None:
        if b.deferred is not None:
            for idx, rid, m, params in b.deferred:
                if b.over and rid is not NO_ID:
                    b.replies[idx] = response_too_large(rid)
                    continue
                r = self._subscribe(b.cid, m, rid, params, b)
                if r is not None:
                    b.put(idx, r, rid)
        parts = [r for r in b.replies if r is not None]
        return batch(parts) if parts else None

    # --- lifetime and introspection ----------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Async and threaded calls running now."""
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel every call still running and wait for them (their replies are not
        sent). Threads cannot be cancelled: they finish in the background."""
        await asyncio.sleep(0)  # let tasks scheduled just now start, so they can clean up
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def metrics(self) -> dict[str, Any]:
        """Calls in flight, subscriptions, each namespace's bulkhead counters, and this
        dispatcher's counters (monotonic) of what it answered before any method ran:

        ``parse_errors`` (-32700), ``invalid_requests`` (-32600: per invalid request
        object or batch entry, and one for an empty or too long batch),
        ``unknown_methods`` (-32601, also relayed from a gateway's upstream),
        ``batches`` (answered entry by entry), ``batch_buckets`` (their lengths,
        non-cumulative over ``BATCH_BUCKETS`` plus one for longer), ``batch_sum``
        (their entries), ``notifications_sent`` (subscription notifications written,
        one per subscriber reached). Per-method counters: ``method_stats()``."""
        subs = self.subscriptions
        c = self._counts
        f = self._fast.counters()
        return {
            "in_flight": len(self._tasks),
            "subscriptions": subs.count(),
            "channels": len(subs),
            "subscribers_dropped_slow": subs.dropped_slow,
            "notifications_sent": subs.notifications_sent,
            "services": {s.name: s.bulkhead.stats() for s in self.registry.services()},
            "parse_errors": c["parse_errors"] + f["parse_errors"],
            "invalid_requests": c["invalid_requests"] + f["invalid_requests"],
            "unknown_methods": c["unknown_methods"] + f["unknown_methods"],
            "batches": c["batches"] + f["batches"],
            "batch_buckets": [a + b for a, b in zip(self._batch_buckets, f["batch_buckets"])],
            "batch_sum": c["batch_sum"] + f["batch_sum"],
        }

    def method_stats(self) -> dict[str, dict[str, Any]]:
        """Per method called at least once (refused calls included), by name: ``{"success":
        n, "error": n, "failure": n, "timeout": n, "refused": n, "buckets": [n, ...],
        "sum": seconds}``. ``buckets``: non-cumulative counts of the durations of the
        calls that ran (every outcome but refused) over ``DURATION_BUCKETS``, one more
        for longer; ``sum``: their total in seconds. The counters are the methods'
        own, so they cover every dispatcher of the registry (WebSocket and HTTP).
        Outcomes: the module docstring."""
        out: dict[str, dict[str, Any]] = {}
        named: list[tuple[str, Method]] = list(self._table.items())
        if self.resolved_methods is not None:
            named += [(m.name, m) for m in self.resolved_methods()]
        for name, m in named:
            s = m.stats()
            if s["success"] or s["error"] or s["failure"] or s["timeout"] or s["refused"]:
                out.setdefault(name, s)
        return out


__all__ = ["BATCH_BUCKETS", "DURATION_BUCKETS", "PENDING", "Dispatcher", "Transport"]
