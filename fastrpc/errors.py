"""Every exception fastrpc raises and every wire code it sends, as named constants.

One place maps failures to codes: the frame parser reports a WebSocket close code
(``ProtocolError.code``), the JSON-RPC layer a JSON-RPC error code (``RPCError.code``).
Anything not listed here becomes ``CLOSE_INTERNAL_ERROR`` / ``INTERNAL_ERROR`` with a
generic message; details go to the log only.
"""
from __future__ import annotations

import asyncio
from typing import Any

# --- WebSocket close codes (RFC 6455 §7.4.1, IANA registry) ---------------------------
# The whole registry, also codes fastrpc never sends: the public set to compare
# ``on_close`` codes and peers' close frames against.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server stopping, or connection idle past idle_timeout
CLOSE_PROTOCOL_ERROR = 1002  # malformed frame, bad opcode, RSV bit, unmasked client frame
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_NO_STATUS = 1005  # never sent: "close frame had no code"
CLOSE_ABNORMAL = 1006  # never sent: "connection dropped without a close frame"
CLOSE_INVALID_PAYLOAD = 1007  # text message or close reason that is not UTF-8
CLOSE_POLICY_VIOLATION = 1008  # subscriber over its queue cap (with on_slow="close")
CLOSE_MESSAGE_TOO_BIG = 1009  # message over max_message_size, or too many fragments
CLOSE_MANDATORY_EXTENSION = 1010
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013  # buffer pool exhausted (memory ceiling reached)
CLOSE_BAD_GATEWAY = 1014
CLOSE_TLS_HANDSHAKE = 1015  # never sent: "TLS handshake failed"


class FastRPCError(Exception):
    """Base class of every fastrpc exception."""


class ProtocolError(FastRPCError):
    """The peer broke RFC 6455 (or a configured limit); ``code`` is the close code to send.

    ``reason`` is short, fixed text that is safe to put in the close frame.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code} {self.reason}"


class PoolExhausted(FastRPCError, MemoryError):
    """The buffer pool is at its byte ceiling: the caller refuses or closes (1013/1009)."""


class InvalidBlock(FastRPCError, ValueError):
    """A block handle released twice, or one the pool never handed out."""


class TableFull(FastRPCError):
    """The connection table has no free slot (``max_connections`` reached)."""


class PerIPLimitExceeded(FastRPCError):
    """The peer address already holds ``max_connections_per_ip`` connections."""


# --- JSON-RPC 2.0 error codes ----------------------------------------------------------
# Defined by the specification (jsonrpc.org/specification §5.1).
PARSE_ERROR = -32700  # not JSON (id null)
INVALID_REQUEST = -32600  # not a Request object; also an empty or too long batch
METHOD_NOT_FOUND = -32601  # unknown method, or its namespace is not exposed
INVALID_PARAMS = -32602  # missing, extra or mistyped arguments; the message names which
INTERNAL_ERROR = -32603  # a handler raised something other than RPCError (logged only)

# fastrpc's own server errors, in the range the specification reserves for
# implementation-defined server errors (-32000 to -32099). Fixed codes and messages.
REQUEST_TIMEOUT = -32001  # the call ran past its timeout (Limits.request_timeout or the service's)
SERVICE_UNAVAILABLE = -32002  # the namespace's circuit breaker is open: failing fast
SERVICE_BUSY = -32003  # the namespace's bulkhead is full (max_concurrency calls running)
SUBSCRIBER_TOO_SLOW = -32004  # subscription dropped: the subscriber's queue passed its cap
# -32005 is EIP-1474's "limit exceeded" (go-ethereum's clients and most Ethereum
# libraries read it as "back off and retry"). fastrpc sends it for two limits, told
# apart by the message: "too many subscriptions" (this connection's cap) and "server
# busy" (fastrpc.cluster: this node and every peer it may forward to are over their
# soft limits). -32003 "service busy" stays one namespace's bulkhead on one node.
LIMIT_EXCEEDED = -32005
TOO_MANY_SUBSCRIPTIONS = LIMIT_EXCEEDED  # the connection holds Limits.max_subscriptions already
SERVER_BUSY = LIMIT_EXCEEDED  # over the soft limits and no peer can take the call (cluster)
#: Message of a SERVER_BUSY answer (MESSAGES[-32005] is "too many subscriptions").
SERVER_BUSY_MESSAGE = "server busy"
RESPONSE_TOO_LARGE = -32006  # this call's reply would take the batch answer past its cap
UPSTREAM_LOST = -32007  # a forwarded call's upstream connection dropped after sending: outcome unknown

#: The fixed message sent with each code (handlers' own RPCErrors carry their own).
MESSAGES: dict[int, str] = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
    REQUEST_TIMEOUT: "request timed out",
    SERVICE_UNAVAILABLE: "service unavailable",
    SERVICE_BUSY: "service busy",
    SUBSCRIBER_TOO_SLOW: "subscriber too slow",
    TOO_MANY_SUBSCRIPTIONS: "too many subscriptions",
    RESPONSE_TOO_LARGE: "response too large",
    UPSTREAM_LOST: "upstream connection lost",
}


class RPCError(FastRPCError):
    """An application error a handler raises; sent to the client as the JSON-RPC error.

    ``outcome`` names how the dispatcher's request counters count the call
    (``Dispatcher.method_stats``): "error", an application error answer. The
    subclasses below are answers fastrpc gives on a handler's behalf (cluster
    forwarding) and count as what they are."""

    #: "error", "failure", "timeout", "refused" or "unknown" (see the subclasses).
    outcome = "error"

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.data = data


class ServerBusy(RPCError):
    """-32005 "server busy" (fastrpc.cluster): no peer could take the call, or a
    forwarded call found this node over its soft limits. The call never ran: counted
    "refused"."""

    outcome = "refused"

    def __init__(self) -> None:
        super().__init__(SERVER_BUSY, SERVER_BUSY_MESSAGE)


class RequestTimedOut(RPCError):
    """-32001 "request timed out" for a forwarded call that got no upstream reply within
    its pool's ``call_timeout``: counted "timeout"."""

    outcome = "timeout"

    def __init__(self) -> None:
        super().__init__(REQUEST_TIMEOUT, MESSAGES[REQUEST_TIMEOUT])


