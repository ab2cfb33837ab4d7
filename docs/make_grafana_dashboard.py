"""Writes docs/grafana-dashboard.json: python docs/make_grafana_dashboard.py (from the repo root).

Panels are listed here rather than edited in Grafana so that every query stays readable
in review; tests/unit/test_metrics_schema.py holds each query to fastrpc/metrics_schema.py
and requires a panel for every metric.
"""
import json
panels = []
DS = {"type": "prometheus", "uid": "${datasource}"}
def ts(title, exprs, unit="short"):
    panels.append({"title": title, "type": "timeseries", "datasource": DS,
                   "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                   "targets": [{"refId": chr(65+i), "expr": e, "legendFormat": l, "datasource": DS}
                               for i, (e, l) in enumerate(exprs)]})
def row(title):
    panels.append({"title": title, "type": "row", "collapsed": False, "panels": []})
I = '{instance=~"$instance"}'
NOTOK = '{instance=~"$instance",outcome!="success"}'
R = "[$__rate_interval]"
def rate(name, by=None, sel=I):
    inner = "rate(%s%s%s)" % (name, sel, R)
    return "sum by (%s) (%s)" % (by, inner) if by else "sum(%s)" % inner
def q(p, name, by):
    return "histogram_quantile(%s, sum by (%s) (rate(%s%s%s)))" % (p, by, name, I, R)
row("Connections")
ts("Connections open", [("sum(fastrpc_connections_open%s)" % I, "open"), ("sum(fastrpc_handshakes_pending%s)" % I, "pending handshakes")])
ts("Opened and closed per second", [(rate("fastrpc_connections_opened_total"), "opened"),
    (rate("fastrpc_connections_closed_total", "reason"), "closed: {{reason}}")], "ops")
ts("Upgrades refused per second", [(rate("fastrpc_upgrades_refused_total", "reason"), "{{reason}}"),
    (rate("fastrpc_http_error_responses_total"), "HTTP answers >= 400 (all)")], "ops")
row("Memory")
ts("Memory against the ceiling", [("sum(fastrpc_memory_bytes%s)" % I, "accounted"), ("sum(fastrpc_memory_soft_limit_bytes%s)" % I, "soft limit (503 above)"),
    ("sum(fastrpc_memory_limit_bytes%s)" % I, "ceiling"), ("sum(process_resident_memory_bytes%s)" % I, "process RSS (single-process mode)")], "bytes")
ts("Buffer pool", [("sum(fastrpc_pool_reserved_bytes%s)" % I, "reserved"), ("sum(fastrpc_pool_in_use_bytes%s)" % I, "in use"),
    ("max(fastrpc_pool_high_water_bytes%s)" % I, "high water")], "bytes")
ts("Memory per open connection", [("sum(fastrpc_memory_bytes%s) / clamp_min(sum(fastrpc_connections_open%s), 1)" % (I, I), "accounted bytes / connection")], "bytes")
ts("Failed pool acquires per second", [(rate("fastrpc_pool_acquire_failures_total"), "at the ceiling")], "ops")
row("JSON-RPC")
ts("Requests per second by method", [(rate("fastrpc_rpc_requests_total", "method"), "{{method}}")], "reqps")
ts("Errors per second by outcome", [(rate("fastrpc_rpc_requests_total", "method, outcome", NOTOK), "{{method}} {{outcome}}"),
    (rate("fastrpc_rpc_rejected_total", "reason"), "rejected: {{reason}}")], "reqps")
ts("Latency p50 / p99 by method", [(q("0.5", "fastrpc_rpc_request_duration_seconds_bucket", "method, le"), "p50 {{method}}"),
    (q("0.99", "fastrpc_rpc_request_duration_seconds_bucket", "method, le"), "p99 {{method}}")], "s")
ts("Batch size p50 / p99", [(q("0.5", "fastrpc_rpc_batch_size_bucket", "le"), "p50"), (q("0.99", "fastrpc_rpc_batch_size_bucket", "le"), "p99")])
ts("Requests in flight", [("sum(fastrpc_rpc_requests_in_flight%s)" % I, "WebSocket"), ("sum(fastrpc_http_rpc_in_flight%s)" % I, "HTTP POST")])
ts("HTTP per second", [(rate("fastrpc_http_responses_total"), "plain HTTP answers"), (rate("fastrpc_http_rpc_requests_total"), "JSON-RPC POSTs"),
    (rate("fastrpc_http_rpc_abandoned_total"), "POSTs abandoned"), (rate("fastrpc_http_rpc_bodies_refused_total"), "bodies refused (413)")], "ops")
