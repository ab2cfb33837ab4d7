"""``GET /metrics``: the Prometheus page on the server's port, parsed with prometheus_client's
own parser, every figure driven by real traffic and checked against what was sent."""
from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from rawclient import http_request

import fastrpc
from fastrpc import Limits, RPCError, Server
from fastrpc.metrics import Collector
from fastrpc.metrics_schema import METRICS, sample_names

pytestmark = pytest.mark.timeout(120)


def page(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Sample name and sorted labels → value."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(p: dict, name: str, **labels: str) -> float:
    return p[(name, tuple(sorted(labels.items())))]


async def scrape(srv: Server, accept: str | None = None, method: str = "GET") -> Any:
    extra = f"Accept: {accept}\r\n" if accept else ""
    req = f"{method} /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()
    return await http_request(srv.port, req)


def build(**kw: Any) -> Server:
    srv = Server(limits=Limits(max_connections=64, max_connections_per_ip=3, idle_timeout=None,
                               ping_interval=None, pong_timeout=None), **kw)

    @srv.method("eth_blockNumber")
    def block_number() -> str:
        return "0x10"

    @srv.method("eth_fails")
    def fails() -> None:
        raise ValueError("boom")

    @srv.method("eth_refuses")
    def refuses() -> None:
        raise RPCError(-32000, "no")

    @srv.method("eth_slow")
    async def slow() -> int:
        await asyncio.sleep(0.02)
        return 1

    return srv


def test_page_lists_the_schema_and_counts_real_traffic(run, rpc_server):
    async def body() -> None:
        srv = await rpc_server(build())
        url = f"ws://127.0.0.1:{srv.port}"
        async with fastrpc.connect(url) as c:
            for _ in range(5):
                assert await c.call("eth_blockNumber") == "0x10"
            with pytest.raises(fastrpc.RPCError):
                await c.call("eth_fails")
            with pytest.raises(fastrpc.RPCError):
                await c.call("eth_refuses")
            assert await c.call("eth_slow") == 1
            with pytest.raises(fastrpc.RPCError):
                await c.call("eth_nope")  # unknown: counted, but never as a method label
            async with c.batch() as b:
                f1 = b.call("eth_blockNumber")
                f2 = b.call("eth_blockNumber")
                f3 = b.call("eth_blockNumber")
            assert [await f for f in (f1, f2, f3)] == ["0x10"] * 3
            r = await scrape(srv)
        assert r.status == 200
        assert r.headers["content-type"].startswith("text/plain")
        text = r.body.decode()
        p = page(text)
        # Every schema metric is on the page (HELP/TYPE at least) and nothing else of ours.
        families = {f.name: f for f in text_string_to_metric_families(text)}
        ours = {n for n in families if n.startswith("fastrpc_")}
        assert ours == {m.name.removesuffix("_total") for m in METRICS}
        for m in METRICS:
            fam = families[m.name.removesuffix("_total")]
            assert fam.type == m.type and fam.documentation == m.help
            for s in fam.samples:
                assert s.name in sample_names(m) or s.name.endswith("_created")
        ok = "fastrpc_rpc_requests_total"
        assert value(p, ok, method="eth_blockNumber", outcome="success") == 8
        assert value(p, ok, method="eth_fails", outcome="failure") == 1
        assert value(p, ok, method="eth_refuses", outcome="error") == 1
        assert value(p, ok, method="eth_slow", outcome="success") == 1
        assert not any(dict(k[1]).get("method") == "eth_nope" for k in p)
        assert value(p, "fastrpc_rpc_rejected_total", reason="unknown_method") == 1
        dur = "fastrpc_rpc_request_duration_seconds"
        assert value(p, dur + "_count", method="eth_blockNumber") == 8
        assert value(p, dur + "_bucket", method="eth_slow", le="0.01") == 0  # slept 20 ms
        assert value(p, dur + "_bucket", method="eth_slow", le="+Inf") == 1
        assert value(p, dur + "_sum", method="eth_slow") >= 0.02
        assert value(p, "fastrpc_rpc_batch_size_count") == 1
        assert value(p, "fastrpc_rpc_batch_size_sum") == 3
        assert value(p, "fastrpc_rpc_batch_size_bucket", le="2.0") == 0
        assert value(p, "fastrpc_rpc_batch_size_bucket", le="5.0") == 1
        assert value(p, "fastrpc_connections_open") == 1
        assert value(p, "fastrpc_connections_opened_total") == 1
        assert value(p, "fastrpc_ws_messages_received_total") == 10  # 9 calls + 1 batch
        assert value(p, "fastrpc_ws_frames_received_total") >= 10
        assert value(p, "fastrpc_received_bytes_total") > 0
        assert value(p, "fastrpc_namespace_failures_total", namespace="eth") == 1
        assert value(p, "fastrpc_namespace_breaker_state", namespace="eth") == 0
        assert value(p, "fastrpc_memory_limit_bytes") == srv.limits.memory_limit
        assert "process_resident_memory_bytes" in families  # the process collectors too

    run(body())


def test_closes_and_refusals_by_reason(run, rpc_server):
    async def body() -> None:
        srv = await rpc_server(build())
        url = f"ws://127.0.0.1:{srv.port}"
        clients = [await fastrpc.connect(url) for _ in range(3)]
        with pytest.raises(fastrpc.ConnectError) as e:  # per-IP cap of 3
            await fastrpc.connect(url)
        assert e.value.status == 429
        for c in clients:
            await c.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while srv.reactor.n_open and loop.time() < deadline:
            await asyncio.sleep(0.01)
        p = page((await scrape(srv)).body.decode())
        assert value(p, "fastrpc_upgrades_refused_total", reason="per_ip") == 1
        assert value(p, "fastrpc_connections_closed_total", reason="peer") == 3
        assert value(p, "fastrpc_connections_open") == 0
        assert value(p, "fastrpc_http_error_responses_total") == 1  # the 429

    run(body())


def test_openmetrics_head_and_off(run, rpc_server):
    async def body() -> None:
        srv = await rpc_server(build())
        r = await scrape(srv, accept="application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
        assert r.status == 200
        assert r.headers["content-type"].startswith("application/openmetrics-text")
        assert r.body.rstrip().endswith(b"# EOF")
        h = await scrape(srv, method="HEAD")
        assert h.status == 200 and h.body == b"" and int(h.headers["content-length"]) > 0
        post = await http_request(srv.port, b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert post.status == 405 and post.headers["allow"] == "GET, HEAD"
        off = await rpc_server(build(metrics=None))
        assert (await scrape(off)).status == 404

    run(body())


def test_own_registry_and_collector(run, rpc_server):
    async def body() -> None:
        reg = CollectorRegistry()
        mine = Counter("node_blocks_imported", "Blocks imported.", registry=reg)
        mine.inc(7)
        srv = await rpc_server(build(metrics_registry=reg))
        p = page((await scrape(srv)).body.decode())
        assert value(p, "node_blocks_imported_total") == 7
        assert value(p, "fastrpc_connections_open") == 0
        assert ("process_resident_memory_bytes", ()) not in p  # only what the node's registry has

        # No endpoint, the collector in a registry of the node's own.
        plain = await rpc_server(build(metrics=None))
        reg2 = CollectorRegistry()
        reg2.register(Collector(plain))
        async with fastrpc.connect(f"ws://127.0.0.1:{plain.port}") as c:
            await c.call("eth_blockNumber")
            assert reg2.get_sample_value("fastrpc_connections_open") == 1
        assert reg2.get_sample_value("fastrpc_rpc_requests_total",
                                     {"method": "eth_blockNumber", "outcome": "success"}) == 1

    run(body())


def test_event_loop_lag_is_seen(run, rpc_server):
    async def body() -> None:
        srv = await rpc_server(build())
        loop = asyncio.get_running_loop()
        before = srv.loop_lag.count
        deadline = loop.time() + 10
        while srv.loop_lag.count == before and loop.time() < deadline:
            await asyncio.sleep(0.05)
        # The reaper just went to sleep for one tick: block the loop past that tick, so
        # its next wake-up is about 0.3 s late.
        time.sleep(srv._tick() + 0.3)
        n = srv.loop_lag.count
        while srv.loop_lag.count == n and loop.time() < deadline:
            await asyncio.sleep(0.01)
        p = page((await scrape(srv)).body.decode())
        late = value(p, "fastrpc_event_loop_lag_seconds_count") - value(
            p, "fastrpc_event_loop_lag_seconds_bucket", le="0.1")
        assert late >= 1
        assert value(p, "fastrpc_event_loop_lag_seconds_sum") >= 0.2

    run(body())


def test_metrics_path_is_not_an_rpc_path(run, rpc_server):
    async def body() -> None:
        srv = await rpc_server(build())
        body_ = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"})
        req = (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body_)) + body_
        r = await http_request(srv.port, req)
        assert r.status == 405

    run(body())


MULTIPROC_CHILD = r'''
import asyncio, os, sys
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.multiprocess import MultiProcessCollector
from fastrpc import Server
from fastrpc.metrics import Mirror

node = Counter("node_blocks", "Blocks.")  # the node's own metric, multi-process too

async def main():
    srv = Server()
    srv.method("ping")(lambda: "pong")
    await srv.start("127.0.0.1", 0)
    mirror = Mirror(srv)
    for i in range(3):
        node.inc()
        mirror.sync()
    reg = CollectorRegistry()
    MultiProcessCollector(reg)
    print(reg.get_sample_value("node_blocks_total"), reg.get_sample_value("fastrpc_connections_open"),
          reg.get_sample_value("fastrpc_memory_limit_bytes"))
    await srv.stop()

asyncio.run(main())
'''


def test_mirror_shares_the_files_with_the_nodes_metrics(tmp_path):
    import os
    import subprocess
    import sys

    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", MULTIPROC_CHILD], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    node, conns, limit = out.stdout.split()
    assert float(node) == 3.0 and float(conns) == 0.0 and float(limit) == Limits().memory_limit


def test_forwarded_calls_by_upstream(run, rpc_server):
    async def body() -> None:
        upstream = await rpc_server(build())
        gw = build()
        pool = fastrpc.ClientPool([f"ws://127.0.0.1:{upstream.port}"], size=1)
        await pool.start()
        try:
            gw.forward(["eth_blockNumber"], pool, when="always", health_interval=None)
            await rpc_server(gw)
            async with fastrpc.connect(f"ws://127.0.0.1:{gw.port}") as c:
                for _ in range(4):
                    assert await c.call("eth_blockNumber") == "0x10"
            p = page((await scrape(gw)).body.decode())
        finally:
            await pool.close()
        url = f"ws://127.0.0.1:{upstream.port}"
        assert value(p, "fastrpc_forwarded_calls_total", upstream=url, outcome="ok") == 4
        assert value(p, "fastrpc_forwarded_calls_total", upstream=url, outcome="lost") == 0
        assert value(p, "fastrpc_forwarded_in_flight") == 0
        # the upstream counted them as its own calls
        up = page((await scrape(upstream)).body.decode())
        assert value(up, "fastrpc_rpc_requests_total", method="eth_blockNumber", outcome="success") == 4

    run(body())


def test_http_posts_count_with_the_websocket_ones(run, rpc_server):
    async def body() -> None:
        srv = await rpc_server(build())
        ok = orjson.dumps([{"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"},
                           {"jsonrpc": "2.0", "id": 2, "method": "eth_nope"}])
        for payload in (ok, b"{not json"):
            req = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(payload)) + payload
            assert (await http_request(srv.port, req)).status == 200
        p = page((await scrape(srv)).body.decode())
        assert value(p, "fastrpc_rpc_requests_total", method="eth_blockNumber", outcome="success") == 1
        assert value(p, "fastrpc_rpc_rejected_total", reason="unknown_method") == 1
        assert value(p, "fastrpc_rpc_rejected_total", reason="parse_error") == 1
        assert value(p, "fastrpc_rpc_batch_size_count") == 1
        assert value(p, "fastrpc_http_rpc_requests_total") == 2

    run(body())
