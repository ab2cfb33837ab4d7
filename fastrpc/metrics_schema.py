"""Every metric fastrpc exports, in one list: name, type, unit, labels, meaning.

``fastrpc.metrics`` builds the Prometheus families from this list and nothing else
(a unit test holds the exporter's output and this list to each other), and
``docs/grafana-dashboard.json`` may only query names listed here (also tested). The
module imports nothing from ``prometheus_client``, so it documents the metrics even
where the ``metrics`` extra is not installed.

Conventions (https://prometheus.io/docs/practices/naming/): the ``fastrpc_`` prefix;
base units in the name (``_seconds``, ``_bytes``); counters end in ``_total`` (the
name here is the full sample name); no label whose values come from the network:
``method`` takes only names the server registered (unknown methods are counted in
``fastrpc_rpc_rejected_total``), ``upstream`` only the URLs of the server's own pools.

Anchor: go-ethereum's rpc metrics (``rpc/requests``, ``rpc/success``,
``rpc/failure``, ``rpc/duration/<method>/<success|failure>``) are
``fastrpc_rpc_requests_total{method,outcome}`` and
``fastrpc_rpc_request_duration_seconds{method}`` here.
"""
from __future__ import annotations

from dataclasses import dataclass

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    """The sample name (a histogram's base name: ``_bucket``/``_sum``/``_count`` follow)."""
    type: str
    help: str
    labels: tuple[str, ...] = ()


# Close reasons: the core's counters (``Reactor.counters_dict()``), label → counter.
CLOSE_REASONS: dict[str, str] = {
    "peer": "closed_peer",                    # the peer sent a close frame
    "eof": "closed_eof",                      # EOF or reset without a close frame
    "protocol": "closed_protocol",            # 1002 / 1007
    "too_big": "closed_too_big",              # 1009
    "nomem": "closed_nomem",                  # 1013: the pool at its ceiling
    "idle": "closed_idle",                    # idle_timeout
    "pong_timeout": "closed_pong_timeout",    # ping unanswered
    "slow_reader": "closed_slow_reader",      # pending output over max_pending_output
    "close_timeout": "closed_close_timeout",  # no close frame back in time
    "server": "closed_by_server",             # close() / stop()
    "handler_error": "closed_handler_error",  # a message callback raised → 1011
}

# Upgrades refused, label → where it is counted: ``server.refused`` (admission, answered
# with an HTTP error) or the core (answered or dropped before Python sees the request).
# "origin": the 403 for an Origin outside the allowlist (upgrades and JSON-RPC POSTs).
REFUSE_REASONS_ADMISSION: tuple[str, ...] = ("max_connections", "per_ip", "memory", "draining", "origin")
REFUSE_REASONS_CORE: dict[str, str] = {
    "handshake_too_large": "handshake_too_large",  # 431
    "handshake_timeout": "handshake_timeout",      # no complete head in time: dropped
    "pending_overflow": "pending_overflow",        # over max_pending_handshakes: dropped
}

RPC_OUTCOMES: tuple[str, ...] = ("success", "error", "failure", "timeout", "refused")
RPC_REJECT_REASONS: dict[str, str] = {  # label → Dispatcher.metrics() key
    "parse_error": "parse_errors",
    "invalid_request": "invalid_requests",
    "unknown_method": "unknown_methods",
}
FORWARD_OUTCOMES: tuple[str, ...] = ("ok", "busy", "lost", "timeout")
BREAKER_STATES = {"closed": 0, "open": 1, "half-open": 2}

#: Event-loop lag buckets (seconds): how late the server's periodic sweep woke up.
LOOP_LAG_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

