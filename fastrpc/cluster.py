"""Forwarding calls to other nodes: overflow to peers, and the gateway.

One mechanism, ``server.forward(methods, pool, when=...)`` (a ``Forwarder``): calls of
``methods`` go through a ``ClientPool`` to its least-loaded healthy upstream, and the
answer is relayed: the client's own id in the reply (the pool uses ids of its own
upstream), a result as the upstream sent it, an error reply with its code, message and
data unchanged. Two uses:

**Overflow** (``when="overflow"``): a node forwards a call of a forwardable method to
its peers only while it is over a soft limit: ``max_in_flight`` async/threaded calls
running on the node, its memory soft limit (``Limits.memory_limit *
memory_soft_ratio``, or ``rss_limit``), or the method's namespace busy (bulkhead at
``max_concurrency``) or its breaker open. Otherwise the call runs here, as before.

* **Hop marker.** The forwarding node's pool connects with the upgrade header
  ``X-Fastrpc-Hop: 1`` (``HOP_HEADER``; give the pool ``headers=hop_headers()``, or
  let ``peer_pool()`` do it). Every call arriving on such a connection is a forwarded
  one and runs where it lands, never forwarded again (one hop at most, so two busy
  nodes cannot bounce a call between them); a node over any of its soft limits
  answers it -32005 (counted in its ``refused_busy``). A client sending the header only opts
  itself out of being forwarded.
* **Server busy.** When the node is over its soft limits and no peer is free (every
  one down, or reporting ``"busy": true`` in its ``/health``), the client gets at once
  ``{"code": -32005, "message": "server busy"}`` (``SERVER_BUSY``; EIP-1474's "limit
  exceeded": back off, or try another node).
* **Peers' load.** A ``HealthPoller`` task GETs each peer's ``/health`` every
  ``health_interval`` seconds (0.5; one bounded request: ``health_timeout`` 1 s for
  connect, request and a body of at most 64 KiB): a peer answering ``"busy": true``,
  or not 200, is chosen only when no other is free.

**Gateway** (``Gateway``, ``fastrpc gateway``): a server holding many client
connections at fastrpc's per-connection memory that forwards *every* method
(``when="always"``) onto a few pooled upstream connections. Subscriptions are shared:
one upstream subscription per distinct channel ``(namespace, [topic, *params])``,
fanned out to every subscriber through the server's own encode-once ``publish``.
When the upstream connection carrying it is lost, the pool subscribes again on
another upstream and every subscriber of the channel is sent, in the stream, the
**gap notice** (``gap_notice``)::

    {"jsonrpc":"2.0","method":"<ns>_subscription","params":{"subscription":ID,"gap":true}}

(same subscription id, no ``result``): notifications published upstream between the
loss and the new subscription were missed; later ones follow under the same id. An
upstream ending the subscription (an error notification) is relayed as that error and
ends the channel. The pool retries only the idempotent read methods
(``DEFAULT_IDEMPOTENT``); any other call whose upstream connection dropped after it was
sent (e.g. ``eth_sendRawTransaction``) is answered ``-32007`` "upstream connection lost"
(``UPSTREAM_LOST``, data ``{"sent": true}``): it may or may not have run.

Other answers of forwarded calls: no upstream connection within the pool's
``acquire_timeout`` → -32005 "server busy"; no reply within the pool's
``call_timeout`` → -32001. A notification (no id) to a forwarded method is sent as a
call and its reply dropped.

**Counters.** ``Forwarder.upstream_stats()``: forwarded calls by upstream URL and
outcome (``UPSTREAM_OUTCOMES``). The method counters (``Dispatcher.method_stats``)
count a forwarded call as the answer it got: a relayed result or error reply as
success / error, -32005 "server busy" (answered here, or by a peer over its own soft
limits) as refused, -32001 as timeout, -32007 as failure (``fastrpc.errors.ServerBusy``,
``RequestTimedOut``, ``UpstreamLost``). The gateway
forwards names it does not know: an upstream's -32601 counts as an unknown method of
the dispatcher, and a name appears in ``method_stats`` only once an upstream has
answered it (a result or an error other than -32601), so names clients make up never
become entries (and past ``MAX_CACHED_NAMES`` distinct names, calls of names not
cached are not counted per method at all).
"""
from __future__ import annotations

