"""Client: JSON-RPC 2.0 over WebSocket on the same compiled core as the server.

::

    async with fastrpc.connect("ws://127.0.0.1:8546") as c:
        n = await c.call("eth_blockNumber")
        bal = await c.call("eth_getBalance", addr, "latest")      # positional params
        r = await c.call("chain_getBlock", params={"number": 7})  # named params
        await c.notify("log_event", "started")
        async with c.batch() as b:                                # one message
            f1 = b.call("echo", 1)
            b.notify("ping")
        print(await f1)
        async for head in c.subscribe("eth", "newHeads"):
            ...

**One core reactor per event loop.** Every client of a loop is a slot in one
``_core.Reactor`` (client role: masked writes with fresh keys, the 101 checked here,
frames parsed in C), created with the first client, registered once with the loop,
and detached when its last client closes. One sweep task per reactor sends the
keep-alive pings and drops peers that do not answer them. Clients whose
reactor-level settings differ (``max_message_size``, ``ping_interval``,
``pong_timeout``: the sweep applies one set of timers to a whole table) get a reactor
each; with the defaults there is exactly one.

**Errors.** An error reply raises ``RPCError(code, message, data)``; no reply within
the timeout raises ``CallTimeout`` (a ``TimeoutError``; the late reply is ignored);
the connection ending while a call waits raises ``ConnectionLost`` (with the close
code); a failed open raises ``ConnectError`` (with the HTTP status when the server
refused the upgrade, e.g. 503 when full, 429 past its per-IP cap). A reply that is not
valid JSON-RPC is counted in ``stats()`` and logged (``fastrpc.client``), never raised
from the reader; a reply to a known id with the wrong shape fails that call with
``InvalidReply``.

**Subscriptions** are async iterators. ``<ns>_subscribe`` is called when iteration
starts (or on ``await c.subscribe(...)``); ``<ns>_subscription`` notifications are
routed by subscription id, including those that arrive before the subscribe reply.
Each subscription buffers at most ``subscription_buffer`` notifications (1,024): when
one more arrives the subscription is ended and unsubscribed, the consumer receives
every buffered notification and then ``SubscriptionOverflow`` at the point of the gap.
Nothing is dropped silently. Leaving the iterator (``aclose()``, ``async with``, or a
``break`` out of ``async for x in c.subscribe(...)``, which drops the iterator) sends
``<ns>_unsubscribe``. A closed or dropped connection ends every iterator with
``ConnectionLost``; an error notification from the server (fastrpc's -32004 for a
subscriber too slow) ends it with ``RPCError``.

``wss://`` is not supported yet (TLS comes with a later release): put a TLS
terminator on the client side too, or connect to a plain ``ws://`` port.
"""
from __future__ import annotations

import asyncio
import base64
import dataclasses
import ipaddress
import logging
import os
import re
import socket
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Generator, Mapping, Sequence
from urllib.parse import unquote, urlsplit

import orjson

from . import _core
from ._clientcall import Call as _Call, ClientCore, Router, Wakeups, norm_params as _params
from .errors import (
    CLOSE_ABNORMAL,
    CLOSE_NORMAL,
    CallTimeout,
    ConnectError,
    ConnectionLost,
    InvalidReply,
    RPCError,
    SubscriptionOverflow,
    TableFull,
)
from .handshake import accept_key

log = logging.getLogger("fastrpc.client")

KiB = 1024
MiB = 1024 * KiB

#: Client connections one core reactor (one event loop) holds at most; past it
#: ``connect`` raises ``ConnectError``. Its table costs nothing until slots are used.
MAX_CLIENTS_PER_LOOP = 4096
#: Byte ceiling of a client reactor's buffer pool (partial messages, queued output).
CLIENT_POOL_LIMIT = 256 * MiB
#: The sweep's own bound on a closing handshake; each client's ``close_timeout`` is
#: enforced by its close() (the sweep applies one value to the whole table).
_SWEEP_CLOSE_BACKSTOP_MS = 60_000
#: Log the first malformed messages of a connection at WARNING, the rest at DEBUG.
_LOUD_MALFORMED = 10
#: Connections' subscription ids awaiting a subscribe reply (early notifications).
_MAX_EARLY_KEYS = 256


@dataclass(frozen=True)
class Gap:
    """A subscription item saying notifications were missed between ``time`` (loop
    time) and the next item. Yielded by a pool subscription whose connection was lost
    (``endpoint``: its URL, ``error``: why it ended), and by a client's subscription when
    the server says so (a fastrpc gateway whose upstream failed over sends
    ``{"subscription": id, "gap": true}``: ``error`` is None)."""

    endpoint: str
    error: BaseException | None
    time: float

_NEW, _CONNECTING, _OPEN, _CLOSING, _CLOSED = range(5)