METRICS: tuple[Metric, ...] = (
    # --- connections --------------------------------------------------------------
    Metric("fastrpc_connections_open", GAUGE, "WebSocket connections open now."),
    Metric("fastrpc_handshakes_pending", GAUGE,
           "Accepted sockets still in the HTTP phase (handshake, JSON-RPC POST, /health)."),
    Metric("fastrpc_connections_accepted_total", COUNTER, "Sockets accepted."),
    Metric("fastrpc_connections_opened_total", COUNTER, "WebSocket upgrades completed (101 sent)."),
    Metric("fastrpc_connections_closed_total", COUNTER,
           "WebSocket connections closed, by reason.", ("reason",)),
    Metric("fastrpc_upgrades_refused_total", COUNTER,
           "Connections refused before or at the upgrade, by reason.", ("reason",)),
    Metric("fastrpc_accept_paused_total", COUNTER,
           "Times accepting paused because the process ran out of file descriptors."),
    # --- plain HTTP ---------------------------------------------------------------
    Metric("fastrpc_http_responses_total", COUNTER,
           "Plain HTTP answers (not upgrades), any status: /health, /metrics, POST, errors."),
    Metric("fastrpc_http_error_responses_total", COUNTER,
           "Plain HTTP answers with a status of 400 or more."),
    Metric("fastrpc_http_rpc_requests_total", COUNTER, "JSON-RPC POST bodies dispatched."),
    Metric("fastrpc_http_rpc_abandoned_total", COUNTER,
           "JSON-RPC POSTs whose client left before the answer: their calls were cancelled."),
    Metric("fastrpc_http_rpc_bodies_refused_total", COUNTER,
           "JSON-RPC POSTs refused for their body size (413)."),
    Metric("fastrpc_http_rpc_in_flight", GAUGE, "JSON-RPC POSTs waiting for async calls."),
    # --- memory -------------------------------------------------------------------
    Metric("fastrpc_pool_reserved_bytes", GAUGE, "Bytes the buffer pool holds from the allocator."),
    Metric("fastrpc_pool_in_use_bytes", GAUGE, "Pool bytes lent to connections now."),
    Metric("fastrpc_pool_high_water_bytes", GAUGE, "The most pool bytes ever in use at once."),
    Metric("fastrpc_pool_acquire_failures_total", COUNTER,
           "Pool acquires refused at the byte ceiling."),
    Metric("fastrpc_memory_bytes", GAUGE,
           "Bytes the server accounts for: pool blocks in use plus connection slots in use."),
    Metric("fastrpc_memory_limit_bytes", GAUGE, "The memory ceiling (Limits.memory_limit)."),
    Metric("fastrpc_memory_soft_limit_bytes", GAUGE,
           "Above this, new upgrades and POSTs get 503 (memory_limit * memory_soft_ratio)."),
    # --- JSON-RPC -----------------------------------------------------------------
    Metric("fastrpc_rpc_requests_total", COUNTER,
           "JSON-RPC calls of registered methods, by method and outcome (success: a result; "
           "error: the method raised RPCError; failure: it raised anything else, -32603; "
           "timeout: the namespace timeout; refused: breaker open or namespace busy).",
           ("method", "outcome")),
    Metric("fastrpc_rpc_request_duration_seconds", HISTOGRAM,
           "Time from a call's start to its reply, by method (calls that ran).", ("method",)),
    Metric("fastrpc_rpc_rejected_total", COUNTER,
           "Messages answered without running a method, by reason.", ("reason",)),
    Metric("fastrpc_rpc_batch_size", HISTOGRAM, "Entries per JSON-RPC batch."),
    Metric("fastrpc_rpc_requests_in_flight", GAUGE,
           "WebSocket requests read but not answered yet (the core's count)."),
    # --- subscriptions ------------------------------------------------------------
    Metric("fastrpc_subscriptions", GAUGE, "Subscriptions open."),
    Metric("fastrpc_subscription_channels", GAUGE, "Channels with at least one subscriber."),
    Metric("fastrpc_notifications_sent_total", COUNTER,
           "Subscription notifications written, one per subscriber."),
    Metric("fastrpc_subscribers_dropped_total", COUNTER,
           "Subscribers dropped for reading too slowly (over max_subscriber_queue)."),
    # --- namespaces (bulkheads) ---------------------------------------------------
    Metric("fastrpc_namespace_in_flight", GAUGE, "Calls running in a namespace.", ("namespace",)),
    Metric("fastrpc_namespace_timeouts_total", COUNTER, "Calls that hit the namespace timeout.",
           ("namespace",)),
    Metric("fastrpc_namespace_failures_total", COUNTER,
           "Calls that failed (raised or timed out), counted by the breaker.", ("namespace",)),
    Metric("fastrpc_namespace_refused_total", COUNTER,
           "Calls refused by the namespace: busy (at max_concurrency) or unavailable (breaker "
           "open).", ("namespace", "reason")),
    Metric("fastrpc_namespace_breaker_state", GAUGE,
           "Circuit breaker: 0 closed, 1 open, 2 half-open.", ("namespace",)),
    # --- forwarding ---------------------------------------------------------------
    Metric("fastrpc_forwarded_calls_total", COUNTER,
           "Calls forwarded to peer nodes, by upstream and outcome (ok: an answer came back; "
           "busy: refused here, -32005; lost: the upstream went away, -32007; timeout: no "
           "answer in time); upstream \"none\": refused before any upstream was tried.",
           ("upstream", "outcome")),
    Metric("fastrpc_forwarded_in_flight", GAUGE, "Forwarded calls waiting for their upstream."),
    # --- traffic ------------------------------------------------------------------
    Metric("fastrpc_received_bytes_total", COUNTER, "Bytes read from sockets."),
    Metric("fastrpc_sent_bytes_total", COUNTER, "Bytes written to sockets."),
    Metric("fastrpc_ws_messages_received_total", COUNTER, "WebSocket data messages received."),
    Metric("fastrpc_ws_messages_sent_total", COUNTER, "WebSocket data messages sent."),
    Metric("fastrpc_ws_frames_received_total", COUNTER,
           "WebSocket frames received, control frames included."),
    Metric("fastrpc_ws_frames_sent_total", COUNTER, "WebSocket frames sent, control frames included."),
    Metric("fastrpc_ws_pings_sent_total", COUNTER, "Keep-alive pings sent."),
    Metric("fastrpc_read_pauses_total", COUNTER,
           "Times a connection's reading paused (requests in flight or output pending)."),
    Metric("fastrpc_write_waits_total", COUNTER, "Writes that would block: waited for the socket."),
    # --- the connection log (fastrpc.connlog) --------------------------------------
    Metric("fastrpc_log_lines_total", COUNTER,
           "Connection log lines written (refused or abnormally ended connections)."),
    Metric("fastrpc_log_lines_suppressed_total", COUNTER,
           "Connection log lines dropped by the log's rate limit."),
    # --- the event loop -----------------------------------------------------------
    Metric("fastrpc_event_loop_lag_seconds", HISTOGRAM,
           "How late the server's periodic sweep woke up: time the loop spent on other work."),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}


def sample_names(m: Metric) -> tuple[str, ...]:
    """The names of the samples a metric exposes (a histogram has three)."""
    if m.type == HISTOGRAM:
        return (m.name + "_bucket", m.name + "_sum", m.name + "_count")
    return (m.name,)


__all__ = [
    "BREAKER_STATES",
    "BY_NAME",
    "CLOSE_REASONS",
    "COUNTER",
    "FORWARD_OUTCOMES",
    "GAUGE",
    "HISTOGRAM",
    "LOOP_LAG_BUCKETS",
    "METRICS",
    "Metric",
    "REFUSE_REASONS_ADMISSION",
    "REFUSE_REASONS_CORE",
    "RPC_OUTCOMES",
    "RPC_REJECT_REASONS",
    "sample_names",
]
