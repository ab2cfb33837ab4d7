"""Prometheus metrics: every figure of ``fastrpc.metrics_schema``, read at scrape time.

Nothing on the request path feeds this module: the core and the dispatcher keep plain
counters (C integers, dict entries) and :func:`snapshot` reads them when a scrape
arrives. ``prometheus_client`` (the ``metrics`` extra) renders them; it is imported
only here, only when used.

Three ways to get them:

* ``GET /metrics`` on the server's own port (``Server(metrics="/metrics")``, the default
  when ``prometheus_client`` is installed): fastrpc's figures plus the process
  collectors (``process_resident_memory_bytes``...), in the text format or OpenMetrics
  as the scraper's ``Accept`` asks.
* Your own registry: ``registry.register(fastrpc.metrics.Collector(server))``, or
  ``Server(metrics_registry=registry)`` to have ``/metrics`` serve that registry (your
  node's metrics and fastrpc's on one page).
* Several workers (``fastrpc serve --workers N``, or any set of processes sharing
  ``PROMETHEUS_MULTIPROC_DIR``): each worker copies its snapshot into its own files of
  that directory (``Mirror``, once a second and right before it answers a scrape), and
  whichever worker the kernel hands the scrape to answers for all of them
  (``prometheus_client.multiprocess.MultiProcessCollector``). Counters add up over every
  worker that ever ran; gauges add up over the live ones (``livesum``: the supervisor
  marks a worker dead when it exits).
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Union

from .metrics_schema import (
    BREAKER_STATES,
    BY_NAME,
    CLOSE_REASONS,
    COUNTER,
    GAUGE,
    HISTOGRAM,
    LOOP_LAG_BUCKETS,
    METRICS,
    REFUSE_REASONS_ADMISSION,
    REFUSE_REASONS_CORE,
    RPC_OUTCOMES,
    RPC_REJECT_REASONS,
    Metric,
)

if TYPE_CHECKING:
    from .server import Server

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: A counter's or gauge's sample: (label values, value).
Plain = tuple[tuple[str, ...], float]
#: A histogram's sample: (label values, upper bounds, non-cumulative counts (one more
#: than the bounds: the last is above the largest), sum).
Hist = tuple[tuple[str, ...], tuple[float, ...], list[int], float]
Samples = dict[str, list[Union[Plain, Hist]]]


def available() -> bool:
    """Whether ``prometheus_client`` can be imported (the ``metrics`` extra)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def snapshot(server: Server) -> Samples:
    """Every metric of the schema, read from ``server`` now: name → samples."""
    r = server.reactor
    c = r.counters_dict()
    lim = server.limits
    out: Samples = {m.name: [] for m in METRICS}

    def put(name: str, value: float, labels: tuple[str, ...] = ()) -> None:
        out[name].append((labels, value))

    put("fastrpc_connections_open", r.n_open)
    put("fastrpc_handshakes_pending", r.n_pending)
    put("fastrpc_connections_accepted_total", c["accepted"])
    put("fastrpc_connections_opened_total", c["upgraded"])
    for reason, key in CLOSE_REASONS.items():
        put("fastrpc_connections_closed_total", c[key], (reason,))
    for reason in REFUSE_REASONS_ADMISSION:
        put("fastrpc_upgrades_refused_total", server.refused[reason], (reason,))
    for reason, key in REFUSE_REASONS_CORE.items():
        put("fastrpc_upgrades_refused_total", c[key], (reason,))
    put("fastrpc_accept_paused_total", c["accept_paused"])

    put("fastrpc_http_responses_total", c["http_requests"])
    put("fastrpc_http_error_responses_total", c["refused_http"])
    h = server._http.metrics() if server._http is not None else {}
    put("fastrpc_http_rpc_requests_total", h.get("http_rpc_requests", 0))
    put("fastrpc_http_rpc_abandoned_total", h.get("http_rpc_abandoned", 0))
    put("fastrpc_http_rpc_in_flight", h.get("http_rpc_in_flight", 0))
    put("fastrpc_http_rpc_bodies_refused_total", server.refused["http_body"])

    p = server.pool.stats()
    put("fastrpc_pool_reserved_bytes", p["bytes_reserved"])
    put("fastrpc_pool_in_use_bytes", p["bytes_in_use"])
    put("fastrpc_pool_high_water_bytes", p["high_water"])
    put("fastrpc_pool_acquire_failures_total", p["failed_acquires"])
    put("fastrpc_memory_bytes", server.memory_in_use())
    put("fastrpc_memory_limit_bytes", lim.memory_limit)
    put("fastrpc_memory_soft_limit_bytes", lim.memory_limit * lim.memory_soft_ratio)

    put("fastrpc_rpc_requests_in_flight", r.inflight_total)
    d = server.dispatcher
    if d is not None:
        _rpc(out, d, server._http.dispatcher if server._http is not None else None)

    in_flight = 0
    for fwd in server.forwarders:
        in_flight += fwd.in_flight
        for upstream, outcomes in sorted(fwd.upstream_stats().items()):
            for outcome, n in sorted(outcomes.items()):
                # "": refused before any upstream was tried (an empty label is no label)
                put("fastrpc_forwarded_calls_total", n, (upstream or "none", outcome))
    put("fastrpc_forwarded_in_flight", in_flight)

    put("fastrpc_received_bytes_total", c["bytes_in"])
    put("fastrpc_sent_bytes_total", c["bytes_out"])
    put("fastrpc_ws_messages_received_total", c["messages_in"])
    put("fastrpc_ws_messages_sent_total", c["messages_out"])
    put("fastrpc_ws_frames_received_total", c["frames_in"])
    put("fastrpc_ws_frames_sent_total", c["frames_out"])
    put("fastrpc_ws_pings_sent_total", c["pings_sent"])
    put("fastrpc_read_pauses_total", c["read_pauses"])
    put("fastrpc_write_waits_total", c["write_waits"])

    logged = server.connlog.metrics()
    put("fastrpc_log_lines_total", logged["log_lines"])
    put("fastrpc_log_lines_suppressed_total", logged["log_suppressed"])

    lag = server.loop_lag
    out["fastrpc_event_loop_lag_seconds"].append(((), LOOP_LAG_BUCKETS, list(lag.buckets), lag.sum))
    return out