row("Subscriptions")
ts("Subscriptions", [("sum(fastrpc_subscriptions%s)" % I, "subscriptions"), ("sum(fastrpc_subscription_channels%s)" % I, "channels")])
ts("Notifications per second", [(rate("fastrpc_notifications_sent_total"), "sent"),
    (rate("fastrpc_subscribers_dropped_total"), "subscribers dropped (slow)")], "ops")
row("Namespaces")
ts("In flight by namespace", [("sum by (namespace) (fastrpc_namespace_in_flight%s)" % I, "{{namespace}}")])
ts("Breaker state (0 closed, 1 open, 2 half-open)", [("max by (namespace) (fastrpc_namespace_breaker_state%s)" % I, "{{namespace}}")])
ts("Timeouts, failures and refusals per second", [(rate("fastrpc_namespace_timeouts_total", "namespace"), "timeouts {{namespace}}"),
    (rate("fastrpc_namespace_failures_total", "namespace"), "failures {{namespace}}"),
    (rate("fastrpc_namespace_refused_total", "namespace, reason"), "refused {{namespace}} {{reason}}")], "ops")
row("Forwarding")
ts("Forwarded calls per second", [(rate("fastrpc_forwarded_calls_total", "upstream, outcome"), "{{upstream}} {{outcome}}")], "ops")
ts("Forwarded calls in flight", [("sum(fastrpc_forwarded_in_flight%s)" % I, "in flight")])
row("Traffic and the event loop")
ts("Bytes per second", [(rate("fastrpc_received_bytes_total"), "in"), (rate("fastrpc_sent_bytes_total"), "out")], "Bps")
ts("Frames and messages per second", [(rate("fastrpc_ws_frames_received_total"), "frames in"), (rate("fastrpc_ws_frames_sent_total"), "frames out"),
    (rate("fastrpc_ws_messages_received_total"), "messages in"), (rate("fastrpc_ws_messages_sent_total"), "messages out"),
    (rate("fastrpc_ws_pings_sent_total"), "pings sent")], "ops")
ts("Event-loop lag p99", [(q("0.99", "fastrpc_event_loop_lag_seconds_bucket", "instance, le"), "{{instance}}")], "s")
ts("Back-pressure per second", [(rate("fastrpc_read_pauses_total"), "read pauses"), (rate("fastrpc_write_waits_total"), "write waits"),
    (rate("fastrpc_accept_paused_total"), "accept paused (out of fds)"), (rate("fastrpc_connections_accepted_total"), "sockets accepted")], "ops")
ts("Connection log lines per second", [(rate("fastrpc_log_lines_total"), "written"), (rate("fastrpc_log_lines_suppressed_total"), "suppressed (rate limit)")], "ops")
x = y = 0
for i, p in enumerate(panels):
    p["id"] = i + 1
    if p["type"] == "row":
        if x:
            y += 8; x = 0
        p["gridPos"] = {"h": 1, "w": 24, "x": 0, "y": y}; y += 1
    else:
        p["gridPos"] = {"h": 8, "w": 12, "x": x, "y": y}
        x += 12
        if x >= 24:
            x = 0; y += 8
dash = {
  "title": "fastrpc", "uid": "fastrpc", "tags": ["fastrpc", "json-rpc", "websocket"],
  "description": "fastrpc servers: connections, memory against the ceiling, JSON-RPC requests, subscriptions, namespaces, forwarding, traffic, event-loop lag. Metric names: fastrpc/metrics_schema.py.",
  "schemaVersion": 39, "version": 1, "editable": True, "timezone": "browser", "refresh": "10s",
  "time": {"from": "now-1h", "to": "now"},
  "templating": {"list": [
     {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
     {"name": "instance", "type": "query", "label": "Instance", "datasource": DS,
      "query": {"query": "label_values(fastrpc_connections_open, instance)", "refId": "instance"},
      "definition": "label_values(fastrpc_connections_open, instance)", "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2}]},
  "annotations": {"list": []},
  "panels": panels,
}
json.dump(dash, open("docs/grafana-dashboard.json", "w"), indent=1)
print(len(panels))
