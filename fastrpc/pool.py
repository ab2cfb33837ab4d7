"""ClientPool: bounded, self-healing connections to one or more JSON-RPC endpoints.

::

    async with fastrpc.ClientPool(["ws://node-a:8546", "ws://node-b:8546"], size=4,
                                  idempotent={"eth_blockNumber", "eth_getBalance"}) as pool:
        n = await pool.call("eth_blockNumber")
        async for item in pool.subscribe("eth", "newHeads"):
            if isinstance(item, fastrpc.Gap):
                ...  # notifications were missed: re-read what you need
            else:
                ...

**Connections.** ``size`` connections per endpoint (``Client`` objects on the loop's
one core reactor), opened by one supervisor task per endpoint and reopened when they
drop. Each call goes to the connection with the fewest calls in flight among the
*healthy* endpoints (ties broken at random); when none is healthy, to any open connection; when
none is open, the call waits up to ``acquire_timeout`` for one, then raises
``NoHealthyEndpoint``.

**Health.** An endpoint is healthy while it has an open connection and no failure
since its last successful connect. A failed connect, or a connection the server
closed or dropped, is a failure: the endpoint is taken out of selection and
reconnected after ``backoff(failures) = min(backoff_max, backoff_initial * 2**(failures
- 1))`` seconds, less up to ``backoff_jitter`` of it at random (so a fleet of clients
does not reconnect in step); a server's ``Retry-After`` (503/429) is honoured up to
``backoff_max``. A successful connect resets the count. Defaults: 0.1 s, 10 s, 0.5.

**No call is lost or answered twice.** A call gets exactly one outcome. When its
connection drops while the call is in flight, the pool cannot know whether the server
ran it: it fails with ``ConnectionLost``, unless its method is declared idempotent
(``idempotent={...}`` names or a predicate ``f(method) -> bool``), in which case it is
sent again on another connection, up to ``max_retries`` (2) times. By default nothing
is idempotent (go-ethereum's clients never retry either). A call that never left this
process (its connection was already closing) is always sent on another connection.
Error replies and timeouts are never retried. ``timeout`` bounds the whole call,
retries and the wait for a connection included.

**Subscriptions** survive their connection: when it drops, the iterator yields a
``Gap`` (after every notification received before the drop), then subscribes again on
a healthy connection (waiting for one for as long as the pool is open) and continues
with the new subscription's notifications. Notifications published between the drop
and the new subscription are missed, which the ``Gap`` tells; none is lost silently.
Overflow (``SubscriptionOverflow``) and the server ending a subscription (``RPCError``)
end the iterator as with a single ``Client``.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import random
from dataclasses import dataclass
from typing import Any, Callable, Collection, Generator, Sequence

from .client import Client, ClientOptions, Gap, Subscription, _params
from .errors import (
    CLOSE_NORMAL,
    CallTimeout,
    ConnectError,
    ConnectionLost,
    NoHealthyEndpoint,
)

log = logging.getLogger("fastrpc.pool")

#: Times a call that never left this process is sent on another connection.
_MAX_UNSENT_RESENDS = 8


class _Endpoint:
    """One URL: its open connections and its health."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.clients: list[Client] = []
        self.failures = 0          # consecutive; reset by a successful connect
        self.total_failures = 0
        self.connects = 0
        self.last_error: str | None = None
        self.retry_after: float | None = None
        #: Reported busy by its own ``/health`` (``fastrpc.cluster.HealthPoller``): chosen
        #: only when no healthy endpoint is free.
        self.busy = False
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        return self.failures == 0 and bool(self.clients)

    def fail(self, reason: str, retry_after: float | None = None) -> None:
        self.failures += 1
        self.total_failures += 1
        self.last_error = reason
        self.retry_after = retry_after


