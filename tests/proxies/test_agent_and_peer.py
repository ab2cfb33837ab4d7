"""The agent line (pure) and, in-process on 127.0.0.1, the agent port and the real client
behind a trusted proxy (the client sends X-Forwarded-For itself from 127.0.0.1, as a
proxy would). Every wait is bounded."""
from __future__ import annotations

import asyncio
import json

import pytest
import websockets

from fastrpc import Context, Limits, Server
from fastrpc.agent import agent_line

pytestmark = pytest.mark.timeout(60)

FULL = dict(draining=False, over_memory=False, connections=0, max_connections=100, memory=0,
            memory_soft_limit=1000.0, inflight=0, max_inflight=100)


def line(**kw):
    return agent_line(**{**FULL, **kw})


class TestAgentLine:
    def test_idle_is_full_weight(self):
        assert line() == "up ready 100%"

    def test_tightest_resource_decides(self):
        assert line(connections=25) == "up ready 75%"
        assert line(connections=25, memory=600) == "up ready 40%"
        assert line(connections=25, memory=600, inflight=90) == "up ready 10%"
        assert line(inflight=90, max_inflight=None) == "up ready 100%"  # not counted

    def test_rounding_keeps_a_spare_node_in(self):
        assert line(connections=99) == "up ready 1%"
        assert line(memory=999.9) == "up ready 1%"  # 0.01 % spare: still 1 %
        assert line(connections=100) == "up ready 0%"
        assert line(connections=150) == "up ready 0%"

    def test_drain_and_down(self):
        assert line(draining=True) == "drain"
        assert line(draining=True, over_memory=True) == "drain"
        assert line(over_memory=True) == "down"


async def read_agent(port: int) -> str:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    try:
        return (await asyncio.wait_for(reader.read(), 5)).decode("ascii")
    finally:
        writer.close()
        await writer.wait_closed()


def test_agent_port_follows_the_server():
    async def body():
        server = Server(limits=Limits(max_connections=4), agent_port=0)
        async with server:
            await server.start("127.0.0.1", 0)
            port = server.agent_port
            assert port is not None and port != server.port
            assert await read_agent(port) == "up ready 100%\n"
            async with websockets.connect(f"ws://127.0.0.1:{server.port}", compression=None):
                async with websockets.connect(f"ws://127.0.0.1:{server.port}", compression=None):
                    assert await read_agent(port) == "up ready 50%\n"
            server.begin_drain()
            assert await read_agent(port) == "drain\n"
        assert server.agent_port is None
        with pytest.raises(OSError):
            await read_agent(port)

    asyncio.run(asyncio.wait_for(body(), 30))


def test_no_agent_by_default():
    async def body():
        async with Server() as server:
            await server.start("127.0.0.1", 0)
            assert server.agent_port is None
    asyncio.run(asyncio.wait_for(body(), 30))


def peer_server(trusted, per_ip=2) -> Server:
    server = Server(limits=Limits(max_connections_per_ip=per_ip), trusted_proxies=trusted)

    @server.method("peer")
    def peer(ctx: Context) -> list:
        return list(ctx.peer)

    return server


async def ws_peer(port: int, xff: list[str] | None, local: str = "127.0.0.1"):
    headers = [("X-Forwarded-For", v) for v in (xff or [])]
    ws = await websockets.connect(f"ws://127.0.0.1:{port}", compression=None, additional_headers=headers,
                                  local_addr=(local, 0), open_timeout=5)
    await ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "peer"}))
    return ws, json.loads(await asyncio.wait_for(ws.recv(), 5))["result"]


def test_trusted_peer_sets_the_client_and_the_per_ip_cap_follows_it():
    async def body():
        server = peer_server(["127.0.0.1"])
        async with server:
            await server.start("127.0.0.1", 0)
            port = server.port
            a1, p = await ws_peer(port, ["1.1.1.1, 198.51.100.1"])
            assert p == ["198.51.100.1", 0]
            a2, _ = await ws_peer(port, ["198.51.100.1"])
            with pytest.raises(websockets.InvalidStatus) as e:
                await ws_peer(port, ["198.51.100.1"])
            assert e.value.response.status_code == 429
            b, p = await ws_peer(port, ["198.51.100.2"])  # another client behind the same proxy
            assert p == ["198.51.100.2", 0]
            c, p = await ws_peer(port, None)  # no header: the proxy itself
            assert p[0] == "127.0.0.1" and p[1] != 0
            for ws in (a1, a2, b, c):
                await ws.close()
            assert server.refused["per_ip"] == 1
            assert server._proxy_peer == {}  # nothing kept once upgraded

    asyncio.run(asyncio.wait_for(body(), 30))


def test_untrusted_peer_header_is_ignored():
    async def body():
        server = peer_server(["127.0.0.1"])
        async with server:
            await server.start("127.0.0.1", 0)
            ws, p = await ws_peer(server.port, ["198.51.100.1"], local="127.0.0.5")
            assert p[0] == "127.0.0.5"
            await ws.close()

    asyncio.run(asyncio.wait_for(body(), 30))


async def post(port: int, requests: list[bytes]) -> list[bytes]:
    """Several POSTs on one kept-alive connection (as a proxy pools them)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        for req in requests:
            writer.write(req)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            out.append(await asyncio.wait_for(reader.readexactly(length), 5))
    finally:
        writer.close()
        await writer.wait_closed()
    return out


def rpc_post(xff: str | None) -> bytes:
    body = b'{"jsonrpc":"2.0","id":1,"method":"peer"}'
    extra = f"X-Forwarded-For: {xff}\r\n" if xff is not None else ""
    return (f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_http_post_each_request_gets_its_own_client():
    async def body():
        server = peer_server(["127.0.0.1"])
        async with server:
            await server.start("127.0.0.1", 0)
            answers = await post(server.port, [rpc_post("198.51.100.1"), rpc_post("198.51.100.2"),
                                               rpc_post(None), rpc_post("198.51.100.3")])
            peers = [json.loads(a)["result"] for a in answers]
            assert [p[0] for p in peers] == ["198.51.100.1", "198.51.100.2", "127.0.0.1", "198.51.100.3"]
            for _ in range(100):  # the core reports the close on its next turn
                if not server._proxy_peer:
                    break
                await asyncio.sleep(0.01)
            assert server._proxy_peer == {}

    asyncio.run(asyncio.wait_for(body(), 30))


def test_without_trusted_proxies_nothing_changes():
    async def body():
        server = peer_server(None)
        async with server:
            await server.start("127.0.0.1", 0)
            [a] = await post(server.port, [rpc_post("198.51.100.1")])
            assert json.loads(a)["result"][0] == "127.0.0.1"

    asyncio.run(asyncio.wait_for(body(), 30))