def _rpc(out: Samples, d: Any, http: Any) -> None:
    """The dispatchers' figures: per method, rejects, batches, subscriptions, namespaces.
    ``http``: the JSON-RPC-over-HTTP dispatcher (None: not served). The per-method
    counters live on the methods, shared by both; rejects and batches are each
    dispatcher's own, added up here."""
    from .dispatch import BATCH_BUCKETS, DURATION_BUCKETS

    m = d.metrics()
    if http is not None:
        h = http.metrics()
        m = dict(m, batch_buckets=[a + b for a, b in zip(m["batch_buckets"], h["batch_buckets"])],
                 batch_sum=m["batch_sum"] + h["batch_sum"],
                 **{k: m[k] + h[k] for k in RPC_REJECT_REASONS.values()})
    requests = out["fastrpc_rpc_requests_total"]
    durations = out["fastrpc_rpc_request_duration_seconds"]
    for method, s in sorted(d.method_stats().items()):
        for outcome in RPC_OUTCOMES:
            requests.append(((method, outcome), s[outcome]))
        durations.append(((method,), DURATION_BUCKETS, list(s["buckets"]), s["sum"]))
    for reason, key in RPC_REJECT_REASONS.items():
        out["fastrpc_rpc_rejected_total"].append(((reason,), m[key]))
    out["fastrpc_rpc_batch_size"].append(((), tuple(float(b) for b in BATCH_BUCKETS),
                                          list(m["batch_buckets"]), float(m["batch_sum"])))
    out["fastrpc_subscriptions"].append(((), m["subscriptions"]))
    out["fastrpc_subscription_channels"].append(((), m["channels"]))
    out["fastrpc_notifications_sent_total"].append(((), m["notifications_sent"]))
    out["fastrpc_subscribers_dropped_total"].append(((), m["subscribers_dropped_slow"]))
    for ns, b in sorted(m["services"].items()):
        out["fastrpc_namespace_in_flight"].append(((ns,), b["active"]))
        out["fastrpc_namespace_timeouts_total"].append(((ns,), b["timeouts"]))
        out["fastrpc_namespace_failures_total"].append(((ns,), b["failures"]))
        out["fastrpc_namespace_refused_total"].append(((ns, "busy"), b["busy"]))
        out["fastrpc_namespace_refused_total"].append(((ns, "unavailable"), b["unavailable"]))
        out["fastrpc_namespace_breaker_state"].append(((ns,), BREAKER_STATES[b["state"]]))


def _le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return str(floatToGoString(bound))