import asyncio
import functools
import logging
import os
from typing import Any, Callable, Collection, Iterable
from urllib.parse import urlsplit

from .errors import (
    METHOD_NOT_FOUND,
    SERVER_BUSY,
    SERVER_BUSY_MESSAGE,
    UPSTREAM_LOST,
    CallTimeout,
    ConnectionLost,
    InvalidParams,
    InvalidReply,
    MethodNotFound,
    NoHealthyEndpoint,
    RequestTimedOut,
    RPCError,
    ServerBusy,
    SubscriptionOverflow,
    UpstreamLost,
)
from .isolation import HALF_OPEN, OPEN, Bulkhead
from .jsonrpc import NO_PARAMS, decode, encode
from .pool import ClientPool, Gap, PoolSubscription
from .server import Server
from .service import ASYNC, ROUTE, UNSUBSCRIBE, Method, Service, Topic

log = logging.getLogger("fastrpc.cluster")

#: Upgrade header of a forwarding node's connections (see the module docstring).
HOP_HEADER = "X-Fastrpc-Hop"
HOP_HEADER_LOWER = HOP_HEADER.lower()

#: Read methods the gateway (and ``peer_pool``) may send again after a connection
#: dropped mid-call: they change nothing, so running one twice is harmless. Anything
#: else (eth_sendRawTransaction, eth_sendTransaction, personal_*, admin_*, ...) is never
#: retried.
DEFAULT_IDEMPOTENT: frozenset[str] = frozenset({
    "web3_clientVersion", "web3_sha3", "net_version", "net_listening", "net_peerCount",
    "eth_chainId", "eth_blockNumber", "eth_syncing", "eth_gasPrice", "eth_maxPriorityFeePerGas",
    "eth_feeHistory", "eth_blobBaseFee", "eth_getBalance", "eth_getCode", "eth_getStorageAt",
    "eth_getTransactionCount", "eth_call", "eth_estimateGas", "eth_createAccessList",
    "eth_getBlockByNumber", "eth_getBlockByHash", "eth_getBlockReceipts",
    "eth_getBlockTransactionCountByNumber", "eth_getBlockTransactionCountByHash",
    "eth_getUncleCountByBlockNumber", "eth_getUncleCountByBlockHash",
    "eth_getTransactionByHash", "eth_getTransactionByBlockNumberAndIndex",
    "eth_getTransactionByBlockHashAndIndex", "eth_getTransactionReceipt", "eth_getLogs",
    "eth_getProof", "eth_protocolVersion", "rpc_modules",
})

#: ``GET /health`` body: every field, its JSON type and meaning. 200 while serving, 503
#: while draining or over the memory soft limit (``status`` says which). The load fields
#: are for peers and load balancers; ``busy`` is what overflow forwarding reads.
HEALTH_SCHEMA: dict[str, tuple[str, str]] = {
    "status": ("string", '"ok", "draining" or "over memory limit"'),
    "connections": ("integer", "WebSocket connections open"),
    "max_connections": ("integer", "Limits.max_connections"),
    "pending_handshakes": ("integer", "connections before their upgrade (and HTTP requests)"),
    "requests_in_flight": ("integer", "requests being answered (async and threaded calls)"),
    "memory_bytes": ("integer", "buffer pool bytes in use plus connection slots"),
    "memory_limit": ("integer", "Limits.memory_limit"),
    "busy": ("boolean", "over a soft limit: new forwardable calls are being forwarded or refused"),
    "calls_in_flight": ("integer", "async/threaded JSON-RPC calls running (forwarded ones included)"),
    "namespaces_busy": ("array of strings", "namespaces at max_concurrency or with the breaker open"),
    "forwarded": ("integer", "calls this node forwarded so far (monotonic)"),
    "refused_busy": ("integer", "calls answered -32005 server busy so far (monotonic)"),
}

#: Methods the gateway caches Method objects for; past it each call builds its own
#: (method names come from clients: the cache must not grow without bound).
MAX_CACHED_NAMES = 4096