@dataclass(frozen=True)
class ClientOptions:
    """Every client setting with its default (seconds and bytes; None disables)."""

    call_timeout: float | None = 60.0
    """Default seconds a call (or a batch) waits for its reply; ``call(timeout=...)``
    overrides it per call. Past it: ``CallTimeout``, raised no earlier than the timeout
    and at most ``min(10 % of it, 100 ms)`` later (one deadline check per client, not
    a timer per call; a batch has a timer of its own)."""
    open_timeout: float | None = 10.0
    """Seconds for name resolution, TCP connect and the 101 together → ``ConnectError``."""
    close_timeout: float = 5.0
    """Seconds ``close()`` waits for the server's close frame before dropping the socket."""
    ping_interval: float | None = 20.0
    """Seconds without any byte from the server before the core sends a ping."""
    pong_timeout: float | None = 20.0
    """Seconds a ping may go unanswered; then the connection is dropped (1006) and
    every call in flight fails with ``ConnectionLost``."""
    max_message_size: int = 32 * MiB
    """Bytes of one message from the server (go-ethereum's client limit); a larger one
    closes the connection with 1009, decided from the frame header."""
    subscription_buffer: int = 1_024
    """Notifications one subscription holds for a slow consumer; one more ends it with
    ``SubscriptionOverflow`` (see the module docstring)."""
    origin: str | None = None
    """Value of an ``Origin`` header (browsers' servers may check it); none by default."""
    headers: Sequence[tuple[str, str]] = ()
    """Extra request headers, e.g. ``[("Authorization", "Bearer ...")]``."""
    subprotocols: Sequence[str] = ()
    """``Sec-WebSocket-Protocol`` offers; the server's choice is ``client.subprotocol``."""
    on_notification: Callable[[str, Any], None] | None = None
    """Called with (method, params) for server notifications that are not subscription
    notifications; without it they are counted (``stats()["unhandled_notifications"]``)."""

    def __post_init__(self) -> None:
        for name in ("call_timeout", "open_timeout", "ping_interval", "pong_timeout"):
            v = getattr(self, name)
            if v is not None and not 0 < v < 24 * 86400:
                raise ValueError(f"{name} must be None or between 0 and 24 days")
        if not 0 < self.close_timeout < 24 * 86400:
            raise ValueError("close_timeout must be between 0 and 24 days")
        if not 125 <= self.max_message_size < 2**31:
            raise ValueError("max_message_size must be between 125 bytes and 2 GiB")
        if self.subscription_buffer < 1:
            raise ValueError("subscription_buffer must be >= 1")
        if isinstance(self.headers, Mapping):
            object.__setattr__(self, "headers", tuple(self.headers.items()))
        for name, value in self.headers:
            if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", name) or any(c in value for c in "\r\n\0"):
                raise ValueError(f"invalid header {name!r}")
        for proto in self.subprotocols:
            if not re.fullmatch(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", proto):
                raise ValueError(f"invalid subprotocol {proto!r}")


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, int(seconds * 1000))


# --- the per-loop core reactor ------------------------------------------------------------


@dataclass(frozen=True)
class _HubKey:
    """The settings that belong to a reactor rather than to one connection."""

    max_message_size: int
    ping_interval_ms: int
    pong_timeout_ms: int


class _Hub:
    """One core Reactor in client role on one loop; routes its callbacks by cid."""

    def __init__(self, loop: asyncio.AbstractEventLoop, key: _HubKey) -> None:
        self.loop = loop
        self.key = key
        classes = [1 * KiB, 8 * KiB, 64 * KiB, 1 * MiB]
        if key.max_message_size > classes[-1]:
            classes.append((key.max_message_size + 15) // 16 * 16)
        self.pool = _core.BufferPool(tuple(classes), limit=max(CLIENT_POOL_LIMIT, 2 * classes[-1]))
        out_cap = max(64 * MiB, 2 * key.max_message_size)
        self.reactor = r = _core.Reactor(
            self.pool, 0, 0,
            max_clients=MAX_CLIENTS_PER_LOOP,
            max_message_size=key.max_message_size,
            max_fragments=65_536,
            # The core keeps reading a client connection whatever it has queued (a
            # pipelining client pausing for its own requests would deadlock against a
            # server pausing for its replies); out_cap bytes queued to a server that
            # does not read is where a client gives up on it.
            max_pending_output=out_cap,
        )
        self.clients: dict[int, Client] = {}
        self.retired = False
        r.on_response = self._on_response
        # Compiled: the common reply settles its call without a Python frame; any
        # other message goes to Client._on_message.
        r.on_text = r.on_binary = Router(self.clients).deliver
        r.on_close = self._on_close
        # Settled calls wake their tasks in one loop callback per turn, with the
        # reactor's sends held meanwhile (their next requests leave in one send).
        self.wakeups = Wakeups(loop, r)
        r.attach(loop)
        timers = [t for t in (key.ping_interval_ms, key.pong_timeout_ms) if t]
        self.tick = max(0.02, min([1.0] + [t / 4000 for t in timers]))
        self.task = loop.create_task(self._sweep(), name="fastrpc-client-sweep")

    # Callbacks from the core: never raise (the core would log and drop the connection).

    def _on_response(self, cid: int, head: bytes) -> bool:
        client = self.clients.get(cid)
        return client is not None and client._on_response(head)

    def _on_close(self, cid: int, code: int) -> None:
        client = self.clients.pop(cid, None)
        if client is not None:
            client._socket_errno = self.reactor.last_errno  # why the socket ended, if it failed
            client._on_closed(code)
        if not self.clients and not self.retired:
            # Not from inside the core's callback: it may still flush this batch.
            self.loop.call_soon(self._maybe_retire)

    def _maybe_retire(self) -> None:
        if not self.clients and len(self.reactor) == 0:
            self.retire()

    def retire(self) -> None:
        """Drop every connection, detach from the loop, forget this reactor."""
        if self.retired:
            return
        self.retired = True
        hubs = _hubs.get(self.loop)
        if hubs is not None and hubs.get(self.key) is self:
            del hubs[self.key]
            if not hubs:
                _hubs.pop(self.loop, None)
        self.reactor.abort_all()  # on_close for each: their calls fail with ConnectionLost
        if self.reactor.attached:
            self.reactor.detach()
        if not self.task.done() and self.task is not _current_task(self.loop):
            self.task.cancel()
        r = self.reactor
        r.on_response = r.on_text = r.on_binary = r.on_close = None
        self.pool.trim()

    async def _sweep(self) -> None:
        k = self.key
        n = 0
        per_second = max(1, int(1 / self.tick))
        try:
            while True:
                await asyncio.sleep(self.tick)
                try:
                    self.reactor.sweep(0, 0, k.ping_interval_ms, k.pong_timeout_ms, _SWEEP_CLOSE_BACKSTOP_MS)
                    n += 1
                    if n % per_second == 0 and self.pool.bytes_in_use < self.pool.bytes_reserved // 2:
                        self.pool.trim()
                except Exception:
                    log.exception("client sweep failed")
        except asyncio.CancelledError:
            # The loop is shutting down (asyncio.run cancels every task) or we retired.
            self.retire()
            raise


def _current_task(loop: asyncio.AbstractEventLoop) -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task(loop)
    except RuntimeError:
        return None


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_HubKey, _Hub]]" = weakref.WeakKeyDictionary()


