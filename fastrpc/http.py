"""JSON-RPC over HTTP ``POST`` on the WebSocket port, as go-ethereum serves it.

One job: run the body of a ``POST`` that :func:`fastrpc.handshake.handle_request` accepted
(``decision.rpc``) through the JSON-RPC dispatcher and put the answer in an HTTP response.
The server wires it to the core's HTTP phase::

    on_handshake → decision.rpc → HttpRpc.on_request(cid, decision)
        body_length 0:  (200 with an empty body, HTTP_KEEP_ALIVE or HTTP_CLOSE)
        else:           (body_length, HTTP_BODY); the core collects the body, then
    on_body(cid, body) → HttpRpc.on_body
        a reply now (synchronous calls):            (200 + reply, KEEP_ALIVE or CLOSE)
        nothing, and no call running (notifications only): (200, empty body)
        async/threaded calls running:               (b"", HTTP_DEFER), later
            reactor.respond(cid, 200 + reply, keep_alive)

Answers follow go-ethereum: JSON-RPC errors (-32700 for a body that is not JSON,
-32600, ...) are the body of a 200; a request of notifications only, or an empty body,
is a 200 with an empty body; ``<ns>_subscribe`` answers -32601 "notifications not
supported" (geth's ``ErrNotificationsUnsupported``): HTTP has no way to push.

**Why a second Dispatcher.** The dispatcher sends the reply of an async call through
``transport.send(cid, data)``. This module's ``HttpRpc`` *is* the transport of a second
``Dispatcher`` that shares the server's ``Registry`` (same methods, namespaces, bulkheads,
breakers and limits, so the same error codes), and its ``send`` wraps the JSON in an HTTP
response and calls ``reactor.respond``. No per-message test of "is this cid HTTP?" is
added to the WebSocket path, and the two dispatchers' per-connection state (tasks,
subscriptions) never mix, even when a keep-alive connection later upgrades on the same
cid. A connection in the HTTP phase is not read while its answer is pending, so one cid
has at most one request here: its ``_Request`` record lives from the head to the answer.

**When the client leaves.** The core reports the end of a connection that never upgraded
with ``on_http_close(cid)`` (:meth:`HttpRpc.on_http_close`), also while its answer is
pending: a deferred connection is not read, but the core still watches it for the peer's
FIN or reset (``EPOLLRDHUP``). Its calls are then cancelled (``Dispatcher.on_close``), so
a client that gave up does not keep a slow call running. (A client that half-closes its
side after sending a request counts as gone: HTTP/1.1 clients do not do that.)
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable

from . import _core
from .dispatch import Dispatcher
from .errors import METHOD_NOT_FOUND, RPCError
from .handshake import Decision, reject, rpc_response
from .limits import Limits
from .service import Registry, Service
from .subscriptions import Subscriptions

__all__ = ["NOTIFICATIONS_UNSUPPORTED", "HttpRpc"]

NOTIFICATIONS_UNSUPPORTED = "notifications not supported"
"""go-ethereum's ``ErrNotificationsUnsupported`` message (its code is -32601)."""


class _NoSubscriptions(Subscriptions):
    """Subscriptions of the HTTP dispatcher: there are none, as over go-ethereum's HTTP."""

    def subscribe(self, cid: int, service: Service, params: Any) -> str:
        raise RPCError(METHOD_NOT_FOUND, NOTIFICATIONS_UNSUPPORTED)


class _Request:
    """One HTTP request from its head to its answer (at most one per connection)."""

    __slots__ = ("keep_alive", "http10", "headers", "running", "deferred")

    def __init__(self, keep_alive: bool, http10: bool, headers: list[tuple[str, str]] | None) -> None:
        self.keep_alive = keep_alive
        self.http10 = http10
        self.headers = headers  #: for Context.headers; None unless the server keeps headers
        self.running = 0  #: async/threaded calls of this request not finished
        self.deferred = False  #: answered HTTP_DEFER: the reply goes through respond()