#: Bytes of a peer's /health answer the poller reads at most.
MAX_HEALTH_BYTES = 64 * 1024

#: Outcomes of ``Forwarder.upstream_stats()``, per upstream: ``ok`` a reply came back
#: (a result, an error reply, or a reply that was not JSON-RPC: the method counts that
#: one as a failure); ``busy`` answered -32005 here (no connection within the pool's
#: ``acquire_timeout``, or no upstream free); ``lost`` -32007 (the connection dropped
#: after sending); ``timeout`` -32001 (no reply within the pool's ``call_timeout``).
UPSTREAM_OUTCOMES = ("ok", "busy", "lost", "timeout")


def hop_headers() -> list[tuple[str, str]]:
    """The upgrade headers a forwarding pool connects with."""
    return [(HOP_HEADER, "1")]


def peer_pool(urls: str | Iterable[str], size: int = 2, *,
              idempotent: Collection[str] | Callable[[str], bool] | None = DEFAULT_IDEMPOTENT,
              **kw: Any) -> ClientPool:
    """A ``ClientPool`` for forwarding: connects with the hop marker, retries only
    ``idempotent`` methods (default ``DEFAULT_IDEMPOTENT``)."""
    headers = list(kw.pop("headers", ())) + hop_headers()
    return ClientPool(list([urls] if isinstance(urls, str) else urls), size,
                      idempotent=idempotent, headers=headers, **kw)


def gap_notice(namespace: str, sub_id: str) -> bytes:
    """The notification telling a channel's subscribers that notifications were missed."""
    return encode({"jsonrpc": "2.0", "method": f"{namespace}_subscription",
                   "params": {"subscription": sub_id, "gap": True}})


def bulkhead_full(bh: Any) -> bool:
    """The namespace would refuse a call now (-32003 busy or -32002 breaker open),
    tested without taking a slot or a probe. Half-open, once its probes are out, the
    breaker answers -32002 like an open one (``Bulkhead.check``): full too."""
    state = bh.state
    if state == OPEN and bh.clock() - bh.opened_at < bh.cooldown:
        return True
    if state == HALF_OPEN and bh.probes >= bh.half_open_probes:
        return True
    limit = bh.limit
    return limit is not None and bh.active >= limit


def health_load(server: Server) -> dict[str, Any]:
    """The load fields of ``/health`` (see ``HEALTH_SCHEMA``)."""
    d = server.dispatcher
    busy_ns = [s.name for s in server.registry.services() if bulkhead_full(s.bulkhead)]
    over = any(f.over_node_limits() for f in server.forwarders) or server._over_soft_limit()
    return {
        "busy": bool(over or busy_ns),
        "calls_in_flight": d.in_flight if d is not None else 0,
        "namespaces_busy": busy_ns,
        "forwarded": sum(f.counters["forwarded"] for f in server.forwarders),
        "refused_busy": sum(f.counters["busy"] for f in server.forwarders),
    }


def _service(name: str) -> Service:
    """A namespace object for methods and topics that live outside the registry."""
    return Service(name, None)  # type: ignore[arg-type]


def _refuse_busy(params: Any, transport: Any, cid: int) -> Any:
    raise ServerBusy()


#: The namespace of the methods answering -32005 at once (``_Routed.busy``).
_BUSY_SERVICE = _service("")


def _counted(m: Method) -> bool:
    """An upstream answered a call of ``m`` (a result or an error reply)."""
    s = m.stats()
    return bool(s["success"] or s["error"])