def _hub_for(loop: asyncio.AbstractEventLoop, options: ClientOptions) -> _Hub:
    key = _HubKey(options.max_message_size, _ms(options.ping_interval), _ms(options.pong_timeout))
    hubs = _hubs.get(loop)
    if hubs is None:
        hubs = _hubs[loop] = {}
    hub = hubs.get(key)
    if hub is None:
        hub = hubs[key] = _Hub(loop, key)
    return hub


def reactors(loop: asyncio.AbstractEventLoop | None = None) -> list[Any]:
    """The core reactors serving clients on ``loop`` (default: the running one), for
    metrics (``counters_dict()``) and tests."""
    loop = loop or asyncio.get_running_loop()
    return [h.reactor for h in _hubs.get(loop, {}).values()]


# --- the upgrade request and the 101 check (sans-I/O) ---------------------------------


@dataclass(frozen=True)
class _Target:
    url: str
    host: str         # name or address, without brackets
    port: int
    resource: str     # path and query
    host_header: str
    auth: str | None  # "user:password" from the URL


def parse_url(url: str) -> _Target:
    """Split a ``ws://`` URL; ``ValueError`` for anything this client cannot open."""
    parts = urlsplit(url)
    if parts.scheme == "wss":
        raise ValueError(f"{url}: wss:// (TLS) is not supported yet; use ws:// (for example "
                         "behind a local TLS terminator)")
    if parts.scheme != "ws":
        raise ValueError(f"{url}: the URL scheme must be ws://")
    if parts.fragment:
        raise ValueError(f"{url}: a WebSocket URL has no fragment (RFC 6455 §3)")
    host = parts.hostname
    if not host:
        raise ValueError(f"{url}: no host")
    port = parts.port or 80  # raises ValueError for a bad port
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in resource for c in " \r\n\0"):
        raise ValueError(f"{url}: invalid characters in the path")
    literal = ":" in host
    host_header = f"[{host}]" if literal else host
    if port != 80:
        host_header += f":{port}"
    auth = None
    if parts.username is not None:
        auth = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return _Target(url, host, port, resource, host_header, auth)