def families(samples: Samples) -> Iterator[Any]:
    """``prometheus_client`` metric families for a snapshot, in schema order."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    for m in METRICS:
        rows = samples[m.name]
        if m.type == COUNTER:
            fam: Any = CounterMetricFamily(m.name, m.help, labels=m.labels)
            for labels, value in rows:  # type: ignore[misc]
                fam.add_metric(labels, value)
        elif m.type == GAUGE:
            fam = GaugeMetricFamily(m.name, m.help, labels=m.labels)
            for labels, value in rows:  # type: ignore[misc]
                fam.add_metric(labels, value)
        else:
            fam = HistogramMetricFamily(m.name, m.help, labels=m.labels)
            for labels, bounds, counts, total in rows:  # type: ignore[misc]
                acc = 0
                buckets = []
                for bound, n in zip(bounds, counts):
                    acc += n
                    buckets.append((_le(bound), acc))
                buckets.append(("+Inf", acc + counts[-1]))
                fam.add_metric(labels, buckets, total)
        yield fam


class Collector:
    """A ``prometheus_client`` collector of one server's metrics:
    ``registry.register(Collector(server))``. Reads the server at each ``collect()``."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def describe(self) -> list[Any]:
        # Names only (the registry checks for duplicates at register time): without
        # this, registering would collect from a server that may not run yet.
        return list(families({m.name: [] for m in METRICS}))

    def collect(self) -> Iterator[Any]:
        return families(snapshot(self.server))


class Mirror:
    """Copies a server's snapshot into this process's files of ``PROMETHEUS_MULTIPROC_DIR``
    (``prometheus_client``'s multi-process format), absolute values each time: a
    process's counters only grow, so writing the current value is the same as adding
    the difference, and a missed sync loses nothing."""

    def __init__(self, server: Server) -> None:
        from prometheus_client import values

        self.server = server
        # The process's own multi-process value class when prometheus_client was imported
        # with the directory set (a worker): the node's metrics and ours then share one
        # open file per type; two mappings of one file in a process would overwrite
        # each other's entries.
        vc = values.ValueClass
        self._value_class = vc if getattr(vc, "_multiprocess", False) else values.MultiProcessValue()
        self._values: dict[tuple[str, str, tuple[str, ...]], Any] = {}

    def _value(self, m: Metric, sample: str, labelnames: tuple[str, ...], labels: tuple[str, ...]) -> Any:
        key = (sample, m.name, labels)
        v = self._values.get(key)
        if v is None:
            if m.type == COUNTER:
                v = self._value_class("counter", m.name[: -len("_total")], sample, labelnames, labels, m.help)
            elif m.type == GAUGE:
                v = self._value_class("gauge", m.name, sample, labelnames, labels, m.help,
                                      multiprocess_mode="livesum")
            else:
                v = self._value_class("histogram", m.name, sample, labelnames, labels, m.help)
            self._values[key] = v
        return v

    def sync(self) -> None:
        samples = snapshot(self.server)
        for m in METRICS:
            for row in samples[m.name]:
                if m.type == HISTOGRAM:
                    labels, bounds, counts, total = row  # type: ignore[misc]
                    names = m.labels + ("le",)
                    for bound, n in zip(bounds, counts):
                        self._value(m, m.name + "_bucket", names, labels + (_le(bound),)).set(n)
                    self._value(m, m.name + "_bucket", names, labels + ("+Inf",)).set(counts[-1])
                    self._value(m, m.name + "_sum", m.labels, labels).set(total)
                else:
                    labels, value = row  # type: ignore[misc]
                    self._value(m, m.name, m.labels, labels).set(value)


class Page:
    """What ``GET /metrics`` answers for one server: builds the registry on first use."""

    def __init__(self, server: Server, registry: Any = None) -> None:
        self.server = server
        self._registry = registry
        self._own = registry is None
        self.mirror: Mirror | None = None
        self._ready = False

    @property
    def multiprocess(self) -> bool:
        return bool(os.environ.get(MULTIPROC_ENV))

    def setup(self) -> None:
        """Build the registry (and the mirror in multi-process mode); idempotent."""
        if self._ready:
            return
        from prometheus_client import CollectorRegistry

        if self.multiprocess:
            from prometheus_client.multiprocess import MultiProcessCollector

            self.mirror = Mirror(self.server)
            if self._own:
                self._registry = CollectorRegistry()
            MultiProcessCollector(self._registry)
        elif self._own:
            from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

            self._registry = reg = CollectorRegistry()
            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)
            reg.register(Collector(self.server))
        else:
            self._registry.register(Collector(self.server))
        self._ready = True

    def render(self, headers: list[tuple[str, str]]) -> tuple[bytes, str]:
        """The page for a request with these headers: (body, Content-Type)."""
        from prometheus_client.exposition import choose_encoder

        self.setup()
        if self.mirror is not None:
            self.mirror.sync()  # this worker's own figures as of now
        accept = ",".join(v for k, v in headers if k.lower() == "accept")
        encoder, content_type = choose_encoder(accept)
        return encoder(self._registry), content_type


def schema_metric(name: str) -> Metric:
    """The schema entry of a sample name (``..._bucket`` → its histogram)."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name[: -len(suffix)] in BY_NAME:
            return BY_NAME[name[: -len(suffix)]]
    return BY_NAME[name]


__all__ = ["MULTIPROC_ENV", "Collector", "Mirror", "Page", "available", "families", "schema_metric", "snapshot"]