class _Routed(Method):
    """A forwardable method in the table (kind ROUTE): ``route(cid)`` picks the local
    Method, the forwarding one, or ``busy`` (answers -32005 at once) for each call.
    The three count their calls; ``stats()`` is their sum, under the method's name."""

    __slots__ = ("local", "remote", "forwarder", "busy")

    def __init__(self, local: Method, remote: Method, forwarder: "Forwarder") -> None:
        super().__init__(local.name, None, local.service, kind=ROUTE)
        self.local = local
        self.remote = remote
        self.forwarder = forwarder
        self.busy = Method(local.name, None, _BUSY_SERVICE, kind=0)
        self.busy.invoke = _refuse_busy

    def stats(self) -> dict[str, Any]:
        out = self.local.stats()
        for other in (self.remote.stats(), self.busy.stats()):
            for k, v in other.items():
                if k == "buckets":
                    out[k] = [a + b for a, b in zip(out[k], v)]
                else:
                    out[k] += v
        return out

    def route(self, cid: int) -> Method:
        f = self.forwarder
        if f.server.is_hop(cid):
            # Forwarded to us: runs here. If we are over a soft limit too, our namespace
            # full or the node-wide ones (the forwarding node's view of our /health was
            # out of date), that is the cluster's busy.
            if bulkhead_full(self.local.bulkhead) or f.over_node_limits():
                f.counters["busy"] += 1
                return self.busy
            return self.local
        return self.remote if f.should_forward(self.local, cid) else self.local


