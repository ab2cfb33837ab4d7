"""HAProxy (``balance leastconn``, ``option httpchk`` on ``/health``, fastrpc's agent check)
in front of three real fastrpc nodes on 127.0.0.1.

Fast checks (``inter 200ms fall 2 rise 1``, ``agent-inter 200ms``). Waits read HAProxy's
own view of the servers from its stats socket, bounded."""
from __future__ import annotations

import asyncio
import collections
import signal

import pytest

from harness import HAProxy, call, connect, wait_for

pytestmark = pytest.mark.timeout(60)

# What the README shows, with the test's ports and paths filled in.
CONFIG = """\
global
    stats socket {sock} mode 600 level admin
    maxconn 4096

defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h          # an upgraded WebSocket; above the nodes' idle_timeout
    retries 2
    option redispatch 1        # a connect that fails is retried on another server

frontend rpc
    bind 127.0.0.1:{port}
    default_backend nodes

backend nodes
    balance leastconn
    option httpchk GET /health HTTP/1.1
    http-check send hdr Host fastrpc
    default-server check inter 200ms fall 2 rise 1 weight 100 agent-check agent-inter 200ms
{servers}
"""


def start(binaries, procs, tmp_path, names=("a", "b", "c")):
    nodes = procs.nodes(*names, agent=True)
    servers = "\n".join(f"    server {n.name} 127.0.0.1:{n.port} agent-port {n.agent_port}" for n in nodes)
    hap = procs.add(HAProxy(binaries["haproxy"], tmp_path, CONFIG.replace("{servers}", servers)))
    wait_for(lambda: all(r["status"] == "UP" and r["weight"] == "100" for r in hap.stat().values()),
             10, "every node UP at full weight")
    return {n.name: n for n in nodes}, hap


async def through(port: int, n: int) -> tuple[list, collections.Counter]:
    """``n`` WebSocket connections through the proxy, opened one after the other and kept
    open (leastconn sees each); returns them and which node answered each."""
    conns, seen = [], collections.Counter()
    for _ in range(n):
        ws = await connect(port)
        conns.append(ws)
        seen[await call(ws, "whoami")] += 1
    return conns, seen


async def close_all(conns) -> None:
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


def test_a_loaded_node_gets_fewer_new_connections(binaries, procs, tmp_path):
    nodes, hap = start(binaries, procs, tmp_path)

    async def body():
        # 90 of node a's 100 connections taken directly: its agent reports 10 %.
        direct = [await connect(nodes["a"].port) for _ in range(90)]
        try:
            await asyncio.to_thread(wait_for, lambda: int(hap.stat()["a"]["weight"]) <= 10, 10,
                                    "HAProxy to lower a's weight from the agent")
            conns, seen = await through(hap.port, 30)
            await close_all(conns)
            return seen
        finally:
            await close_all(direct)

    seen = asyncio.run(asyncio.wait_for(body(), 40))
    # Weights 10 : 100 : 100 under leastconn: a gets about 1 in 21 of the new connections.
    assert seen["a"] <= 3, seen
    assert seen["b"] >= 10 and seen["c"] >= 10, seen
    # and HAProxy's weight comes back once the load is gone
    wait_for(lambda: hap.stat()["a"]["weight"] == "100", 10, "a back at full weight")


def test_a_draining_node_gets_no_new_connections_and_keeps_its_open_ones(binaries, procs, tmp_path):
    nodes, hap = start(binaries, procs, tmp_path)

    async def body():
        control = await connect(nodes["a"].port)  # direct: a refuses new upgrades once draining
        old, seen_before = await through(hap.port, 12)
        assert seen_before["a"] >= 2, seen_before  # leastconn spread them
        assert await call(control, "node_drain") is True
        def out() -> str | None:
            status = hap.stat()["a"]["status"]
            return None if status.startswith("UP") else status

        status = await asyncio.to_thread(wait_for, out, 10, "HAProxy to take a out")
        new, seen_after = await through(hap.port, 20)  # every one succeeds...
        assert seen_after["a"] == 0, seen_after        # ...and none goes to a
        answers = [await call(ws, "whoami", rid=2) for ws in old]  # open ones carry on
        assert collections.Counter(answers) == seen_before
        await close_all(old + new + [control])
        return status

    status = asyncio.run(asyncio.wait_for(body(), 40))
    # The agent's "drain" comes first ("DRAIN (agent)"); /health 503 then marks it DOWN.
    assert status.startswith(("DRAIN", "DOWN")), status


def test_a_stopped_node_is_taken_out_with_no_failed_new_connection(binaries, procs, tmp_path):
    nodes, hap = start(binaries, procs, tmp_path)
    nodes["c"].proc.kill(signal.SIGKILL)

    async def body():
        # Before HAProxy has seen it: connects refused by c are redispatched (retries 2).
        early, seen_early = await through(hap.port, 10)
        await asyncio.to_thread(wait_for, lambda: hap.stat()["c"]["status"].startswith("DOWN"), 10,
                                "HAProxy to mark c DOWN")
        late, seen_late = await through(hap.port, 30)
        await close_all(early + late)
        return seen_early, seen_late

    seen_early, seen_late = asyncio.run(asyncio.wait_for(body(), 40))
    assert seen_early["c"] == 0 and sum(seen_early.values()) == 10
    assert seen_late["c"] == 0 and seen_late["a"] + seen_late["b"] == 30
    assert seen_late["a"] >= 10 and seen_late["b"] >= 10, seen_late