class ClientPool:
    """Connections to ``urls`` (one URL or several), ``size`` per endpoint.

    ``idempotent``: method names (or ``f(method) -> bool``) that may be sent again after
    their connection dropped mid-call; default none. ``max_retries``: resends of such a
    call. ``acquire_timeout``: seconds a call waits for an open connection.
    ``backoff_initial`` / ``backoff_max`` / ``backoff_jitter``: reconnect delays (see the
    module docstring). Other keyword arguments are ``ClientOptions`` for every
    connection (``call_timeout``, ``ping_interval``, ...).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        size: int = 2,
        *,
        idempotent: Collection[str] | Callable[[str], bool] | None = None,
        max_retries: int = 2,
        acquire_timeout: float = 5.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        backoff_jitter: float = 0.5,
        options: ClientOptions | None = None,
        **client_options: Any,
    ) -> None:
        if isinstance(urls, str):
            urls = [urls]
        if not urls:
            raise ValueError("at least one endpoint URL")
        if size < 1:
            raise ValueError("size must be >= 1")
        if max_retries < 0 or acquire_timeout <= 0 or not 0 < backoff_initial <= backoff_max:
            raise ValueError("max_retries >= 0, acquire_timeout > 0, 0 < backoff_initial <= backoff_max")
        if not 0 <= backoff_jitter <= 1:
            raise ValueError("backoff_jitter must be between 0 and 1")
        self.options = options if options is not None else ClientOptions(**client_options)
        for url in urls:
            Client(url, self.options)  # ValueError now for a URL no connection could open
        self.size = size
        if idempotent is None:
            self._idempotent: Callable[[str], bool] = lambda method: False
        elif callable(idempotent):
            self._idempotent = idempotent
        else:
            names = frozenset(idempotent)
            self._idempotent = names.__contains__
        self.max_retries = max_retries
        self.acquire_timeout = acquire_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_jitter = backoff_jitter
        self._endpoints = [_Endpoint(u) for u in dict.fromkeys(urls)]
        self._conns: list[tuple[_Endpoint, Client]] = []  # every open connection
        self._waiters: list[asyncio.Future[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._closed = False
        self.counters = {"calls": 0, "retries": 0, "resent_unsent": 0, "no_endpoint": 0}

    def __repr__(self) -> str:
        healthy = sum(1 for ep in self._endpoints if ep.healthy)
        return (f"<ClientPool {healthy}/{len(self._endpoints)} endpoints healthy, "
                f"{len(self._conns)} connections{' closed' if self._closed else ''}>")

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> "ClientPool":
        """Start the supervisors and wait until every endpoint has made its first
        attempt (up to ``acquire_timeout``). Does not raise when endpoints are down:
        they are retried, and calls wait for them (``acquire_timeout``)."""
        if self._started:
            raise RuntimeError("pool already started")
        self._started = True
        self._loop = loop = asyncio.get_running_loop()
        firsts = []
        for ep in self._endpoints:
            first: asyncio.Future[None] = loop.create_future()
            firsts.append(first)
            ep.task = loop.create_task(self._supervise(ep, first), name=f"fastrpc-pool {ep.url}")
        await asyncio.wait(firsts, timeout=self.acquire_timeout)
        for f in firsts:
            if not f.done():
                f.cancel()
        return self

    async def close(self) -> None:
        """Stop reconnecting and close every connection; calls in flight fail with
        ``ConnectionLost``, pool subscriptions end (StopAsyncIteration)."""
        if self._closed:
            return
        self._closed = True
        self._wake_waiters()
        for ep in self._endpoints:
            ep.wake.set()
        tasks = [ep.task for ep in self._endpoints if ep.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        clients = [c for ep in self._endpoints for c in ep.clients]
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def __aenter__(self) -> "ClientPool":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # --- supervision --------------------------------------------------------------------

    def backoff(self, failures: int) -> float:
        """Seconds before the next connect of an endpoint with ``failures`` in a row."""
        if failures <= 0:
            return 0.0
        delay = min(self.backoff_max, self.backoff_initial * 2.0 ** min(failures - 1, 60))
        return float(delay * (1.0 - self.backoff_jitter * random.random()))

    async def _supervise(self, ep: _Endpoint, first: asyncio.Future[None]) -> None:
        try:
            while not self._closed:
                while len(ep.clients) < self.size and not self._closed:
                    delay = self.backoff(ep.failures)
                    if ep.retry_after is not None:
                        delay = max(delay, min(ep.retry_after, self.backoff_max))
                    if delay:
                        await asyncio.sleep(delay)
                    client = Client(ep.url, self.options)
                    try:
                        await client.connect()
                    except ConnectError as e:
                        ep.fail(e.reason, e.retry_after)
                        log.info("%s: %s (failure %d, next attempt in about %.2f s)",
                                 ep.url, e.reason, ep.failures, self.backoff(ep.failures))
                        if not first.done():
                            first.set_result(None)
                        continue
                    if self._closed:
                        await client.close()
                        return
                    ep.failures = 0
                    ep.retry_after = None
                    ep.connects += 1
                    ep.clients.append(client)
                    self._conns.append((ep, client))
                    assert client._closed_fut is not None
                    client._closed_fut.add_done_callback(functools.partial(self._lost, ep, client))
                    self._wake_waiters()
                if not first.done():
                    first.set_result(None)
                if self._closed:
                    # Checked again: a cancel arriving as a connect fails is lost by
                    # Python 3.11's wait_for (it returns the failure instead).
                    break
                ep.wake.clear()
                await ep.wake.wait()
        except asyncio.CancelledError:
            pass
        except Exception:  # pragma: no cover - a bug; keep the pool's other endpoints going
            log.exception("%s: supervisor failed", ep.url)
        finally:
            if not first.done():
                first.set_result(None)

    def _lost(self, ep: _Endpoint, client: Client, _done: object = None) -> None:
        """A connection ended (server close, drop, keep-alive timeout, or our close)."""
        if client in ep.clients:
            ep.clients.remove(client)
        try:
            self._conns.remove((ep, client))
        except ValueError:
            pass
        if self._closed:
            return
        ep.fail(f"connection lost (close code {client.close_code})")
        log.info("%s: connection lost (close code %s)", ep.url, client.close_code)
        ep.wake.set()

    # --- choosing a connection ------------------------------------------------------

    def _pick(self, avoid: Client | None = None) -> Client | None:
        conns = self._conns
        n = len(conns)
        if not n:
            return None
        # Ties broken from a random start: a rotating start correlates with the order
        # callers issue their calls in (alternating methods all landing on one node).
        start = random.randrange(n)
        best: Client | None = None
        best_n = -1
        fallback: Client | None = None
        fallback_n = -1
        for i in range(n):
            ep, c = conns[(start + i) % n]
            if not c.open or c is avoid:
                continue
            k = c.in_flight
            if ep.failures == 0 and not ep.busy:
                if best is None or k < best_n:
                    best, best_n = c, k
            elif fallback is None or k < fallback_n:
                fallback, fallback_n = c, k
        if best is None and fallback is None and avoid is not None and avoid.open:
            return avoid  # the only one left
        return best if best is not None else fallback

    def _wake_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def _acquire(self, wait: float | None, avoid: Client | None = None) -> Client:
        """An open connection; waits up to ``wait`` seconds (None: as long as the pool
        is open) for one. Raises NoHealthyEndpoint, or ConnectionLost once closed."""
        if not self._started:
            raise RuntimeError("the pool is not started: use `async with` or await start()")
        assert self._loop is not None
        deadline = None if wait is None else self._loop.time() + wait
        while True:
            if self._closed:
                raise ConnectionLost(CLOSE_NORMAL, "pool closed", sent=False)
            c = self._pick(avoid)
            if c is not None:
                return c
            w: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append(w)
            if deadline is None:
                await w
                continue
            # asyncio.wait, not wait_for (which on 3.11 can lose a cancel).
            done, _ = await asyncio.wait((w,), timeout=max(0.0, deadline - self._loop.time()))
            if not done:
                w.cancel()
                self.counters["no_endpoint"] += 1
                errors = "; ".join(f"{ep.url}: {ep.last_error or 'not connected'}" for ep in self._endpoints)
                raise NoHealthyEndpoint(f"no connection opened within {wait:g} s ({errors})") from None

    # --- calls ---------------------------------------------------------------------

    async def call(self, method: str, *args: Any, params: Any = None, timeout: float | None = None,
                   trace: list[str] | None = None) -> Any:
        """Call ``method`` on the least busy healthy connection (params as in
        ``Client.call``). Raises ``RPCError``, ``CallTimeout``, ``ConnectionLost`` (the
        connection dropped mid-call and the method is not idempotent, or retries are
        used up), ``NoHealthyEndpoint``. ``trace``: a list the endpoint URL of each
        connection the call is sent on is appended to (a resend adds one more), so a
        caller can tell which upstream gave the outcome (``fastrpc.cluster``)."""
        p = _params(args, params)
        t = self.options.call_timeout if timeout is None else timeout
        if t == float("inf"):
            t = None
        loop = self._loop
        deadline = None if t is None or loop is None else loop.time() + t
        retries = unsent = 0
        self.counters["calls"] += 1
        avoid: Client | None = None
        while True:
            wait = self.acquire_timeout
            if deadline is not None:
                assert loop is not None
                wait = min(wait, max(0.0, deadline - loop.time()))
            c = await self._acquire(wait, avoid)
            if trace is not None:
                trace.append(c.url)
            remaining = float("inf")
            if deadline is not None:
                assert loop is not None and t is not None
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise CallTimeout(method, t)
            try:
                return await c.call(method, params=p, timeout=remaining)
            except CallTimeout:
                assert t is not None
                raise CallTimeout(method, t) from None
            except ConnectionLost as e:
                avoid = c
                if not e.sent and unsent < _MAX_UNSENT_RESENDS:
                    unsent += 1
                    self.counters["resent_unsent"] += 1
                    continue
                if e.sent and retries < self.max_retries and self._idempotent(method):
                    retries += 1
                    self.counters["retries"] += 1
                    continue
                raise

    async def notify(self, method: str, *args: Any, params: Any = None) -> None:
        """Send a notification on the least busy healthy connection."""
        p = _params(args, params)
        avoid: Client | None = None
        for _ in range(_MAX_UNSENT_RESENDS + 1):
            c = await self._acquire(self.acquire_timeout, avoid)
            try:
                await c.notify(method, params=p)
                return
            except ConnectionLost:
                avoid = c
        raise ConnectionLost(CLOSE_NORMAL, "no connection took the notification", sent=False)

    def subscribe(self, namespace: str, topic: str, *params: Any) -> "PoolSubscription":
        """An async iterator of notification results that survives its connection
        (yields a ``Gap`` when it had to subscribe again; see the module docstring)."""
        return PoolSubscription(self, namespace, [topic, *params])

    # --- load reported by the endpoints (fastrpc.cluster) ---------------------------

    def set_busy(self, url: str, busy: bool) -> None:
        """Mark endpoint ``url`` busy (its ``/health`` says so): calls go to it only
        when no healthy endpoint is free."""
        for ep in self._endpoints:
            if ep.url == url:
                ep.busy = busy

    def free(self) -> int:
        """Endpoints healthy (connected, no failure since) and not marked busy."""
        return sum(1 for ep in self._endpoints if ep.healthy and not ep.busy)

    @property
    def urls(self) -> list[str]:
        return [ep.url for ep in self._endpoints]

    # --- introspection ------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per endpoint URL: ``healthy``, ``connections`` (open), ``in_flight`` (calls
        waiting for replies), ``failures`` (in a row now), ``total_failures``,
        ``connects`` (successful opens), ``last_error``."""
        return {
            ep.url: {
                "healthy": ep.healthy,
                "busy": ep.busy,
                "connections": sum(1 for c in ep.clients if c.open),
                "in_flight": sum(c.in_flight for c in ep.clients),
                "failures": ep.failures,
                "total_failures": ep.total_failures,
                "connects": ep.connects,
                "last_error": ep.last_error,
            }
            for ep in self._endpoints
        }

    def endpoint_of(self, client: Client) -> str | None:
        for ep, c in self._conns:
            if c is client:
                return ep.url
        return None