class Forwarder:
    """Forwarding of ``methods`` through ``pool`` on ``server`` (see the module doc).

    ``methods``: a namespace name, a list of method names, or ``"*"`` (every method,
    also names not registered here: what the gateway uses; only with ``when="always"``).
    ``when``: ``"overflow"`` or ``"always"``. ``max_in_flight``: node-wide async/threaded
    calls running past which the node counts as over its soft limit (None: not a
    limit). ``health_interval`` / ``health_timeout``: the peers' ``/health`` poll
    (None: no polling). Methods are looked up when ``forward`` is called: register them
    first."""

    def __init__(self, server: Server, methods: str | Iterable[str], pool: ClientPool, *,
                 when: str = "overflow", max_in_flight: int | None = None,
                 health_interval: float | None = 0.5, health_timeout: float = 1.0) -> None:
        if when not in ("overflow", "always"):
            raise ValueError('when must be "overflow" or "always"')
        if methods == "*" and when != "always":
            raise ValueError('methods="*" forwards names not served here: only with when="always"')
        self.server = server
        self.pool = pool
        self.when = when
        self.always = when == "always"
        self.max_in_flight = max_in_flight
        self.counters = {"forwarded": 0, "busy": 0, "upstream_lost": 0}
        # upstream_stats(): outcome counts per upstream URL (every URL of the pool from
        # the start, "" once a call was refused before any upstream was tried).
        self._upstreams: dict[str, dict[str, int]] = {
            url: dict.fromkeys(UPSTREAM_OUTCOMES, 0) for url in pool.urls}
        #: Forwarding names not served here (methods="*"): an upstream's -32601 is an
        #: unknown method, not a call of a method (see the module docstring).
        self.resolving = methods == "*"
        self.in_flight = 0  #: forwarded calls waiting for their upstream answer
        self._bulkheads: dict[str, Bulkhead] = {}
        self._cache: dict[str, Method] = {}
        self.poller = (HealthPoller(pool, health_interval, health_timeout)
                       if health_interval is not None else None)
        if server._hops is None:
            server._hops = set()
        registry = server.registry
        if methods == "*":
            server.dispatcher.resolve = self._resolve
            server.dispatcher.resolved_methods = self.resolved_methods
            return
        if isinstance(methods, str):
            svc = registry.get_service(methods)
            if svc is None:
                raise ValueError(f"no namespace {methods!r}")
            names = [n for n, m in svc.methods.items() if m.kind not in (3, 4)]  # not (un)subscribe
        else:
            names = list(methods)
        for name in names:
            local = registry.table.get(name)
            remote = self._remote(name)
            if local is None:
                if not self.always:
                    raise ValueError(f"{name!r} is not served here: overflow needs a local method")
                registry.table[name] = remote
                continue
            if isinstance(local, _Routed):
                raise ValueError(f"{name!r} is already forwarded")
            registry.table[name] = remote if self.always else _Routed(local, remote, self)

    # --- choosing ----------------------------------------------------------------------

    def over_node_limits(self) -> bool:
        """Over the node-wide soft limits (calls in flight, memory)."""
        if self.max_in_flight is not None:
            server = self.server
            local = server.dispatcher.in_flight - sum(f.in_flight for f in server.forwarders)
            if local >= self.max_in_flight:
                return True
        return self.server._over_soft_limit()

    def should_forward(self, local: Method, cid: int) -> bool:
        if self.server.is_hop(cid):
            return False  # forwarded to us already: runs here (or gets the local error)
        return bulkhead_full(local.bulkhead) or self.over_node_limits()

    # --- the forwarding methods -------------------------------------------------------

    def _remote(self, name: str) -> Method:
        """An async Method that sends ``name`` upstream; its own bulkhead (the local
        namespace's may be the full one), unlimited, timeouts from the pool."""
        ns = name.partition("_")[0] if "_" in name else ""
        bh = self._bulkheads.get(ns)
        svc = _service(ns)
        if bh is None:
            bh = self._bulkheads[ns] = svc.bulkhead
            bh.configure(timeout=None)  # the pool's call_timeout bounds the call
        m = Method(name, None, svc, kind=ASYNC)
        m.bulkhead = bh
        m.invoke = functools.partial(self._invoke, name)
        return m

    def _invoke(self, name: str, params: Any, transport: Any, cid: int) -> Any:
        return self.call(name, [] if params is NO_PARAMS else params)

    def _resolve(self, name: str) -> Method | None:
        m = self._cache.get(name)
        if m is None:
            m = self._remote(name)
            if len(self._cache) < MAX_CACHED_NAMES:
                self._cache[name] = m
        return m

    def resolved_methods(self) -> list[Method]:
        """The methods ``_resolve`` keeps that an upstream has answered (the
        dispatcher's ``resolved_methods``: what ``method_stats`` shows of them)."""
        return [m for m in self._cache.values() if _counted(m)]

    async def call(self, method: str, params: Any) -> Any:
        """Send one call upstream; the answer, or an RPCError to answer with."""
        pool = self.pool
        if not self.always and pool.free() == 0:
            self.counters["busy"] += 1
            self._count("", "busy")
            raise ServerBusy()
        self.counters["forwarded"] += 1
        self.in_flight += 1
        trace: list[str] = []  # the upstreams tried, in order: the last one answered
        outcome = None  # stays None if cancelled (the client left): no outcome
        try:
            value = await pool.call(method, params=params, trace=trace)
            outcome = "ok"
            return value
        except RPCError as e:
            outcome = "ok"
            # Relayed unchanged, byte for byte; two answers count as what they say: a
            # peer's own "server busy" (the call ran nowhere) and, for names not served
            # here, "method not found".
            if e.code == SERVER_BUSY and e.message == SERVER_BUSY_MESSAGE and e.data is None:
                raise ServerBusy() from None
            if e.code == METHOD_NOT_FOUND and self.resolving:
                raise MethodNotFound(e.code, e.message, e.data) from None
            raise
        except InvalidReply:
            outcome = "ok"
            raise
        except NoHealthyEndpoint:
            outcome = "busy"
            self.counters["busy"] += 1
            raise ServerBusy() from None
        except ConnectionLost as e:
            outcome = "lost"
            self.counters["upstream_lost"] += 1
            raise UpstreamLost(e.sent) from None
        except CallTimeout:
            outcome = "timeout"
            raise RequestTimedOut() from None
        finally:
            self.in_flight -= 1
            if outcome is not None:
                self._count(trace[-1] if trace else "", outcome)

    def _count(self, url: str, outcome: str) -> None:
        d = self._upstreams.get(url)
        if d is None:  # "" (or a URL the pool did not list at the start)
            d = self._upstreams[url] = dict.fromkeys(UPSTREAM_OUTCOMES, 0)
        d[outcome] += 1

    def upstream_stats(self) -> dict[str, dict[str, int]]:
        """Forwarded calls by upstream URL, then by outcome (``UPSTREAM_OUTCOMES``),
        one outcome per call, counted on the upstream it was last sent to (an
        idempotent call resent after a drop counts once, where it ended). Key ``""``:
        calls answered -32005 before any upstream was tried (none free). Every URL of
        the pool is present from the start. ``counters`` keeps the totals it always
        had (``forwarded``, ``busy``, ``upstream_lost``)."""
        return {url: dict(d) for url, d in self._upstreams.items()}

    # --- lifetime -------------------------------------------------------------------

    def start(self) -> None:
        if self.poller is not None:
            self.poller.start()

    async def close(self) -> None:
        if self.poller is not None:
            await self.poller.close()


