"""``server.stats()``: plain Python objects, the connections by state, the pool per size
class, the table's bytes, the memory figures against the limits, and ``metrics()``.
(Its memory figures against the real RSS: ``test_memory_accounting.py``.)"""
from __future__ import annotations

import json

from helpers import wait_until
from rawclient import OP_BINARY, RawWS, open_socket

from fastrpc._core import SLOT_SIZE, encode_frame


def plain(obj: object) -> bool:
    """Only dicts with str keys, lists, and JSON scalars, all the way down."""
    if isinstance(obj, dict):
        return all(isinstance(k, str) and plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(plain(v) for v in obj)
    return obj is None or type(obj) in (bool, int, float, str)


def test_stats_figures(run, server):
    async def body():
        srv = await server(max_connections=8, max_pending_handshakes=4, memory_limit=4 << 20,
                           memory_soft_ratio=0.5, max_message_size=64 * 1024)
        idle = [await RawWS.open(srv.port, local_ip=f"127.0.0.{2 + i % 2}") for i in range(3)]
        partial = await RawWS.open(srv.port)
        await partial.send_raw(encode_frame(OP_BINARY, b"p" * 50_000, mask=True)[:20_000])
        silent = await open_socket(srv.port)  # a pending handshake
        await wait_until(lambda: srv.reactor.n_pending == 1 and srv.pool.bytes_in_use >= 64 * 1024,
                         what="a pending socket and a partial message")
        s = srv.stats()
        assert plain(s) and json.loads(json.dumps(s)) == s

        c = s["connections"]
        assert (c["open"], c["pending_handshakes"], c["requests_in_flight"]) == (4, 1, 0)
        assert (c["max_connections"], c["max_pending_handshakes"]) == (8, 4)
        assert c["by_state"]["open"] == 4 and c["by_state"]["handshake"] == 1
        assert sum(c["by_state"].values()) == len(srv.reactor) == 5

        p = s["pool"]
        assert p["limit"] == 4 << 20 and p["failed_acquires"] == 0
        assert [k["block_size"] for k in p["classes"]] == [1024, 8192, 65536]
        assert sum(k["bytes_reserved"] for k in p["classes"]) == p["bytes_reserved"]
        assert sum(k["blocks_in_use"] * k["block_size"] for k in p["classes"]) == p["bytes_in_use"]
        assert p["classes"][2]["blocks_in_use"] >= 1  # the partial 50 KB message's block
        assert p["high_water"] >= p["bytes_in_use"]
        for k in p["classes"]:
            assert k["blocks_total"] * k["block_size"] == k["bytes_reserved"]

        t = s["table"]
        assert t["slot_size"] == SLOT_SIZE == 72
        assert t["capacity"] == 8 + 4 and t["slots_bytes"] == 12 * 72
        assert t["slots_in_use_bytes"] == 5 * 72 and t["slots_used_bytes"] >= 5 * 72
        assert t["ips"] == 2 + 1  # 127.0.0.2, .3 and .1 (the pending socket is not counted yet)
        assert t["ip_table_bytes"] == t["ip_entries"] * 20 and t["flush_list_bytes"] == 12 * 4
        assert t["scratch_bytes"] == 256 * 1024

        m = s["memory"]
        assert m["accounted"] == srv.memory_in_use() == p["bytes_in_use"] + 5 * 72
        assert m["accounted"] == s["metrics"]["memory_bytes"]
        assert (m["limit"], m["soft_limit"]) == (4 << 20, 2 << 20)
        assert m["over_soft_limit"] is False and m["rss_limit"] is None
        assert m["pool_reserved"] == p["bytes_reserved"]
        assert m["core_bytes"] >= p["bytes_reserved"] + t["slots_bytes"] + t["ip_table_bytes"] + t["scratch_bytes"]
        assert m["rss"] > m["accounted"]

        assert set(srv.metrics()) <= set(s["metrics"])
        assert {"frames_in", "frames_out", "log_lines", "log_suppressed"} <= set(s["metrics"])

        silent.close()
        for ws in idle + [partial]:
            ws.close()
        await wait_until(lambda: len(srv.reactor) == 0, what="all gone")
        s = srv.stats()
        assert s["connections"]["by_state"] == dict.fromkeys(s["connections"]["by_state"], 0)
        assert s["memory"]["accounted"] == 0 and s["pool"]["bytes_in_use"] == 0

    run(body())


def test_over_the_soft_limit_shows(run, server):
    async def body():
        srv = await server(memory_limit=1 << 20, memory_soft_ratio=0.1, max_message_size=64 * 1024)
        holders = [await RawWS.open(srv.port) for _ in range(2)]
        for ws in holders:
            await ws.send_raw(encode_frame(OP_BINARY, b"p" * 60_000, mask=True)[:1000])
        await wait_until(lambda: srv.pool.bytes_in_use >= 2 * 64 * 1024, what="two blocks lent")
        m = srv.stats()["memory"]
        assert m["accounted"] > m["soft_limit"] == int((1 << 20) * 0.1)
        assert m["over_soft_limit"] is True
        for ws in holders:
            ws.close()

    run(body())


def test_frame_counters_over_sockets(run, server):
    """frames_in / frames_out in metrics(): the handshake is no frame; a fragmented
    message is its frames, its echo one frame; a ping and its pong one each."""

    async def body():
        srv = await server()
        ws = await RawWS.open(srv.port)
        await ws.send_frame(0x1, b"ab", fin=False)
        await ws.send_frame(0x0, b"cd", fin=False)
        await ws.send_frame(0x0, b"ef")
        assert await ws.recv() == (0x1, b"abcdef")
        await ws.send_frame(0x9, b"ping")
        assert await ws.recv_event() == (0xA, b"ping")
        m = srv.metrics()
        assert (m["frames_in"], m["frames_out"], m["messages_in"], m["messages_out"]) == (4, 2, 1, 1)
        await ws.send_close(1000)
        await ws.expect_close()
        await wait_until(lambda: len(srv.reactor) == 0, what="closed")
        m = srv.metrics()
        assert (m["frames_in"], m["frames_out"]) == (5, 3)
        ws.close()

    run(body())