class PoolSubscription:
    """A subscription through a ``ClientPool``: notification results, and a ``Gap``
    each time the connection carrying it was lost and it subscribed again."""

    def __init__(self, pool: ClientPool, namespace: str, params: list[Any]) -> None:
        self._pool = pool
        self.namespace = namespace
        self.params = params
        self._sub: Subscription | None = None
        self._client: Client | None = None
        self._closed = False
        self.gaps = 0
        self.endpoint: str | None = None  #: URL of the connection carrying it now

    @property
    def id(self) -> Any:
        """The current subscription id (changes after a Gap)."""
        return None if self._sub is None else self._sub.id

    async def _subscribe(self) -> None:
        pool = self._pool
        while True:
            c = await pool._acquire(None, self._client)
            try:
                self._sub = await c.subscribe(self.namespace, self.params[0], *self.params[1:])
            except ConnectionLost:
                continue  # that connection went meanwhile: another one
            self._client = c
            self.endpoint = pool.endpoint_of(c)
            return

    async def _start(self) -> "PoolSubscription":
        if self._sub is None:
            await self._subscribe()
        return self

    def __await__(self) -> Generator[Any, None, "PoolSubscription"]:
        return self._start().__await__()

    def __aiter__(self) -> "PoolSubscription":
        return self

    async def __anext__(self) -> Any:
        if self._closed:
            raise StopAsyncIteration
        if self._sub is None:
            try:
                await self._subscribe()
            except ConnectionLost:  # the pool closed
                self._closed = True
                raise StopAsyncIteration from None
        assert self._sub is not None
        try:
            return await self._sub.__anext__()
        except ConnectionLost as e:
            self._sub = None
            if self._pool.closed:
                self._closed = True
                raise StopAsyncIteration from None
            self.gaps += 1
            assert self._pool._loop is not None
            return Gap(self.endpoint or "", e, self._pool._loop.time())

    async def aclose(self) -> None:
        self._closed = True
        sub, self._sub = self._sub, None
        if sub is not None:
            await sub.aclose()

    async def __aenter__(self) -> "PoolSubscription":
        return await self._start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["ClientPool", "Gap", "PoolSubscription"]
