"""Server: runs the compiled Reactor inside the caller's running event loop.

The server adds meaning around the core: the HTTP answer (``handshake``), admission
(max_connections, per-IP cap, memory ceiling), one reaper task for every timeout,
metrics, and graceful shutdown. It installs no signal handlers and keeps no global
state, so a node process can embed it next to its own work.

Low-level use (what ``examples/echo_server.py`` does)::

    class Echo:
        def on_text(self, cid, data):   return data        # reply: same message type
        def on_binary(self, cid, data): return data
        def on_close(self, cid, code):  pass

    async with Server(Echo()) as server:
        await server.start("127.0.0.1", 8546)
        ...

``on_text`` / ``on_binary`` get every whole message as ``bytes`` and may return a
reply (``bytes``) or ``None``; they run on the loop and must not block. Replies from
later (async work) go through ``server.send(cid, data)``.

Without a handler the server speaks JSON-RPC 2.0 (``fastrpc.dispatch.Dispatcher``)::

    server = Server()

    @server.method("eth_blockNumber")
    def block_number() -> str:
        return "0x10d4f"

    server.register("chain", ChainService())      # chain_<public method>
    server.topic("chain", "newHeads")             # chain_subscribe("newHeads")
    server.publish("chain.newHeads", head)        # "<namespace>.<topic>"; on the loop thread

A JSON-RPC server also answers JSON-RPC over HTTP ``POST`` on the same port
(``fastrpc.http``; ``http_rpc=False`` turns it off) and serves ``rpc_modules``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import socket
from types import SimpleNamespace
from typing import Any, Callable, Protocol

from . import _core
from .agent import agent_line, start_agent
from .connlog import DEFAULT_BURST, DEFAULT_RATE, ConnectionLog
from .dispatch import Dispatcher
from .service import Registry
from .handshake import (
    DEFAULT_METRICS_PATH,
    HTTP_CONTENT_TOO_LARGE,
    HTTP_FORBIDDEN,
    ORIGIN_NOT_ALLOWED,
    HandshakePolicy,
    handle_request,
    reject,
    too_large,
)
from .http import HttpRpc
from .limits import Limits
from .looplag import LoopLag
from .metrics import Page as MetricsPage
from .metrics import available as metrics_available
from .proxies import TrustedProxies

log = logging.getLogger("fastrpc.server")

#: Descriptors the process needs besides client sockets: listeners, epoll, logs, ...
FD_RESERVE = 32


class MessageHandler(Protocol):
    def on_text(self, cid: int, data: bytes) -> bytes | None: ...
    def on_binary(self, cid: int, data: bytes) -> bytes | None: ...
    def on_close(self, cid: int, code: int) -> None: ...


#: ``Reactor.sweep`` cannot turn its close-timeout check off (0 drops at once), so
#: ``close_timeout=None`` passes the largest uint32: the check then fires only in the one
#: millisecond every 49.7 days at which the wrapped difference equals it, i.e. practically never.
CLOSE_WAIT_FOREVER_MS = 2**32 - 1


def _ms(seconds: float | None) -> int:
    """A sweep timeout in ms: None → 0 (the sweep's "check off"); never 0 for a positive value."""
    return 0 if seconds is None else max(1, int(seconds * 1000))


def _close_ms(seconds: float | None) -> int:
    """``close_timeout`` in ms for the sweep: None → wait forever; 0 → drop at the next sweep."""
    if seconds is None:
        return CLOSE_WAIT_FOREVER_MS
    return 0 if seconds == 0 else _ms(seconds)


def _rss_bytes() -> int:
    """The process's resident set: /proc/self/statm (resident pages × page size), or
    psutil where /proc is not mounted."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil  # the test extra has it; a Linux host without /proc has bigger problems

        return int(psutil.Process().memory_info().rss)


class Server:
    """A WebSocket server whose connections live in the compiled connection table.

    ``handler``: the message handler (see the module docstring).
    ``limits``: every limit and timeout (``fastrpc.limits.Limits``).
    ``origins``: Origin allowlist; ``None`` allows every origin (like websockets).
    ``auth``: ``auth(path, headers) -> bool | int | None`` run on each upgrade request;
    synchronous (it runs on the loop: keep it fast, cache what needs I/O).
    ``keep_headers``: keep each connection's request headers for ``headers(cid)``
    (costs memory per connection; off by default).
    ``namespaces`` (JSON-RPC mode): the namespaces exposed; None exposes all.
    ``on_slow`` (JSON-RPC mode): a subscriber over ``max_subscriber_queue`` gets a
    -32004 error notification and loses the subscription (``"notify"``) or is closed
    with 1008 (``"close"``).
    ``http_rpc`` (JSON-RPC mode): also answer JSON-RPC over HTTP ``POST`` on the same port,
    with the same methods and limits (``fastrpc.http``).
    ``trusted_proxies``: networks (``["127.0.0.1", "10.0.0.0/8"]``) whose ``X-Forwarded-For``
    names the real client (``fastrpc.proxies``): the per-IP cap and ``Context.peer`` then
    apply to that client; ``X-Forwarded-For`` from any other peer is ignored.
    ``agent_port``: also serve the HAProxy agent check (``fastrpc.agent``) on this port of
    the host ``start()`` listens on (0 picks one: ``agent_port`` after start), for as long
    as the server runs. ``agent_max_inflight``: requests in flight at which the agent
    reports no spare capacity (default ``max_connections``).
    ``metrics``: the path of the Prometheus page (``fastrpc.metrics``), served when
    ``prometheus_client`` is installed (the ``metrics`` extra); ``None`` serves none (use
    ``fastrpc.metrics.Collector(server)`` in a registry of your own).
    ``metrics_registry``: serve this ``prometheus_client`` registry on that path, with
    fastrpc's collector registered into it (default: a registry of fastrpc's figures and
    the process collectors).
    ``log_rate`` / ``log_burst``: the connection log's budget (``fastrpc.connlog``: one
    line per refused or abnormally ended connection on the ``fastrpc.connections``
    logger), lines per second and lines at once; ``log_rate=0`` turns it off.
    """

    def __init__(
        self,
        handler: MessageHandler | None = None,
        *,
        limits: Limits | None = None,
        origins: list[str | None] | None = None,
        auth: Callable[[str, list[tuple[str, str]]], Any] | None = None,
        keep_headers: bool = False,
        subprotocols: tuple[str, ...] = (),
        namespaces: list[str] | None = None,
        on_slow: str = "notify",
        http_rpc: bool = True,
        trusted_proxies: list[Any] | None = None,
        agent_port: int | None = None,
        agent_max_inflight: int | None = None,
        metrics: str | None = DEFAULT_METRICS_PATH,
        metrics_registry: Any = None,
        log_rate: float = DEFAULT_RATE,
        log_burst: int = DEFAULT_BURST,
    ) -> None:
        self.limits = limits = limits or Limits()
        self.connlog = ConnectionLog(log_rate, log_burst)
        self.pool = _core.BufferPool(limits.pool_size_classes, limit=limits.memory_limit)
        self.reactor = _core.Reactor(
            self.pool,
            limits.max_connections,
            limits.max_pending_handshakes,
            limits.max_connections_per_ip,
            max_message_size=limits.max_message_size,
            max_fragments=limits.max_fragments,
            max_handshake_size=limits.max_handshake_size,
            max_inflight=limits.max_requests_in_flight,
            write_high_water=limits.write_high_water,
            max_pending_output=limits.max_pending_output,
        )
        http_rpc = http_rpc and handler is None
        # The parser's own size check must match the core's, or a raised limit still
        # gets 431 above the parser's default.
        self._policy = HandshakePolicy(
            allowed_origins=origins, auth=auth, subprotocols=tuple(subprotocols),
            max_handshake_size=limits.max_handshake_size,
            max_http_body=limits.http_body_limit if http_rpc else None,
            metrics_path=metrics,
        )
        #: Event-loop lag, measured by the reaper's own wake-ups (``fastrpc.looplag``).
        self.loop_lag = LoopLag()
        # /metrics (fastrpc.metrics): served when prometheus_client is installed; a
        # registry passed in means the caller wants it, so its absence is an error then.
        self._metrics: MetricsPage | None = None
        if metrics is not None and (metrics_registry is not None or metrics_available()):
            self._metrics = MetricsPage(self, metrics_registry)
        elif metrics_registry is not None:
            raise ValueError("metrics_registry needs a metrics path")
        self._keep_headers = keep_headers
        self._headers: dict[int, list[tuple[str, str]]] = {}
        self._proxies = TrustedProxies(trusted_proxies) if trusted_proxies else None
        # cid -> the proxy's own address, for a connection from a trusted proxy still in
        # the HTTP phase: set_peer replaced the slot's address, and the next request on a
        # kept-alive connection may come from another client. Dropped at the upgrade.
        self._proxy_peer: dict[int, tuple[str, int]] = {}
        self._agent_port = agent_port
        self._agent_max_inflight = agent_max_inflight or limits.max_connections
        self._agent: asyncio.Server | None = None
        self._sockets: list[socket.socket] = []
        self._reaper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._over_rss = False
        self._started = False
        #: Connections that are forwarded hops (set up by ``forward()``; None: no forwarding).
        self._hops: set[int] | None = None
        #: Forwarding rules (``forward()``); their load figures go into ``/health``.
        self.forwarders: list[Any] = []
        self.refused = {"max_connections": 0, "per_ip": 0, "memory": 0, "draining": 0, "http_body": 0,
                        "origin": 0}
        r = self.reactor
        r.http_431 = too_large()
        r.http_503 = reject(503, "too many connections", [("Retry-After", str(limits.retry_after))])
        r.http_500 = reject(500, "internal server error")
        r.on_handshake = self._on_handshake
        r.on_close = self._on_close
        r.on_accept_paused = self._on_accept_paused
        if self.connlog.enabled:
            r.on_event = self.connlog.on_event  # rare ends only: never per message
        self.dispatcher: Any = None
        self.registry: Any = None
        self._http: HttpRpc | None = None
        if handler is None:
            self.registry = Registry(namespaces)
            self.registry.add_rpc_modules()  # go-ethereum's namespace listing, always served
            # The dispatcher calls straight into the compiled core: no Python layer
            # between a reply and its frame.
            transport = SimpleNamespace(
                send=r.send, send_many=r.send_many, begin=r.begin, end=r.end,
                close=r.close, peer=r.peer, headers=self.headers,
            )
            self.dispatcher = Dispatcher(transport, limits, registry=self.registry, on_slow=on_slow)
            handler = self.dispatcher
            if http_rpc:
                self._http = HttpRpc(r, self.registry, limits, keep_headers=keep_headers,
                                     draining=lambda: self._draining)
                r.on_body = self._http.on_body
        r.on_http_close = self._on_http_close
        self.handler: Any = None
        self.set_handler(handler)

    # --- JSON-RPC mode ---------------------------------------------------------------

    def _rpc(self) -> Any:
        if self.registry is None:
            raise RuntimeError("this server has its own message handler, not JSON-RPC")
        return self.registry

    def method(self, name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: serve a function as method ``name`` (default: its own name)."""
        return self._rpc().method(name)  # type: ignore[no-any-return]

    def register(self, namespace: str, obj: object, **settings: Any) -> Any:
        """Serve ``obj``'s public methods as ``<namespace>_<name>``; ``settings`` are the
        namespace's bulkhead (threaded, timeout, max_concurrency, failure_threshold,
        cooldown, half_open_probes)."""
        return self._rpc().register(namespace, obj, **settings)

    def service(self, namespace: str, **settings: Any) -> Any:
        """Configure a namespace's bulkhead before (or without) registering an object."""
        return self._rpc().service(namespace, **settings)

    def topic(self, namespace: str, name: str, **kw: Any) -> Any:
        """Declare a subscription topic: clients call ``<namespace>_subscribe(name)``."""
        return self._rpc().topic(namespace, name, **kw)

    def publish(self, topic: Any, payload: Any, key: Any = None) -> int:
        """Send ``payload`` to every subscriber of ``topic``, encoded once; never waits.
        Returns the subscribers written to."""
        self._rpc()
        return int(self.dispatcher.publish(topic, payload, key))

    def forward(self, methods: Any, pool: Any, *, when: str = "overflow", **kw: Any) -> Any:
        """Send calls of ``methods`` (a namespace, or a list of method names) through
        ``pool`` (a ``ClientPool``) and relay the answers: ``when="overflow"`` only while
        this node is over its soft limits, ``"always"`` for every call. See
        ``fastrpc.cluster.Forwarder`` for the options; returns it. Start the pool
        (``await pool.start()``) before calls arrive."""
        from .cluster import Forwarder

        self._rpc()
        fwd = Forwarder(self, methods, pool, when=when, **kw)
        self.forwarders.append(fwd)
        return fwd

    def set_handler(self, handler: MessageHandler) -> None:
        self.handler = handler
        self.reactor.on_text = handler.on_text
        self.reactor.on_binary = getattr(handler, "on_binary", handler.on_text)

    # --- lifecycle -----------------------------------------------------------------

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, reuse_port: bool = False, backlog: int = 4096
    ) -> None:
        """Listen on host:port (port 0 picks a free one: see ``port``) in the running loop.

        Raises the process's soft RLIMIT_NOFILE to ``max_connections`` + ``FD_RESERVE``
        when it is lower and the hard limit allows; ValueError when the hard limit does not."""
        if self._started:
            raise RuntimeError("server already started")
        if self.handler is None:
            raise RuntimeError("no message handler: pass one to Server() or set_handler()")
        self._ensure_open_files(self.limits.max_connections + FD_RESERVE)
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, addr = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
            sock.listen(backlog)
            sock.setblocking(False)
            self.reactor.add_listener(sock.fileno())
        except BaseException:
            sock.close()
            raise
        self._sockets.append(sock)
        if self._agent_port is not None:
            try:
                self._agent = await start_agent(self.agent_reply, host, self._agent_port, reuse_port=reuse_port)
            except BaseException:
                self._sockets.remove(sock)
                self.reactor.remove_listeners()
                sock.close()
                raise
        if self._metrics is not None and self._metrics.multiprocess:
            self._metrics.setup()  # the mirror writes this worker's files from now on
        elif self._metrics is None and self._policy.metrics_path is not None:
            log.info("%s not served: install prometheus_client (pip install 'fastrpc[metrics]')",
                     self._policy.metrics_path)
        self._loop = loop
        # Normal ends (idle, clean closes) reach Python only when they would be logged.
        self.reactor.event_mask = self.connlog.event_mask()
        self.reactor.attach(loop)
        self._reaper = loop.create_task(self._reap(), name="fastrpc-reaper")
        for fwd in self.forwarders:
            fwd.start()  # the peers' /health polls
        self._started = True

    def _ensure_open_files(self, needed: int) -> None:
        """Raise the soft RLIMIT_NOFILE to ``needed`` if the hard limit allows it (desktops
        start processes at soft 1,024 under a far higher hard limit, and an unprivileged
        process may raise its own soft limit up to the hard one); else refuse, changing nothing."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft >= needed:
            return
        if hard == resource.RLIM_INFINITY or hard >= needed:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
                log.info("raised the soft RLIMIT_NOFILE from %d to %d for max_connections", soft, needed)
                return
            except (ValueError, OSError):  # e.g. above fs.nr_open under an unlimited hard limit
                pass
        raise ValueError(
            f"max_connections={self.limits.max_connections} needs more open files than "
            f"this process may have (RLIMIT_NOFILE soft {soft}, hard {hard}, {FD_RESERVE} kept "
            "in reserve): lower max_connections or raise the hard limit (ulimit -Hn, "
            "limits.conf, systemd LimitNOFILE=)"
        )

    @property
    def port(self) -> int:
        return int(self._sockets[0].getsockname()[1])

    @property
    def agent_port(self) -> int | None:
        """The port the agent check listens on (None: no agent)."""
        if self._agent is None or not self._agent.sockets:
            return None
        return int(self._agent.sockets[0].getsockname()[1])

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def begin_drain(self) -> None:
        """Keep listening but answer every new upgrade with 503 and ``/health`` with
        503, so a load balancer in front (nginx, HAProxy) takes this node out before
        ``stop()``; connections already open carry on."""
        self._draining = True

    @property
    def draining(self) -> bool:
        return self._draining

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish (up to drain_timeout), close
        every connection with 1001 (waiting up to close_timeout for the peers' close
        frames), then drop what is left. Returns with the table empty. Call
        ``begin_drain()`` first, some health-check intervals earlier, to let a load
        balancer see ``/health`` 503 before the port closes.

        A timeout of None waits without limit (``drain_timeout=None``: until every
        request in flight is answered; ``close_timeout=None``: until every peer answered
        or went away); 0 does not wait."""
        if not self._started:
            return
        self._draining = True
        r = self.reactor
        r.remove_listeners()
        for s in self._sockets:
            s.close()
        self._sockets.clear()
        http = self._http
        await self._wait(lambda: r.inflight_total == 0 and (http is None or http.in_flight == 0),
                         self.limits.drain_timeout)
        r.close_all(1001, b"server shutting down")
        await self._wait(lambda: len(r) == 0, self.limits.close_timeout)
        r.abort_all()
        if self._reaper is not None:
            self._reaper.cancel()
            try:
                await self._reaper
            except asyncio.CancelledError:
                pass
            self._reaper = None
        r.detach()
        self._headers.clear()
        for fwd in self.forwarders:
            await fwd.close()
        self._proxy_peer.clear()
        if self._agent is not None:  # kept to the end: it says "drain" while connections close
            self._agent.close()
            await self._agent.wait_closed()
            self._agent = None
        if self.dispatcher is not None:
            await self.dispatcher.aclose()  # calls still running past the drain: cancelled
            if http is not None:
                await http.aclose()
            self.registry.close()
        self.pool.trim()
        self.connlog.flush(force=True)
        self._started = False

    async def _wait(self, done: Callable[[], bool], timeout: float | None) -> None:
        """Poll ``done`` until it holds or ``timeout`` seconds pass (None: no limit)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not done() and (deadline is None or loop.time() < deadline):
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- the reaper: one task replaces every per-connection timer -----------------

    def _tick(self) -> float:
        """Seconds between sweeps: a quarter of the shortest timeout, within [0.02, 1]."""
        lim = self.limits
        # None is off; close_timeout=0 needs no faster sweep (the next one drops).
        timeouts = [
            t
            for t in (lim.handshake_timeout, lim.idle_timeout, lim.ping_interval, lim.pong_timeout, lim.close_timeout)
            if t is not None and t > 0
        ]
        return max(0.02, min([1.0] + [t / 4 for t in timeouts]))

    async def _reap(self) -> None:
        lim = self.limits
        tick = self._tick()
        args = (
            _ms(lim.handshake_timeout),
            _ms(lim.idle_timeout),
            _ms(lim.ping_interval),
            _ms(lim.pong_timeout),
            _close_ms(lim.close_timeout),
        )
        n = 0
        loop = asyncio.get_running_loop()
        lag = self.loop_lag
        page = self._metrics
        while True:
            t0 = loop.time()
            await asyncio.sleep(tick)
            lag.observe(loop.time() - t0 - tick)
            try:
                self.reactor.sweep(*args)
                self.connlog.flush()
                n += 1
                if n % max(1, int(1 / tick)) == 0:  # about once a second
                    if page is not None and page.mirror is not None:
                        page.mirror.sync()
                    if lim.rss_limit is not None:
                        self._over_rss = _rss_bytes() > lim.rss_limit
                    if self.pool.bytes_in_use < self.pool.bytes_reserved // 2:
                        self.pool.trim()
            except Exception:
                log.exception("reaper sweep failed")

    # --- admission and the HTTP side ----------------------------------------------

    def memory_in_use(self) -> int:
        """Bytes the server holds: pooled blocks in use plus the slots in use."""
        return self.pool.bytes_in_use + len(self.reactor) * _core.SLOT_SIZE

    def _over_soft_limit(self) -> bool:
        return self._over_rss or self.memory_in_use() > self.limits.memory_limit * self.limits.memory_soft_ratio

    def _admit(self, cid: int) -> tuple[int, str, list[tuple[str, str]]] | None:
        retry = [("Retry-After", str(self.limits.retry_after))]
        if self._draining:
            self.refused["draining"] += 1
            return (503, "server shutting down", retry)
        verdict = self.reactor.admission(cid)
        if verdict == 1:
            self.refused["max_connections"] += 1
            return (503, "too many connections", retry)
        if verdict == 2:
            self.refused["per_ip"] += 1
            return (429, "too many connections from this address", retry)
        if self._over_soft_limit():
            self.refused["memory"] += 1
            return (503, "server over its memory limit", retry)
        return None

    def _admit_http(self) -> tuple[int, str, list[tuple[str, str]]] | None:
        # A JSON-RPC POST takes no connection slot (it stays a pending handshake, bounded by
        # max_pending_handshakes), but its body takes pool memory: refused over the soft limit.
        if self._over_soft_limit():
            self.refused["memory"] += 1
            return (503, "server over its memory limit", [("Retry-After", str(self.limits.retry_after))])
        return None

    def health(self) -> tuple[int, dict[str, Any]]:
        """``GET /health``: 200 with load figures, 503 while draining or over the memory ceiling."""
        r = self.reactor
        body = {
            "status": "ok",
            "connections": r.n_open,
            "max_connections": self.limits.max_connections,
            "pending_handshakes": r.n_pending,
            "requests_in_flight": r.inflight_total,
            "memory_bytes": self.memory_in_use(),
            "memory_limit": self.limits.memory_limit,
        }
        if self.forwarders or self.dispatcher is not None:
            from .cluster import health_load

            body.update(health_load(self))
        if self._draining:
            body["status"] = "draining"
            return 503, body
        if self._over_soft_limit():
            body["status"] = "over memory limit"
            return 503, body
        return 200, body

    def agent_reply(self) -> str:
        """The HAProxy agent-check line (without ``\\n``): ``up ready <spare>%``, ``drain``
        or ``down`` (``fastrpc.agent``)."""
        lim = self.limits
        return agent_line(
            draining=self._draining, over_memory=self._over_soft_limit(),
            connections=self.reactor.n_open, max_connections=lim.max_connections,
            memory=self.memory_in_use(), memory_soft_limit=lim.memory_limit * lim.memory_soft_ratio,
            inflight=self.reactor.inflight_total, max_inflight=self._agent_max_inflight,
        )

    def _forwarded(self, cid: int, ip: str, port: int) -> Callable[[list[tuple[str, str]]], None] | None:
        """The ``on_headers`` hook for a request from a trusted proxy, else None."""
        proxies = self._proxies
        if proxies is None:
            return None
        via = self._proxy_peer.get(cid)
        if via is None:
            if not proxies.trusts(ip):
                return None
            via = self._proxy_peer[cid] = (ip, port)

        def on_headers(headers: list[tuple[str, str]]) -> None:
            client = proxies.client_from_headers(via[0], headers)
            if client is None:
                client, client_port = via
            else:
                client_port = 0
            self.reactor.set_peer(cid, client, client_port)

        return on_headers

    def _on_handshake(self, cid: int, head: bytes, ip: str, port: int) -> tuple[bytes | int, int | bool]:
        page = self._metrics
        d = handle_request(head, self._policy, health=self.health, admit=lambda: self._admit(cid),
                           admit_http=self._admit_http, on_headers=self._forwarded(cid, ip, port),
                           metrics=page.render if page is not None else None)
        if d.status >= 400 and d.reason:  # an error answer (health answers have no reason)
            self.connlog.refused(d.status, d.reason, *self.reactor.peer(cid))  # the real client
        if d.upgrade and self._proxy_peer:
            self._proxy_peer.pop(cid, None)
        if d.rpc:
            assert self._http is not None  # the policy serves POST only with it
            return self._http.on_request(cid, d)
        if d.status == HTTP_CONTENT_TOO_LARGE:
            self.refused["http_body"] += 1
        elif d.status == HTTP_FORBIDDEN and d.reason == ORIGIN_NOT_ALLOWED:
            # A browser cannot see why its WebSocket failed: this is how an operator can.
            self.refused["origin"] += 1
        if d.upgrade and self._keep_headers:
            self._headers[cid] = d.headers
        if d.upgrade and self._hops is not None:
            self._mark_hop(cid, d.headers)
        return d.response, d.upgrade

    def _on_http_close(self, cid: int) -> None:
        if self._proxy_peer:
            self._proxy_peer.pop(cid, None)
        if self._http is not None:
            self._http.on_http_close(cid)

    def _mark_hop(self, cid: int, headers: list[tuple[str, str]]) -> None:
        """Remember the connections whose upgrade carried the hop marker (another node
        forwarding: ``fastrpc.cluster.HOP_HEADER``); their calls are never forwarded."""
        from .cluster import HOP_HEADER_LOWER

        for name, _value in headers:
            if name.lower() == HOP_HEADER_LOWER:
                self._hops.add(cid)  # type: ignore[union-attr]
                return

    def is_hop(self, cid: int) -> bool:
        """True when connection ``cid`` is another node forwarding to this one."""
        hops = self._hops
        return hops is not None and cid in hops

    def _on_close(self, cid: int, code: int) -> None:
        if self._keep_headers:
            self._headers.pop(cid, None)
        if self._hops is not None:
            self._hops.discard(cid)
        on_close = getattr(self.handler, "on_close", None)
        if on_close is not None:
            on_close(cid, code)

    def _on_accept_paused(self) -> None:
        log.warning("out of file descriptors: accepting paused for 0.5 s")
        if self._loop is not None and not self._draining:
            self._loop.call_later(0.5, self._resume_accept)

    def _resume_accept(self) -> None:
        if not self._draining and self._started:
            self.reactor.resume_accept()

    # --- the transport API (used by handlers and the JSON-RPC layer) ----------------

    def send(self, cid: int, data: bytes, binary: bool = False) -> bool:
        return bool(self.reactor.send(cid, data, binary))

    def send_many(self, cids: list[int], data: bytes, max_queued: int) -> list[int]:
        return list(self.reactor.send_many(cids, data, max_queued))

    def begin(self, cid: int) -> None:
        self.reactor.begin(cid)

    def end(self, cid: int) -> None:
        self.reactor.end(cid)

    def close(self, cid: int, code: int = 1000, reason: str = "") -> bool:
        """Start the closing handshake; False when ``cid`` is stale or already closing."""
        return bool(self.reactor.close(cid, code, reason))

    def peer(self, cid: int) -> tuple[str, int]:
        return tuple(self.reactor.peer(cid))  # type: ignore[return-value]

    def headers(self, cid: int) -> list[tuple[str, str]] | None:
        return self._headers.get(cid)

    def connections(self) -> list[int]:
        return list(self.reactor.connections())

    def metrics(self) -> dict[str, Any]:
        """Counters (monotonic) and gauges, flat, for logs and Prometheus.

        HTTP answers that are not upgrades: ``http_requests`` counts them all (``/health``
        200 included), ``refused_http`` the errors among them (4xx/5xx, also ``/health``
        503, and a request line answered 400 as it arrives; a head over
        ``max_handshake_size`` counts ``handshake_too_large`` instead);
        ``refused_<reason>`` breaks down the upgrades admission refused;
        ``refused_origin`` counts the 403s for an Origin outside ``origins`` (upgrades
        and JSON-RPC POSTs alike, not the auth hook's 403s)."""
        m: dict[str, Any] = dict(self.reactor.counters_dict())
        for k, v in self.refused.items():
            m[f"refused_{k}"] = v
        if self._http is not None:
            m.update(self._http.metrics())
        m.update(self.connlog.metrics())
        p = self.pool.stats()
        m.update(
            connections=self.reactor.n_open,
            pending_handshakes=self.reactor.n_pending,
            requests_in_flight=self.reactor.inflight_total,
            pool_bytes_in_use=p["bytes_in_use"],
            pool_bytes_reserved=p["bytes_reserved"],
            pool_high_water=p["high_water"],
            pool_failed_acquires=p["failed_acquires"],
            memory_bytes=self.memory_in_use(),
        )
        return m

    def stats(self) -> dict[str, Any]:
        """Everything ``metrics()`` has and where the memory is, as plain Python objects
        (nested dicts and lists of ints, floats, bools and strings: JSON as it is).

        * ``connections``: ``open`` (upgraded), ``pending_handshakes`` (sockets in the
          HTTP phase), ``requests_in_flight``, the two caps, and ``by_state`` (slots
          per state: handshake, upgrading, open, closing, http_body, http_wait, ...;
          one pass over the slots ever used).
        * ``pool``: the buffer pool: ``limit``, ``bytes_reserved`` (arenas mapped
          now), ``bytes_in_use`` (blocks lent now, at their block size),
          ``high_water`` (most ever lent), ``failed_acquires``, and per size class
          ``block_size``, ``blocks_total`` (in arenas reserved now), ``blocks_in_use``,
          ``arenas``, ``bytes_reserved``, ``overhead_bytes`` (a state byte per block,
          the arena index arrays).
        * ``table``: the connection table's C arrays: ``slot_size`` (72), ``capacity``
          (max_connections + max_pending_handshakes), ``slots_bytes`` (capacity ×
          slot_size, calloc'd: a page costs RSS only once a slot on it was used),
          ``slots_used_bytes`` (slots ever used × slot_size: what of it can be
          resident), ``slots_in_use_bytes``, ``ip_entries`` / ``ip_table_bytes`` (the
          per-IP count table, calloc'd alike), ``ips`` (addresses with a connection),
          ``flush_list_bytes`` (4 bytes per slot of capacity, malloc'd; only the
          entries of a batch's busiest moment are ever touched), ``scratch_bytes`` (the
          256 KiB read buffer all connections share).
        * ``memory``: ``accounted`` (pool bytes in use + slots in use × slot_size: the
          figure ``memory_limit`` and the soft limit are compared with, and /health's
          ``memory_bytes``), ``limit``, ``soft_limit``, ``over_soft_limit`` (accounted
          over ``soft_limit``, or RSS over ``rss_limit``: new upgrades get 503),
          ``pool_reserved`` (arena bytes mapped, in use or not), ``core_bytes``
          (everything the compiled core has allocated: pool arenas and their overhead,
          slot array, per-IP table, flush list, scratch buffer; address space, of
          which only touched pages are resident), ``rss`` (the process's resident set,
          from /proc/self/statm, or psutil) and ``rss_limit``.
        * ``metrics``: ``metrics()``.

        Not in ``accounted`` (nor anywhere but ``rss``): the interpreter, the event
        loop and every Python object (handlers, subscriptions, tasks of async calls,
        kept headers), the malloc heap around the core's allocations, and the
        reserved-but-unlent part of the pool. Not in ``rss`` either: kernel memory,
        i.e. socket buffers, the epoll set and the file table of every connection.
        """
        r = self.reactor
        lim = self.limits
        pool = self.pool.stats()
        table = r.memory()
        accounted = self.memory_in_use()
        core = (pool["bytes_reserved"] + sum(c["overhead_bytes"] for c in pool["classes"])
                + table["slots_bytes"] + table["ip_table_bytes"] + table["flush_list_bytes"]
                + table["scratch_bytes"])
        return {
            "connections": {
                "open": r.n_open,
                "pending_handshakes": r.n_pending,
                "requests_in_flight": r.inflight_total,
                "max_connections": lim.max_connections,
                "max_pending_handshakes": lim.max_pending_handshakes,
                "by_state": r.state_counts(),
            },
            "pool": {
                "limit": pool["limit"],
                "bytes_reserved": pool["bytes_reserved"],
                "bytes_in_use": pool["bytes_in_use"],
                "high_water": pool["high_water"],
                "failed_acquires": pool["failed_acquires"],
                "classes": pool["classes"],
            },
            "table": table,
            "memory": {
                "accounted": accounted,
                "limit": lim.memory_limit,
                "soft_limit": int(lim.memory_limit * lim.memory_soft_ratio),
                "over_soft_limit": self._over_soft_limit(),
                "pool_reserved": pool["bytes_reserved"],
                "core_bytes": core,
                "rss": _rss_bytes(),
                "rss_limit": lim.rss_limit,
            },
            "metrics": self.metrics(),
        }