class HttpRpc:
    """JSON-RPC over HTTP for one server (see the module docstring).

    ``reactor``: the server's core (``respond``, ``peer``, ``in``). ``registry``: the
    methods served, shared with the WebSocket dispatcher. ``keep_headers``: give handlers
    the request's headers through ``Context.headers``. ``draining()``: True while the
    server drains; every answer then says ``Connection: close``, so clients move on.
    """

    def __init__(
        self,
        reactor: Any,
        registry: Registry,
        limits: Limits,
        *,
        keep_headers: bool = False,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self._reactor = reactor
        self._keep_headers = keep_headers
        self._draining = draining
        timeout = limits.handshake_timeout
        # The keep-alive wait is the core's handshake timeout; announce it (whole seconds,
        # rounded down, never 0) so clients stop reusing a connection before it is dropped.
        self._keep_alive_timeout = int(timeout) if timeout is not None and timeout >= 1 else None
        self._requests: dict[int, _Request] = {}
        self.dispatcher = Dispatcher(self, limits, registry=registry)
        self.dispatcher.subscriptions = _NoSubscriptions(self, limits)
        self.counters = {"http_rpc_requests": 0, "http_rpc_deferred": 0, "http_rpc_abandoned": 0}

    # --- the core's HTTP phase ---------------------------------------------------------

    def on_request(self, cid: int, d: Decision) -> tuple[bytes | int, int]:
        """A request head ``handle_request`` accepted as JSON-RPC (``d.rpc``); returns the
        answer for the core's ``on_handshake``."""
        req = _Request(d.keep_alive, d.http10, d.headers if self._keep_headers else None)
        if d.body_length == 0:
            # go-ethereum reads nothing and answers 200 without a body (health checks).
            self.counters["http_rpc_requests"] += 1
            return self._answer(b"", req)
        self._requests[cid] = req
        return d.body_length, _core.HTTP_BODY

    def on_body(self, cid: int, body: bytes) -> tuple[bytes, int]:
        """The core's ``on_body``: the whole body of the request ``on_request`` accepted."""
        req = self._requests.get(cid)
        if req is None:  # not reached: the core asks for a body only after on_request
            return reject(500, "internal server error"), _core.HTTP_CLOSE
        self.counters["http_rpc_requests"] += 1
        reply = self.dispatcher.on_message(cid, body)
        if reply is None and req.running:
            req.deferred = True
            self.counters["http_rpc_deferred"] += 1
            return b"", _core.HTTP_DEFER
        del self._requests[cid]
        return self._answer(reply or b"", req)

    def _answer(self, body: bytes, req: _Request) -> tuple[bytes, int]:
        keep = req.keep_alive and not self._draining()
        response = rpc_response(body, keep, http10=req.http10, keep_alive_timeout=self._keep_alive_timeout)
        return response, _core.HTTP_KEEP_ALIVE if keep else _core.HTTP_CLOSE

    def _respond(self, cid: int, req: _Request, body: bytes) -> bool:
        response, action = self._answer(body, req)
        return bool(self._reactor.respond(cid, response, action == _core.HTTP_KEEP_ALIVE))

    def _finished_silently(self, cid: int, req: _Request) -> None:
        # Every call of a deferred request ended without a reply (notifications only).
        if self._requests.get(cid) is req:
            del self._requests[cid]
            self._respond(cid, req, b"")

    # --- housekeeping ------------------------------------------------------------------

    def on_http_close(self, cid: int) -> None:
        """The core's ``on_http_close``: the connection ended before its answer (or
        between requests). Forget its request and cancel the calls still running."""
        req = self._requests.pop(cid, None)
        if req is not None and req.deferred:
            self.counters["http_rpc_abandoned"] += 1
            self.dispatcher.on_close(cid)

    @property
    def in_flight(self) -> int:
        """Requests whose answer waits for async or threaded calls."""
        return sum(1 for req in self._requests.values() if req.deferred)

    async def aclose(self) -> None:
        """Cancel every call still running (``stop()``, after the connections are gone)."""
        self._requests.clear()
        await self.dispatcher.aclose()

    def metrics(self) -> dict[str, int]:
        """``http_rpc_requests`` (bodies dispatched, empty ones included),
        ``http_rpc_deferred`` (answered after async calls), ``http_rpc_abandoned`` (the
        connection was gone while its calls ran: cancelled) and the gauge
        ``http_rpc_in_flight``."""
        m = dict(self.counters)
        m["http_rpc_in_flight"] = self.in_flight
        return m

    # --- the Transport of the HTTP dispatcher ---------------------------------------------

    def send(self, cid: int, data: bytes, binary: bool = False) -> bool:
        """The reply of a deferred request: answer it (the dispatcher sends once per request:
        a single call's reply or the whole batch answer)."""
        req = self._requests.get(cid)
        if req is None or not req.deferred:
            return False
        del self._requests[cid]
        return self._respond(cid, req, data)

    def send_many(self, cids: list[int], data: bytes, max_queued: int) -> list[int]:
        return list(cids)  # no subscriptions over HTTP: nothing is ever published here

    def begin(self, cid: int) -> None:
        req = self._requests.get(cid)
        if req is not None:
            req.running += 1

    def end(self, cid: int) -> None:
        req = self._requests.get(cid)
        if req is None:
            return
        req.running -= 1
        if req.running == 0 and req.deferred:
            # The dispatcher sends the last reply right after end(), in the same step:
            # look again once that step is over.
            asyncio.get_running_loop().call_soon(self._finished_silently, cid, req)

    def close(self, cid: int, code: int = 1000, reason: str = "") -> bool:
        return False  # only subscriptions close connections, and there are none here

    def peer(self, cid: int) -> tuple[str, int]:
        return tuple(self._reactor.peer(cid))  # type: ignore[return-value]

    def headers(self, cid: int) -> list[tuple[str, str]] | None:
        req = self._requests.get(cid)
        return None if req is None else req.headers
