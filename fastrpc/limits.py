"""Every limit fastrpc enforces, with its default, in one frozen dataclass.

Each limit has a counter in ``Server.metrics()`` and a test that drives it past
the limit. Sizes are bytes, times are seconds.

Timeouts: ``None`` turns a timeout off; every timeout must stay below
:data:`MAX_TIMEOUT` (the table keeps wrap-safe uint32 millisecond stamps). A 0 is
refused (ValueError naming the field) where it would be ambiguous (off, or at once?);
only ``close_timeout`` and ``drain_timeout``, the two waits of ``Server.stop()``, accept
0, meaning "don't wait".
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

KiB = 1024
MiB = 1024 * 1024

#: Upper bound (exclusive) of every timeout, in seconds: far below the 49.7 days at
#: which the core's uint32 millisecond stamps wrap.
MAX_TIMEOUT = 24 * 86400

# Timeouts where None is off and 0 is refused; and the two waits where 0 means "don't wait".
_TIMEOUTS = ("handshake_timeout", "idle_timeout", "ping_interval", "pong_timeout", "request_timeout")
_WAITS = ("close_timeout", "drain_timeout")


@dataclass(frozen=True)
class Limits:
    # --- admission (issue 3) ---------------------------------------------------------
    max_connections: int = 10_000
    """Open WebSocket connections. Past it an upgrade gets 503 + Retry-After."""
    max_connections_per_ip: int = 256
    """Connections from one peer address (IPv4 or IPv6). Past it: 429."""
    max_pending_handshakes: int = 1_024
    """Sockets accepted but not yet upgraded; past it new sockets are closed at once."""
    retry_after: int = 5
    """Seconds put in the Retry-After header of a 503."""
    # --- memory ------------------------------------------------------------------------
    memory_limit: int = 256 * MiB
    """Hard ceiling on bytes the server holds in pooled blocks plus the accounted
    per-connection cost. Above it buffered messages are refused with 1013."""
    memory_soft_ratio: float = 0.8
    """Above memory_limit * memory_soft_ratio new upgrades get 503 and /health 503."""
    rss_limit: int | None = None
    """Optional ceiling on the process RSS (bytes): above it new upgrades get 503."""
    pool_size_classes: tuple[int, ...] = (1 * KiB, 8 * KiB, 64 * KiB, 1 * MiB)
    """Block sizes of the buffer pool; the largest must hold max_message_size."""
    # --- handshake ---------------------------------------------------------------------
    max_handshake_size: int = 8 * KiB
    """Bytes of request line plus headers. Past it: 431 and the socket is closed."""
    handshake_timeout: float | None = 10.0
    """Seconds from accept to a complete request head; then the socket is dropped.
    None: no limit; 0 is refused."""
    # --- messages ----------------------------------------------------------------------
    max_message_size: int = 1 * MiB
    """Bytes of one message, all fragments; checked from the frame header → 1009."""
    max_fragments: int = 1_024
    """Frames in one fragmented message → 1009."""
    max_requests_in_flight: int = 64
    """Requests of one connection being handled; past it the server stops reading
    that connection until one finishes."""
    # --- output and backpressure -------------------------------------------------------
    write_high_water: int = 64 * KiB
    """Pending output per connection above which its requests are not read."""
    max_pending_output: int = 4 * MiB
    """Pending output per connection above which the peer is closed (it does not read)."""
    # --- keepalive ---------------------------------------------------------------------
    idle_timeout: float | None = 300.0
    """Seconds without a whole message → close 1001. None: never; 0 is refused."""
    ping_interval: float | None = 30.0
    """Seconds without any received byte before the server pings. None: no pings;
    0 is refused."""
    pong_timeout: float | None = 30.0
    """Seconds a ping may go unanswered → the connection is dropped (1006 for the peer).
    None: wait for the pong forever; 0 is refused."""
    close_timeout: float | None = 5.0
    """Seconds to wait for the peer's close frame after ours (in ``stop()`` and for every
    connection the server closes); then the connection is dropped. None: wait until the
    peer answers or goes away, as in websockets (a peer that never does keeps its slot,
    and ``stop()`` waits for it); 0: don't wait, drop right after our close frame
    (``stop()`` at once, other closes at the reaper's next sweep)."""
    drain_timeout: float | None = 10.0
    """Seconds ``stop()`` waits for requests in flight before closing with 1001.
    None: wait for every request in flight; 0: don't wait."""
    # --- JSON-RPC (issue 4) ------------------------------------------------------------
    max_batch_length: int = 1_000
    """Requests in one batch → one -32600 error answer."""
    max_batch_response_size: int = 25 * MiB
    """Bytes of one batch answer; past it remaining calls get an error."""
    request_timeout: float | None = 30.0
    """Default seconds one call may run (each service may set its own). None: no limit;
    0 is refused."""
    max_subscriptions: int = 1_024
    """Subscriptions one connection may hold."""
    max_subscriber_queue: int = 4 * MiB
    """Bytes queued to one subscriber; past it the subscription is dropped."""
    # --- JSON-RPC over HTTP (issue 9) --------------------------------------------------
    max_http_body: int | None = None
    """Bytes of one HTTP request body (its Content-Length); past it: 413, decided from
    the header before any of the body is read. None: ``max_message_size`` (1 MiB), the
    bound of one WebSocket message (go-ethereum's is 5 MiB: set it with a pool class that
    holds it). The body is collected in one pooled block: it must fit the largest."""

    @property
    def http_body_limit(self) -> int:
        """``max_http_body``, or ``max_message_size`` when it is None."""
        return self.max_message_size if self.max_http_body is None else self.max_http_body

    def replace(self, **changes: Any) -> "Limits":
        return replace(self, **changes)

    def __post_init__(self) -> None:
        if self.max_connections < 1 or self.max_connections_per_ip < 1:
            raise ValueError("max_connections and max_connections_per_ip must be >= 1")
        if self.max_message_size > max(self.pool_size_classes):
            raise ValueError(
                f"max_message_size ({self.max_message_size}) exceeds the largest pool "
                f"block ({max(self.pool_size_classes)}): add a larger size class"
            )
        if max(self.pool_size_classes) < 125:
            raise ValueError("the largest pool block must hold a control frame (125 bytes)")
        if self.max_handshake_size > max(self.pool_size_classes):
            raise ValueError("max_handshake_size exceeds the largest pool block")
        if self.max_pending_output < self.max_message_size + 14:
            raise ValueError("max_pending_output must hold one whole message and its frame header")
        if self.max_http_body is not None and not 0 <= self.max_http_body <= max(self.pool_size_classes):
            raise ValueError(
                f"max_http_body ({self.max_http_body}) must be between 0 and the largest pool "
                f"block ({max(self.pool_size_classes)}): add a larger size class"
            )
        if self.max_message_size >= 2**31:
            raise ValueError("max_message_size must be below 2 GiB")
        for name in _TIMEOUTS:
            value = getattr(self, name)
            if value is not None and not (0 < value < MAX_TIMEOUT):
                raise ValueError(
                    f"{name}={value!r}: must be None (off) or more than 0 and less than 24 days"
                    + (" (0 is ambiguous: use None to turn it off)" if value == 0 else "")
                )
        for name in _WAITS:
            value = getattr(self, name)
            if value is not None and not (0 <= value < MAX_TIMEOUT):
                raise ValueError(f"{name}={value!r}: must be None (no limit), 0 (don't wait) or less than 24 days")