class HealthPoller:
    """GETs every endpoint's ``/health`` each ``interval`` seconds and marks the busy
    ones in the pool (``pool.set_busy``). ``ws://`` endpoints only (``wss://`` ones are
    not polled). An endpoint that does not answer is left to the pool's own health."""

    def __init__(self, pool: ClientPool, interval: float = 0.5, timeout: float = 1.0) -> None:
        self.pool = pool
        self.interval = interval
        self.timeout = timeout
        self.last: dict[str, Any] = {}  #: url -> last body (dict) or an error string
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="fastrpc-health-poll")

    async def close(self) -> None:
        t, self._task = self._task, None
        if t is not None:
            t.cancel()
            await asyncio.gather(t, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            urls = [u for u in self.pool.urls if u.startswith("ws://")]
            await asyncio.gather(*(self.poll(u) for u in urls), return_exceptions=True)
            await asyncio.sleep(self.interval)

    async def poll(self, url: str) -> None:
        try:
            status, body = await asyncio.wait_for(self._get(url), self.timeout)
        except (OSError, ValueError, asyncio.TimeoutError) as e:
            self.last[url] = f"{type(e).__name__}: {e}"
            return
        self.last[url] = body
        busy = status != 200 or (type(body) is dict and bool(body.get("busy")))
        self.pool.set_busy(url, busy)

    async def _get(self, url: str) -> tuple[int, Any]:
        u = urlsplit(url)
        host, port = u.hostname or "127.0.0.1", u.port or 80
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET /health HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while len(data) <= MAX_HEALTH_BYTES:
                chunk = await reader.read(MAX_HEALTH_BYTES)
                if not chunk:
                    break
                data += chunk
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        try:
            parsed = decode(body) if body else None
        except Exception:
            parsed = None
        return status, parsed


# --- the gateway -------------------------------------------------------------------------


class _GwTopic(Topic):
    """A topic of the gateway: its channel key is the subscribe call's params after
    the topic name, encoded (any JSON the upstream accepts)."""

    __slots__ = ()

    def key(self, extra: list[Any], transport: Any, cid: int) -> Any:
        return encode(extra)


class _Upstream:
    """One upstream subscription and the local channel it feeds."""

    __slots__ = ("ns", "params", "topic", "key", "ready", "task", "waiters", "sub")

    def __init__(self, ns: str, params: list[Any], topic: _GwTopic, key: bytes,
                 ready: asyncio.Future[None]) -> None:
        self.ns = ns
        self.params = params
        self.topic = topic
        self.key = key
        self.ready = ready
        self.task: asyncio.Task[None] | None = None
        self.waiters = 0  #: subscribe calls between "upstream ready" and their local subscribe
        self.sub: PoolSubscription | None = None


class Gateway(Server):
    """A JSON-RPC server forwarding every method to ``upstreams`` (see the module doc).

    ``pool_size``: connections per upstream. ``idempotent``: methods the pool may send
    again after a drop (default ``DEFAULT_IDEMPOTENT``). ``pool_options``: more
    ``ClientPool`` keyword arguments (``call_timeout``, ``acquire_timeout``, ...).
    Other keyword arguments go to ``Server`` (``limits``, ``origins``, ``auth``, ...).
    The upstream pool is ``gateway.upstream``; it starts with ``start()`` and closes
    with ``stop()``."""

    def __init__(self, upstreams: str | Iterable[str], *, pool_size: int = 2,
                 idempotent: Collection[str] | Callable[[str], bool] | None = DEFAULT_IDEMPOTENT,
                 pool_options: dict[str, Any] | None = None, health_interval: float | None = None,
                 **server_kw: Any) -> None:
        super().__init__(**server_kw)
        opts = dict(pool_options or {})
        opts.setdefault("subscription_buffer", 65_536)
        self.upstream = peer_pool(upstreams, pool_size, idempotent=idempotent, **opts)
        # rpc_modules is the upstream's to answer.
        self.registry.table.pop("rpc_modules", None)
        self.forwarder = self.forward("*", self.upstream, when="always", health_interval=health_interval)
        self.dispatcher.resolve = self._resolve
        self.dispatcher.resolved_methods = self._resolved_methods
        if self._http is not None:
            self._http.dispatcher.resolve = self._resolve_http
            self._http.dispatcher.resolved_methods = self._resolved_methods
        self._services: dict[str, Service] = {}
        self._special: dict[str, Method] = {}
        self._up: dict[tuple[str, bytes], _Upstream] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.gaps_sent = 0

    # --- methods ------------------------------------------------------------------

    def _resolve(self, name: str) -> Method | None:
        ns, sep, short = name.rpartition("_")
        if sep and ns and short in ("subscribe", "unsubscribe") and "_" not in ns:
            m = self._special.get(name)
            if m is None:
                # Not self._service(ns): a name from the network must not leave a
                # namespace behind (only an open upstream subscription keeps one).
                svc = _service(ns)
                if short == "subscribe":
                    m = Method(name, None, svc, kind=ASYNC)
                    m.bulkhead = self.forwarder._remote(name).bulkhead
                    m.invoke = functools.partial(self._invoke_subscribe, ns)
                else:
                    m = Method(name, None, svc, kind=UNSUBSCRIBE)
                if len(self._special) < MAX_CACHED_NAMES:
                    self._special[name] = m
            return m
        return Forwarder._resolve(self.forwarder, name)

    def _resolved_methods(self) -> list[Method]:
        """What ``method_stats`` shows of the names the gateway resolves: forwarded
        methods and ``<ns>_subscribe`` an upstream answered, and ``<ns>_unsubscribe``
        of those namespaces (it is answered here: any name would do)."""
        out = self.forwarder.resolved_methods()
        subscribed = {m.service.name for m in self._special.values() if m.kind == ASYNC and _counted(m)}
        out += [m for m in self._special.values()
                if (m.kind == ASYNC and _counted(m)) or (m.kind == UNSUBSCRIBE and m.service.name in subscribed)]
        return out

    def _resolve_http(self, name: str) -> Method | None:
        short = name.rpartition("_")[2]
        if short in ("subscribe", "unsubscribe"):
            return None  # no subscriptions over HTTP (go-ethereum answers the same)
        return Forwarder._resolve(self.forwarder, name)

    def _service(self, ns: str) -> Service:
        svc = self._services.get(ns)
        if svc is None:
            svc = self._services[ns] = _service(ns)
        return svc

    def _invoke_subscribe(self, ns: str, params: Any, transport: Any, cid: int) -> Any:
        if type(params) is not list or not params or type(params[0]) is not str:
            raise InvalidParams("want params [topic, ...topic params]")
        return self._subscribe(ns, params, cid)

    async def _subscribe(self, ns: str, params: list[Any], cid: int) -> str:
        key = (ns, encode(params))
        up = self._up.get(key)
        if up is None:
            svc = self._service(ns)
            topic = svc.topics.get(params[0])
            if topic is None:
                topic = svc.topics[params[0]] = _GwTopic(ns, params[0])
            loop = asyncio.get_running_loop()
            up = self._up[key] = _Upstream(ns, params, topic, encode(params[1:]), loop.create_future())
            up.task = loop.create_task(self._pump(up), name=f"fastrpc-gateway {ns} {params[0]}")
        up.waiters += 1
        try:
            await asyncio.shield(up.ready)
            return self.dispatcher.subscriptions.subscribe(cid, self._service(ns), params)  # type: ignore[no-any-return]
        finally:
            up.waiters -= 1

    def _subscribers(self, up: _Upstream) -> list[int]:
        return self.dispatcher.subscriptions.subscribers(up.topic, up.key)  # type: ignore[no-any-return]

    async def _pump(self, up: _Upstream) -> None:
        """Open the upstream subscription and relay what it yields to the channel."""
        subs = self.dispatcher.subscriptions
        sub = up.sub = self.upstream.subscribe(up.ns, up.params[0], *up.params[1:])
        try:
            try:
                await sub
            except RPCError as e:
                cls = MethodNotFound if e.code == METHOD_NOT_FOUND else RPCError
                up.ready.set_exception(cls(e.code, e.message, e.data))
                return
            except (ConnectionLost, NoHealthyEndpoint):
                up.ready.set_exception(ServerBusy())
                return
            up.ready.set_result(None)
            try:
                async for item in sub:
                    if type(item) is Gap:
                        cids = self._subscribers(up)
                        sub_id = subs.channel_id(up.topic, up.key)
                        if cids and sub_id is not None:
                            self.gaps_sent += len(cids)
                            self.send_many(cids, gap_notice(up.ns, sub_id), 2**62)
                        continue
                    if not self.dispatcher.publish(up.topic, item, up.key) and not up.waiters \
                            and not self._subscribers(up):
                        return  # nobody left: end the upstream subscription
            except (RPCError, SubscriptionOverflow) as e:
                self._end_channel(up, e)
        except asyncio.CancelledError:
            pass
        finally:
            if not up.ready.done():
                up.ready.set_exception(ServerBusy())
            if self._up.get((up.ns, encode(up.params))) is up:
                del self._up[(up.ns, encode(up.params))]
            svc = self._services.get(up.ns)
            if svc is not None and not any(u.topic is up.topic for u in self._up.values()):
                svc.topics.pop(up.topic.name, None)
                if not svc.topics:
                    del self._services[up.ns]
            try:
                await sub.aclose()
            except Exception:  # pragma: no cover - the upstream connection is going anyway
                pass

    def _end_channel(self, up: _Upstream, e: BaseException) -> None:
        """The upstream ended the subscription: tell the subscribers, end their channel."""
        subs = self.dispatcher.subscriptions
        sub_id = subs.channel_id(up.topic, up.key)
        if sub_id is None:
            return
        code = e.code if isinstance(e, RPCError) else UPSTREAM_LOST
        message = e.message if isinstance(e, RPCError) else "upstream subscription overflowed"
        data = encode({"jsonrpc": "2.0", "method": f"{up.ns}_subscription",
                       "params": {"subscription": sub_id, "error": {"code": code, "message": message}}})
        for cid in self._subscribers(up):
            self.send(cid, data)
            subs.unsubscribe_ids(cid, [sub_id])

    async def _sweep(self) -> None:
        """End upstream subscriptions whose last subscriber left (unsubscribed or closed)
        while no notification came to notice it."""
        while True:
            await asyncio.sleep(1.0)
            for up in list(self._up.values()):
                if up.ready.done() and not up.waiters and not self._subscribers(up) and up.task is not None:
                    up.task.cancel()

    def upstream_subscriptions(self) -> int:
        """Upstream subscriptions open now (one per distinct channel)."""
        return sum(1 for up in self._up.values() if up.ready.done() and not up.ready.exception())

    # --- lifetime -----------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, **kw: Any) -> None:  # type: ignore[override]
        await self.upstream.start()
        await super().start(host, port, **kw)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep(), name="fastrpc-gateway-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        tasks = [up.task for up in self._up.values() if up.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await super().stop()
        await self.upstream.close()


#: Environment variable carrying the gateway's settings to ``--workers`` processes.
GATEWAY_ENV = "FASTRPC_GATEWAY"


def gateway_from_env() -> Gateway:
    """The app ``fastrpc gateway --workers N`` runs in each worker: a Gateway built
    from ``$FASTRPC_GATEWAY`` (JSON: ``{"upstreams": [...], "pool_size": n}``)."""
    cfg = decode(os.environ[GATEWAY_ENV].encode())
    from .limits import Limits

    limits = Limits(**cfg.get("limits", {}))
    return Gateway(cfg["upstreams"], pool_size=cfg.get("pool_size", 2), limits=limits)


__all__ = [
    "DEFAULT_IDEMPOTENT",
    "HEALTH_SCHEMA",
    "HOP_HEADER",
    "UPSTREAM_OUTCOMES",
    "Forwarder",
    "Gateway",
    "HealthPoller",
    "bulkhead_full",
    "gap_notice",
    "hop_headers",
    "peer_pool",
]
