"""The metric schema: Prometheus naming conventions, and the Grafana dashboard held to it."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fastrpc.looplag import LoopLag
from fastrpc.metrics_schema import (
    COUNTER,
    GAUGE,
    HISTOGRAM,
    LOOP_LAG_BUCKETS,
    METRICS,
    sample_names,
)

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
NAME = re.compile(r"[a-z][a-z0-9_]*")
#: Units a name may end in (base units only: seconds, not milliseconds; bytes, not KiB).
UNITS = ("_seconds", "_bytes")
#: Suffixes Prometheus reserves for a histogram's own samples.
RESERVED = ("_bucket", "_sum", "_count", "_created")


def test_names_follow_prometheus_conventions():
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    for m in METRICS:
        assert NAME.fullmatch(m.name), m.name
        assert m.name.startswith("fastrpc_"), m.name
        assert m.type in (COUNTER, GAUGE, HISTOGRAM)
        assert m.help and m.help[0].isupper() and m.help.endswith("."), m.name
        assert (m.type == COUNTER) == m.name.endswith("_total"), m.name
        assert not m.name.endswith(RESERVED), m.name
        assert not re.search(r"_(milli|micro|kilo|mega)|_ms$|_kb$|_mb$", m.name), m.name
        for label in m.labels:
            assert NAME.fullmatch(label) and not label.startswith("__") and label != "le"
        # A unit word in the name is a base unit at the end (before _total).
        stem = m.name.removesuffix("_total")
        if "second" in stem or "byte" in stem:
            assert stem.endswith(UNITS), m.name


def test_sample_names_of_a_histogram():
    h = next(m for m in METRICS if m.type == HISTOGRAM)
    assert sample_names(h) == (h.name + "_bucket", h.name + "_sum", h.name + "_count")


def dashboard_exprs() -> list[str]:
    d = json.loads(DASHBOARD.read_text())
    out = []
    stack = list(d["panels"])
    while stack:
        p = stack.pop()
        stack.extend(p.get("panels", []))
        out.extend(t["expr"] for t in p.get("targets", []))
    return out


def test_dashboard_queries_only_schema_metrics_and_shows_them_all():
    exprs = dashboard_exprs()
    assert exprs
    allowed = {n for m in METRICS for n in sample_names(m)}
    used = set()
    for e in exprs:
        assert e.count("(") == e.count(")"), e
        for name in re.findall(r"\b((?:fastrpc|process)_[a-z0-9_]+)", e):
            if name.startswith("process_"):
                # prometheus_client's process collector, served beside ours
                assert name in {"process_resident_memory_bytes"}, name
                continue
            assert name in allowed, f"{name} is not in fastrpc.metrics_schema"
            used.add(name)
    shown = {m.name for m in METRICS if set(sample_names(m)) & used}
    assert shown == {m.name for m in METRICS}, "every metric has a panel"


def test_dashboard_is_a_grafana_dashboard():
    d = json.loads(DASHBOARD.read_text())
    assert d["title"] and d["uid"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance"} <= names
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] < 24 and g["x"] + g["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"
            assert p["targets"]


@pytest.mark.parametrize("lag, bucket", [(0.0, 0), (-0.5, 0), (0.001, 0), (0.0011, 1), (3.0, len(LOOP_LAG_BUCKETS))])
def test_loop_lag_buckets(lag, bucket):
    lag_ = LoopLag()
    lag_.observe(lag)
    assert lag_.buckets[bucket] == 1 and sum(lag_.buckets) == lag_.count == 1
    assert lag_.last == max(lag, 0.0) and lag_.sum == max(lag, 0.0)