def upgrade_request(target: _Target, key: str, options: ClientOptions) -> bytes:
    """The RFC 6455 §4.1 opening handshake for ``target`` with ``key``."""
    lines = [
        f"GET {target.resource} HTTP/1.1",
        f"Host: {target.host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    if options.origin is not None:
        lines.append(f"Origin: {options.origin}")
    if options.subprotocols:
        lines.append(f"Sec-WebSocket-Protocol: {', '.join(options.subprotocols)}")
    if target.auth is not None:
        token = base64.b64encode(target.auth.encode()).decode("ascii")
        lines.append(f"Authorization: Basic {token}")
    lines.extend(f"{name}: {value}" for name, value in options.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def new_key() -> str:
    """A fresh ``Sec-WebSocket-Key``: 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


_status_line = re.compile(r"HTTP/1\.1 ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?").fullmatch
_field_line = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*").fullmatch


def _tokens(value: str | None) -> list[str]:
    return [t.strip(" \t").lower() for t in value.split(",")] if value else []


def check_response(head: bytes, key: str, options: ClientOptions, url: str) -> tuple[str | None, ConnectError | None]:
    """Check the server's answer to our upgrade (RFC 6455 §4.1, client requirements).

    Returns ``(subprotocol, None)`` for a valid 101, else ``(None, error)``: a status
    other than 101 (with the status and Retry-After), or a 101 that breaks a rule.
    """
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    m = _status_line(lines[0])
    if m is None:
        return None, ConnectError(url, f"malformed HTTP status line {lines[0][:80]!r}")
    status = int(m.group(1))
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        f = _field_line(line)
        if f is None:
            return None, ConnectError(url, f"malformed header line in the response {line[:80]!r}", status)
        name = f.group(1).lower()
        fields[name] = f"{fields[name]},{f.group(2)}" if name in fields else f.group(2)
    if status != 101:
        retry = fields.get("retry-after")
        retry_after = float(retry) if retry is not None and retry.strip().isdigit() else None
        phrase = m.group(2) or ""
        return None, ConnectError(url, f"server answered HTTP {status} {phrase}".rstrip(), status, retry_after)

    def bad(reason: str) -> tuple[None, ConnectError]:
        return None, ConnectError(url, f"invalid 101 response: {reason}", status)

    if _tokens(fields.get("upgrade")) != ["websocket"]:
        return bad(f"Upgrade is {fields.get('upgrade')!r}, not websocket")
    if "upgrade" not in _tokens(fields.get("connection")):
        return bad(f"Connection is {fields.get('connection')!r}, not upgrade")
    if fields.get("sec-websocket-accept") != accept_key(key):
        return bad("Sec-WebSocket-Accept does not match our key")
    if "sec-websocket-extensions" in fields:
        return bad(f"the server accepted an extension we did not offer ({fields['sec-websocket-extensions']!r})")
    proto = fields.get("sec-websocket-protocol")
    if proto is not None:
        proto = proto.strip(" \t")
        if proto not in options.subprotocols:
            return bad(f"the server chose subprotocol {proto!r}, which we did not offer")
    return proto, None


# --- calls ------------------------------------------------------------------------------

_dumps = orjson.dumps
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


def _bad_error(err: Any) -> bool:
    return type(err) is not dict or type(err.get("code")) is not int or type(err.get("message")) is not str


class Client(ClientCore):
    """One JSON-RPC connection. Make it with ``await fastrpc.connect(url, **options)``
    or ``async with fastrpc.connect(...) as c`` (options: ``ClientOptions``)."""

    def __init__(self, url: str, options: ClientOptions | None = None, **kw: Any) -> None:
        if options is None:
            options = ClientOptions(**kw)
        elif kw:
            options = dataclasses.replace(options, **kw)
        self.options = options
        self.url = url
        self._target = parse_url(url)  # ValueError at once for wss:// and bad URLs
        self._state = _NEW
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hub: _Hub | None = None
        self._cid = -1
        self._send: Callable[..., bool] | None = None
        self._key = ""
        self._open_fut: asyncio.Future[None] | None = None
        self._closed_fut: asyncio.Future[int] | None = None
        self._reject: ConnectError | None = None
        self._socket_errno = 0  # errno of the socket error that ended it (core last_errno)
        self._ids = 0
        self._pending: dict[int, _Call] = {}
        self._default_timeout = float("inf") if options.call_timeout is None else options.call_timeout
        self._subs: dict[tuple[str, Any], list[_SubState]] = {}
        self._early: dict[tuple[str, Any], list[Any]] = {}
        self._subscribing = 0
        self._unsubscribed_at: dict[tuple[str, Any], int] = {}
        self.close_code: int | None = None
        self.subprotocol: str | None = None
        self.counters = {
            "calls": 0, "notifications_sent": 0, "replies": 0, "errors": 0, "timeouts": 0,
            "late_replies": 0, "unknown_ids": 0, "malformed": 0, "notifications": 0,
            "unrouted_notifications": 0, "unhandled_notifications": 0, "overflows": 0,
        }
        self.peer: tuple[str, int] | None = None

    def __repr__(self) -> str:
        state = ("new", "connecting", "open", "closing", "closed")[self._state]
        return f"<Client {self.url} {state} in_flight={len(self._pending)}>"

    # --- opening ------------------------------------------------------------------

    async def connect(self) -> "Client":
        """Resolve, connect, upgrade. Raises ``ConnectError``; returns self."""
        if self._state != _NEW:
            raise RuntimeError("connect() was already called on this client")
        self._state = _CONNECTING
        loop = self._loop = asyncio.get_running_loop()
        self._new_future = loop.create_future
        self._closed_fut = loop.create_future()
        t = self._target
        deadline = None if self.options.open_timeout is None else loop.time() + self.options.open_timeout
        try:
            addrs = await self._resolve(deadline)
            error: ConnectError | None = None
            for ip in addrs:
                error, next_address = await self._attempt(ip, t.port, deadline)
                if error is None:
                    return self
                if not next_address:
                    break  # the server answered, or time is up: another address won't help
            assert error is not None
            raise error
        except BaseException:
            if self._state != _OPEN:
                self._state = _CLOSED
                if not self._closed_fut.done():
                    self._closed_fut.set_result(CLOSE_ABNORMAL)
            raise

    def _remaining(self, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        assert self._loop is not None
        return max(0.0, deadline - self._loop.time())

    async def _resolve(self, deadline: float | None) -> list[str]:
        t = self._target
        try:
            ipaddress.ip_address(t.host)
            return [t.host]
        except ValueError:
            pass
        assert self._loop is not None
        try:
            infos = await asyncio.wait_for(
                self._loop.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM), self._remaining(deadline))
        except asyncio.TimeoutError:
            raise ConnectError(self.url, f"resolving {t.host} timed out") from None
        except OSError as e:
            raise ConnectError(self.url, f"cannot resolve {t.host}: {e}") from None
        out: list[str] = []
        for family, _, _, _, sockaddr in infos:
            if family in (socket.AF_INET, socket.AF_INET6) and sockaddr[0] not in out:
                out.append(str(sockaddr[0]))
        if not out:
            raise ConnectError(self.url, f"{t.host} has no IPv4 or IPv6 address")
        return out

    async def _attempt(self, ip: str, port: int, deadline: float | None) -> tuple[ConnectError | None, bool]:
        """One address: (None, _) once open, else (the error, whether to try the next)."""
        assert self._loop is not None
        hub = _hub_for(self._loop, self.options)
        self._key = new_key()
        self._reject = None
        request = upgrade_request(self._target, self._key, self.options)
        try:
            cid = hub.reactor.connect(ip, port, request)
        except TableFull:
            hub._maybe_retire()
            return ConnectError(self.url, f"this event loop already holds {MAX_CLIENTS_PER_LOOP} "
                                "client connections"), False
        except OSError as e:
            hub._maybe_retire()
            return ConnectError(self.url, f"connect to {ip}:{port} failed: {e.strerror or e}"), True
        fut = self._open_fut = self._loop.create_future()
        self._hub = hub
        self._cid = cid
        hub.clients[cid] = self
        try:
            # asyncio.wait, not wait_for: Python 3.11's wait_for loses a cancel that
            # arrives as the future completes.
            done, _ = await asyncio.wait((fut,), timeout=self._remaining(deadline))
        except BaseException:
            hub.reactor.abort(cid)
            if fut.done() and not fut.cancelled():
                fut.exception()  # retrieved: no "never retrieved" log
            raise
        if not done:
            hub.reactor.abort(cid)  # on_close: forgets the cid
            return ConnectError(self.url, f"timed out after {self.options.open_timeout:g} s"), False
        failure = fut.exception()
        if isinstance(failure, ConnectError):
            return failure, failure.status is None  # no HTTP answer: maybe another address listens
        if failure is not None:
            raise failure
        self.peer = (ip, port)
        return None, False

    def _on_response(self, head: bytes) -> bool:
        proto, error = check_response(head, self._key, self.options, self.url)
        if error is not None:
            self._reject = error
            return False  # the core drops the socket; on_close finishes the attempt
        self.subprotocol = proto
        self._state = _OPEN
        assert self._hub is not None
        self._send = self._hub.reactor.send
        self._wakeups = self._hub.wakeups
        if self._open_fut is not None and not self._open_fut.done():
            self._open_fut.set_result(None)
        return True

    # --- the end of the connection ---------------------------------------------------

    def _on_closed(self, code: int) -> None:
        was = self._state
        if was == _CONNECTING:
            fut = self._open_fut
            if fut is not None and not fut.done():
                why = (os.strerror(self._socket_errno).lower() if self._socket_errno
                       else "connection closed")
                fut.set_exception(self._reject or ConnectError(
                    self.url, f"{why} before the server answered the upgrade"))
            self._cid = -1
            return  # connect() decides whether another address is tried
        self._state = _CLOSED
        self.close_code = code
        self._send = None
        pending, self._pending = self._pending, {}
        self._cancel_deadlines()
        for call in pending.values():
            call.settle(exc=ConnectionLost(code))
        subs, self._subs = self._subs, {}
        for states in subs.values():
            for st in states:
                st.finish(ConnectionLost(code))
        self._early.clear()
        if self._closed_fut is not None and not self._closed_fut.done():
            self._closed_fut.set_result(code)

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Send a close frame and wait (``close_timeout``) for the server's; calls still
        waiting fail with ``ConnectionLost``. Idempotent."""
        if self._state == _NEW:
            self._state = _CLOSED
            return
        if self._state == _CONNECTING or self._closed_fut is None:
            return
        hub = self._hub
        if self._state == _OPEN:
            if not (code == CLOSE_NORMAL or 3000 <= code <= 4999):
                raise ValueError(f"close code {code}: a client closes with 1000 or 3000-4999")
            self._state = _CLOSING
            assert hub is not None
            # False: the server's close is already under way; wait for its end.
            hub.reactor.close(self._cid, code, reason)
        try:
            await asyncio.wait_for(asyncio.shield(self._closed_fut), self.options.close_timeout)
        except asyncio.TimeoutError:
            if hub is not None:
                hub.reactor.abort(self._cid)  # on_close runs now, with 1006

    async def wait_closed(self) -> int:
        """Wait until the connection has ended; returns the close code."""
        if self._closed_fut is None:
            raise RuntimeError("not connected")
        return await asyncio.shield(self._closed_fut)

    @property
    def open(self) -> bool:
        return self._state == _OPEN

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    @property
    def in_flight(self) -> int:
        """Calls waiting for a reply."""
        return len(self._pending)

    def stats(self) -> dict[str, Any]:
        """Counters of this connection (replies, errors, malformed messages, ...)."""
        return {
            "state": ("new", "connecting", "open", "closing", "closed")[self._state],
            "in_flight": len(self._pending),
            "subscriptions": sum(len(v) for v in self._subs.values()),
            **self.counters,
        }

    async def __aenter__(self) -> "Client":
        if self._state == _NEW:
            await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- sending ---------------------------------------------------------------------

    def _lost(self) -> ConnectionLost:
        if self._state == _NEW or self._state == _CONNECTING:
            raise RuntimeError("the client is not connected yet: await connect() first")
        return ConnectionLost(self.close_code or CLOSE_ABNORMAL, "connection closing or closed", sent=False)

    def _timeout(self, timeout: float | None) -> float | None:
        t = self.options.call_timeout if timeout is None else timeout
        return None if t is None or t == float("inf") else t

    # _request(method, params, timeout, hook=None, wait=True) -> (id, future or None)
    # and call(method, *args, params=None, timeout=None) are compiled (ClientCore in
    # _clientcall.pyx): request bytes without a dict, one deadline check per client
    # instead of a timer per call.

    def _forget(self, rid: int) -> None:
        """The caller gave up (cancelled): its reply, if it comes, is a late one."""
        self._pending.pop(rid, None)

    async def notify(self, method: str, *args: Any, params: Any = None) -> None:
        """Send a notification (no id, no reply). Raises ``ConnectionLost`` when closed."""
        send = self._send
        if send is None or self._state != _OPEN:
            raise self._lost()
        data = _dumps({"jsonrpc": "2.0", "method": method, "params": _params(args, params)})
        if not send(self._cid, data):
            raise self._lost()
        self.counters["notifications_sent"] += 1

    def batch(self, timeout: float | None = None) -> "Batch":
        """Collect calls and notifications, sent as one JSON-RPC batch message (see
        ``Batch``). ``timeout`` bounds the whole batch (default ``call_timeout``)."""
        return Batch(self, timeout)

    def subscribe(self, namespace: str, topic: str, *params: Any, timeout: float | None = None) -> "Subscription":
        """``<namespace>_subscribe(topic, *params)`` as an async iterator of notification
        results (see the module docstring). ``await`` it to subscribe before iterating
        (then ``.id`` is known)."""
        return Subscription(self, namespace, [topic, *params], timeout)

    # --- receiving -------------------------------------------------------------------

    def _malformed(self, what: str, payload: Any, counter: str = "malformed") -> None:
        self.counters[counter] += 1
        n = self.counters["malformed"] + self.counters["unknown_ids"]
        level = logging.WARNING if n <= _LOUD_MALFORMED else logging.DEBUG
        if log.isEnabledFor(level):
            text = payload if isinstance(payload, (bytes, str)) else _dumps(payload, default=repr)
            log.log(level, "%s: %s from the server: %.200r", self.url, what, text)

    def _on_message(self, payload: bytes) -> None:
        try:
            msg = _loads(payload)
        except _JSONDecodeError:
            self._malformed("invalid JSON", payload)
            return
        try:
            if type(msg) is dict:
                self._on_object(msg)
            elif type(msg) is list and msg:
                for m in msg:
                    if type(m) is dict:
                        self._on_object(m)
                    else:
                        self._malformed("batch entry that is not an object", m)
            else:
                self._malformed("message that is not a JSON-RPC object or batch", msg)
        except Exception:  # a bug here must not become a 1011 close of the connection
            log.exception("%s: error handling a message", self.url)

    def _on_object(self, msg: dict[str, Any]) -> None:
        if "id" not in msg:
            method = msg.get("method")
            if type(method) is str:
                self._on_notification(method, msg.get("params"))
            else:
                self._malformed("message without id or method", msg)
            return
        rid = msg["id"]
        if type(rid) is not int:
            if rid is None and "error" in msg:
                self._null_id_error(msg)
            else:
                self._malformed("reply with an id we never send", msg, "unknown_ids")
            return
        call = self._pending.pop(rid, None)
        if call is None:
            if "method" in msg:
                self._malformed("request from the server (not supported)", msg)
            elif 0 < rid <= self._ids:
                self.counters["late_replies"] += 1  # timed out or cancelled before it came
            else:
                self._malformed("reply to an unknown id", msg, "unknown_ids")
            return
        self._replies += 1
        has_result = "result" in msg
        if "error" in msg:
            err = msg["error"]
            if has_result or _bad_error(err):
                self._malformed("invalid reply", msg)
                call.settle(exc=InvalidReply(f"{call.method}: invalid reply {_dumps(msg)[:200]!r}"))
                return
            self.counters["errors"] += 1
            call.settle(exc=RPCError(err["code"], err["message"], err.get("data")))
        elif has_result:
            value = msg["result"]
            if call.hook is not None:
                try:
                    value = call.hook(value)
                except Exception as e:  # the hook refused the result (InvalidReply)
                    call.settle(exc=e)
                    return
            call.settle(value)
        else:
            self._malformed("reply with neither result nor error", msg)
            call.settle(exc=InvalidReply(f"{call.method}: reply has neither result nor error"))

    def _null_id_error(self, msg: dict[str, Any]) -> None:
        """An error the server could not tie to a request (id null). Unambiguous only
        when one message (a call or one batch) awaits replies: it fails that message."""
        err = msg["error"]
        groups = {id(c.group) if c.group is not None else id(c) for c in self._pending.values()}
        if len(groups) != 1 or _bad_error(err):
            self._malformed("error reply with id null", msg)
            return
        pending, self._pending = self._pending, {}
        self.counters["errors"] += 1
        for call in pending.values():
            call.settle(exc=RPCError(err["code"], err["message"], err.get("data")))

    def _on_notification(self, method: str, params: Any) -> None:
        self.counters["notifications"] += 1
        if method.endswith("_subscription") and type(params) is dict:
            sid = params.get("subscription")
            if type(sid) is str or type(sid) is int:
                self._on_sub_message(method, sid, params)
                return
        cb = self.options.on_notification
        if cb is None:
            self.counters["unhandled_notifications"] += 1
            return
        try:
            cb(method, params)
        except Exception:
            log.exception("%s: on_notification raised", self.url)

    def _on_sub_message(self, method: str, sid: Any, params: dict[str, Any]) -> None:
        key = (method, sid)
        states = self._subs.get(key)
        if states is None:
            if self._subscribing:
                # Maybe the reply to a subscribe still on its way: keep it for that.
                early = self._early.get(key)
                if early is None:
                    if len(self._early) >= _MAX_EARLY_KEYS:
                        self.counters["unrouted_notifications"] += 1
                        return
                    early = self._early[key] = []
                if len(early) <= self.options.subscription_buffer:  # one more shows an overflow
                    early.append(params)
            else:
                self.counters["unrouted_notifications"] += 1
            return
        self._deliver(key, states, params)

    def _deliver(self, key: tuple[str, Any], states: list[_SubState], params: dict[str, Any]) -> None:
        if "result" not in params and "error" in params:
            err = params["error"]
            exc: BaseException = (RPCError(err["code"], err["message"], err.get("data")) if not _bad_error(err)
                                  else InvalidReply(f"subscription {key[1]} ended with {err!r}"))
            del self._subs[key]  # the server ended it: no unsubscribe to send
            for st in states:
                st.finish(exc)
            return
        if "result" not in params and params.get("gap") is True:
            item: Any = Gap(self.url, None, asyncio.get_running_loop().time())
        else:
            item = params.get("result")
        for st in list(states):
            if not st.push(item):
                self.counters["overflows"] += 1
                self._drop_sub(st, SubscriptionOverflow(st.id, st.limit))

    # --- subscriptions -------------------------------------------------------------

    async def _subscribe(self, namespace: str, params: list[Any], timeout: float | None) -> "_SubState":
        method = f"{namespace}_subscription"
        while True:
            sent_at = self._ids + 1
            holder: list[_SubState | None] = [None]

            def hook(sid: Any) -> Any:
                if type(sid) is not str and type(sid) is not int:
                    raise InvalidReply(f"{namespace}_subscribe returned {sid!r}, not an id")
                key = (method, sid)
                if self._unsubscribed_at.get(key, 0) >= sent_at:
                    return None  # we unsubscribed this shared id meanwhile: subscribe again
                st = _SubState(namespace, sid, self.options.subscription_buffer)
                self._subs.setdefault(key, []).append(st)
                for p in self._early.pop(key, ()):
                    if not st.push(p.get("result")) and st in self._subs.get(key, ()):
                        self.counters["overflows"] += 1
                        self._drop_sub(st, SubscriptionOverflow(sid, st.limit))
                holder[0] = st
                return sid

            self._subscribing += 1
            rid = -1
            try:
                rid, fut = self._request(f"{namespace}_subscribe", params, timeout, hook)
                await fut  # type: ignore[misc]
            except asyncio.CancelledError:
                self._forget(rid)
                raise
            finally:
                self._subscribing -= 1
                if not self._subscribing:
                    for early in self._early.values():
                        self.counters["unrouted_notifications"] += len(early)
                    self._early.clear()
                    self._unsubscribed_at.clear()
            st = holder[0]
            if st is not None:
                return st

    def _release(self, st: "_SubState") -> tuple[str, Any] | None:
        """Take ``st`` out of its channel here; the channel's key when it was the last
        local holder (the server's subscription is then to be ended), else None."""
        key = (f"{st.namespace}_subscription", st.id)
        states = self._subs.get(key)
        if states is None or st not in states:
            return None
        states.remove(st)
        if states:
            return None
        del self._subs[key]
        return key

    def _drop_sub(self, st: "_SubState", exc: BaseException | None) -> None:
        """End ``st`` with ``exc``; unsubscribe when no one else here shares its id."""
        st.finish(exc)
        key = self._release(st)
        if key is None:
            return
        if self._state == _OPEN:
            if self._subscribing:
                self._unsubscribed_at[key] = self._ids + 1
            try:
                self._request(f"{st.namespace}_unsubscribe", [st.id], None, wait=False)
            except ConnectionLost:
                pass

    async def _unsubscribe(self, st: "_SubState") -> None:
        """``aclose()``: like _drop_sub, and wait (bounded) for the unsubscribe reply."""
        st.finish(None)
        key = self._release(st)
        if key is None or self._state != _OPEN:
            return
        if self._subscribing:
            self._unsubscribed_at[key] = self._ids + 1
        try:
            _, fut = self._request(f"{st.namespace}_unsubscribe", [st.id], None)
            await fut  # type: ignore[misc]
        except (ConnectionLost, CallTimeout, RPCError, InvalidReply):
            pass  # the subscription is gone from here either way


class Batch:
    """Calls and notifications sent together as one JSON-RPC batch message.

    ::

        async with client.batch() as b:      # sent on exit (not waited for)
            f1 = b.call("eth_blockNumber")
            f2 = b.call("eth_getBalance", addr, "latest")
            b.notify("log_event", "x")
        print(await f1, await f2)            # each future: its result or its error

        b = client.batch()
        b.call("a"); b.call("b")
        results = await b.send()             # results in call order; raises the first
                                             # error (return_exceptions=True: in the list)

    Replies are matched by id whatever their order. The batch's ``timeout`` applies to
    all its calls together. A batch is sent once; an empty one sends nothing.
    """

    def __init__(self, client: Client, timeout: float | None) -> None:
        self._client = client
        self._timeout = timeout
        self._entries: list[dict[str, Any]] = []
        self._calls: list[tuple[int, _Call]] = []
        self._sent = False

    def call(self, method: str, *args: Any, params: Any = None) -> asyncio.Future[Any]:
        """Add a call; returns the future of its result (resolved once the batch is sent
        and answered)."""
        if self._sent:
            raise RuntimeError("this batch was already sent")
        c = self._client
        if c._loop is None:
            raise RuntimeError("the client is not connected yet: await connect() first")
        rid = c._ids = c._ids + 1
        self._entries.append({"jsonrpc": "2.0", "id": rid, "method": method, "params": _params(args, params)})
        fut: asyncio.Future[Any] = c._loop.create_future()
        self._calls.append((rid, _Call(fut, method, self)))
        return fut

    def notify(self, method: str, *args: Any, params: Any = None) -> None:
        if self._sent:
            raise RuntimeError("this batch was already sent")
        self._entries.append({"jsonrpc": "2.0", "method": method, "params": _params(args, params)})

    def __len__(self) -> int:
        return len(self._entries)

    def _flush(self) -> None:
        if self._sent:
            raise RuntimeError("this batch was already sent")
        self._sent = True
        if not self._entries:
            return
        c = self._client
        data = _dumps(self._entries)  # TypeError for params that are not JSON: nothing sent
        send = c._send
        if send is None or c._state != _OPEN or not send(c._cid, data):
            exc = c._lost()
            for _, call in self._calls:
                call.settle(exc=exc)
            return
        c._calls += len(self._calls)
        c.counters["notifications_sent"] += len(self._entries) - len(self._calls)
        for rid, call in self._calls:
            c._pending[rid] = call
        t = c._timeout(self._timeout)
        if t is not None and self._calls:
            # One timer for the whole batch (its calls carry none: a reply must not
            # cancel it for the others); expiring finds the calls still waiting.
            assert c._loop is not None
            c._loop.call_later(t, self._expire, t)

    def _expire(self, timeout: float) -> None:
        c = self._client
        for rid, call in self._calls:
            if c._pending.pop(rid, None) is not None:
                c.counters["timeouts"] += 1
                call.settle(exc=CallTimeout(call.method, timeout))

    async def send(self, *, return_exceptions: bool = False) -> list[Any]:
        """Send the batch and wait for every reply; results in call order."""
        self._flush()
        futs = [call.fut for _, call in self._calls]
        results = await asyncio.gather(*futs, return_exceptions=True)  # type: ignore[arg-type]
        if not return_exceptions:
            for r in results:
                if isinstance(r, BaseException):
                    raise r
        return list(results)

    async def __aenter__(self) -> "Batch":
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._sent:
            return
        if exc_type is None:
            self._flush()
        else:
            self._sent = True  # the block failed: send nothing
            for _, call in self._calls:
                if call.fut is not None and not call.fut.done():
                    call.fut.cancel()


class _SubState:
    """The receiving side of one subscription (held by the Client for routing)."""

    __slots__ = ("namespace", "id", "limit", "buffer", "waiter", "ended", "exc")

    def __init__(self, namespace: str, sub_id: Any, limit: int) -> None:
        self.namespace = namespace
        self.id = sub_id
        self.limit = limit
        self.buffer: deque[Any] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.ended = False
        self.exc: BaseException | None = None

    def push(self, item: Any) -> bool:
        """Queue a notification; False when the buffer is full (the caller ends it)."""
        if self.ended:
            return True
        if len(self.buffer) >= self.limit:
            return False
        self.buffer.append(item)
        self._wake()
        return True

    def finish(self, exc: BaseException | None) -> None:
        if self.ended:
            return
        self.ended = True
        self.exc = exc
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)


class Subscription:
    """An async iterator over one subscription's notification results.

    ``async for x in client.subscribe("eth", "newHeads")`` subscribes when iteration
    starts; ``sub = await client.subscribe(...)`` subscribes now (``sub.id``).
    ``await sub.aclose()`` or ``async with`` ends it (``<ns>_unsubscribe``).
    Iteration ends with ``ConnectionLost`` when the connection does, with
    ``SubscriptionOverflow`` when the consumer fell ``subscription_buffer`` behind,
    with ``RPCError`` when the server ends it, and normally after ``aclose()``.
    """

    def __init__(self, client: Client, namespace: str, params: list[Any], timeout: float | None) -> None:
        self._client = client
        self.namespace = namespace
        self.params = params
        self._timeout = timeout
        self._state: _SubState | None = None
        self._closed = False

    @property
    def id(self) -> Any:
        """The server's subscription id (None until subscribed)."""
        return None if self._state is None else self._state.id

    async def _start(self) -> "Subscription":
        if self._state is None:
            if self._closed:
                raise RuntimeError("this subscription was closed")
            self._state = await self._client._subscribe(self.namespace, self.params, self._timeout)
        return self

    def __await__(self) -> Generator[Any, None, "Subscription"]:
        return self._start().__await__()

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Any:
        st = self._state
        if st is None:
            if self._closed:
                raise StopAsyncIteration
            await self._start()
            st = self._state
            assert st is not None
        while not st.buffer:
            if st.ended:
                exc, st.exc = st.exc, None
                if exc is not None:
                    raise exc  # once; then the iterator is exhausted
                raise StopAsyncIteration
            assert self._client._loop is not None
            st.waiter = self._client._loop.create_future()
            try:
                await st.waiter
            finally:
                st.waiter = None
        return st.buffer.popleft()

    def pending(self) -> int:
        """Notifications buffered and not yet taken."""
        return 0 if self._state is None else len(self._state.buffer)

    async def aclose(self) -> None:
        """Unsubscribe (waiting for the reply, bounded by the call timeout)."""
        self._closed = True
        st = self._state
        if st is not None and not st.ended:
            await self._client._unsubscribe(st)

    async def __aenter__(self) -> "Subscription":
        return await self._start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        # Dropped without aclose() (a `break` out of `async for ... in subscribe()`):
        # unsubscribe without waiting. Never raise from here.
        st = self._state
        if st is None or st.ended:
            return
        try:
            loop = self._client._loop
            if loop is not None and not loop.is_closed():
                self._client._drop_sub(st, None)
        except Exception:
            pass


class _Connect:
    """What ``connect()`` returns: ``await`` it, or use it with ``async with``."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def __await__(self) -> Generator[Any, None, Client]:
        return self.client.connect().__await__()

    async def __aenter__(self) -> Client:
        return await self.client.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()


def connect(url: str, **options: Any) -> _Connect:
    """Open a ``Client`` to ``url`` (``ws://host[:port][/path]``): ``c = await
    connect(url)`` or ``async with connect(url) as c``. ``options`` are the fields of
    ``ClientOptions``. Raises ``ValueError`` at once for a URL it cannot open (``wss://``)."""
    return _Connect(Client(url, ClientOptions(**options)))


__all__ = [
    "Batch",
    "Client",
    "ClientOptions",
    "MAX_CLIENTS_PER_LOOP",
    "Subscription",
    "check_response",
    "connect",
    "new_key",
    "parse_url",
    "reactors",
    "upgrade_request",
]