class UpstreamLost(RPCError):
    """-32007 "upstream connection lost": a forwarded call's upstream connection dropped
    after it was sent (data ``{"sent": true}``). No answer came: counted "failure"."""

    outcome = "failure"

    def __init__(self, sent: bool = True) -> None:
        super().__init__(UPSTREAM_LOST, MESSAGES[UPSTREAM_LOST], {"sent": sent})


class MethodNotFound(RPCError):
    """-32601 relayed from an upstream (the gateway forwards names it does not know):
    counted as an unknown method of the dispatcher, never per method, so names sent by
    clients cannot grow the per-method counters."""

    outcome = "unknown"


class InvalidParams(RPCError):
    """-32602: the arguments do not fit the method. Raised by the parameter binder (the
    message names the argument and the problem) and available to handlers."""

    def __init__(self, message: str, data: Any = None) -> None:
        super().__init__(INVALID_PARAMS, message, data)


# --- client side (fastrpc.client, fastrpc.pool) ----------------------------------------
# asyncio.TimeoutError is the builtin TimeoutError from Python 3.11 on; on 3.10 it is a
# class of its own, so a call timeout is both there.
_TIMEOUT_BASES: tuple[type, ...] = (
    (TimeoutError,) if asyncio.TimeoutError is TimeoutError else (asyncio.TimeoutError, TimeoutError)
)


class ConnectError(FastRPCError, ConnectionError):
    """A client could not open its connection: the address did not resolve, the TCP
    connect failed, the open timed out, or the server refused the upgrade.

    ``url`` is the URL connected to; ``status`` the HTTP status when the server answered
    with something other than a valid 101 (503 full or draining, 429 per-IP cap, ...),
    else None; ``retry_after`` the seconds of its ``Retry-After`` header, if any.
    """

    def __init__(self, url: str, reason: str, status: int | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"cannot connect to {url}: {reason}")
        self.url = url
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class ConnectionLost(FastRPCError, ConnectionError):
    """The connection ended while a call waited for its reply (or a subscription was
    open). ``code`` is the WebSocket close code (1006: dropped without a close frame).

    ``sent`` is False when the request never left this process (the connection was
    already closing when the call was made): such a call certainly did not run on the
    server and may be retried whatever its method. When True the server may or may not
    have run it.
    """

    def __init__(self, code: int, reason: str = "", *, sent: bool = True) -> None:
        text = f"connection lost (close code {code})"
        if reason:
            text += f": {reason}"
        super().__init__(text)
        self.code = code
        self.reason = reason
        self.sent = sent


class CallTimeout(FastRPCError, *_TIMEOUT_BASES):  # type: ignore[misc]
    """A call got no reply within its timeout. The call is forgotten: a reply arriving
    later is ignored (counted as ``late_replies``). Catch it as ``TimeoutError`` /
    ``asyncio.TimeoutError`` too."""

    def __init__(self, method: str, timeout: float) -> None:
        super().__init__(f"{method}: no reply within {timeout:g} s")
        self.method = method
        self.timeout = timeout


class InvalidReply(FastRPCError):
    """The server's reply to a call is not a valid JSON-RPC response (neither exactly
    one of ``result`` / ``error``, or an ``error`` that is not ``{code: int, message:
    str}``). The call fails with it; the connection stays open."""


class SubscriptionOverflow(FastRPCError):
    """A subscription's buffer (``subscription_buffer`` items) was full when another
    notification arrived: the consumer fell behind. The subscription was ended
    (unsubscribed) at that point; the consumer got every notification buffered before
    the gap, then this. ``subscription`` is the id, ``buffered`` the buffer's size."""

    def __init__(self, subscription: Any, buffered: int) -> None:
        super().__init__(f"subscription {subscription}: consumer too slow, {buffered} notifications "
                         "buffered; the subscription was ended")
        self.subscription = subscription
        self.buffered = buffered


class NoHealthyEndpoint(FastRPCError, ConnectionError):
    """``ClientPool``: no connection to any endpoint opened within ``acquire_timeout``
    (every endpoint down or backing off). The call was not sent."""
