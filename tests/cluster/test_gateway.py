"""The gateway in front of two upstreams: a fastrpc node in its own process
(``node.py``) and the ``websockets``-based JSON-RPC server of
``tests/integration_client/peers.py`` (a server this project did not write).

* calls are relayed with the client's own id; error replies pass through unchanged;
  a non-idempotent call whose upstream dropped is answered -32007 and never retried;
* many client connections subscribed to one topic make ONE upstream subscription,
  fanned out by the gateway;
* killing the upstream carrying it sends every subscriber the gap notice, and the
  stream continues from the other upstream;
* forwarded calls are counted per upstream and per method (issue 11).
"""
from __future__ import annotations

import asyncio
import collections

import orjson
import peers
from websockets.asyncio.client import connect as ws_connect

from fastrpc import Client, Gap, Limits, RPCError
from fastrpc.cluster import Gateway, gap_notice
from fastrpc.errors import UPSTREAM_LOST

#: Client connections subscribed in the default run (benchmarks/gateway.py does 10,000).
N_SUBSCRIBERS = 1_000
WAIT = 30.0


def _gateway(urls, **kw):
    return Gateway(urls, pool_size=1, pool_options={"backoff_initial": 0.05, "backoff_max": 0.5,
                                                     "acquire_timeout": 2.0},
                   limits=Limits(max_connections=N_SUBSCRIBERS + 100,
                                 max_connections_per_ip=N_SUBSCRIBERS + 100), **kw)


def test_calls_relayed_with_the_clients_id_and_errors_unchanged(crun, rpc_server):
    async def body():
        state = peers.PeerState()
        port, stop = await peers.start_websockets(state)
        try:
            gw = await rpc_server(_gateway([f"ws://127.0.0.1:{port}/"]))
            async with ws_connect(f"ws://127.0.0.1:{gw.port}/") as ws:
                for rid in ("abc", 7, None):
                    await ws.send(orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": "add", "params": [2, 3]}))
                    assert orjson.loads(await ws.recv()) == {"jsonrpc": "2.0", "id": rid, "result": 5}
                await ws.send(b'{"jsonrpc":"2.0","id":"x","method":"fail","params":[]}')
                assert orjson.loads(await ws.recv()) == {
                    "jsonrpc": "2.0", "id": "x",
                    "error": {"code": -32000, "message": "failed", "data": {"why": "asked"}}}
                await ws.send(b'{"jsonrpc":"2.0","id":1,"method":"nope"}')
                assert orjson.loads(await ws.recv())["error"]["code"] == -32601  # the upstream's answer
                # A batch: each entry forwarded, answered in one array.
                await ws.send(b'[{"jsonrpc":"2.0","id":1,"method":"echo","params":["a"]},'
                              b'{"jsonrpc":"2.0","id":2,"method":"add","params":{"a":1,"b":2}}]')
                assert orjson.loads(await ws.recv()) == [{"jsonrpc": "2.0", "id": 1, "result": "a"},
                                                         {"jsonrpc": "2.0", "id": 2, "result": 3}]
            calls = state.calls
            # drop(): the upstream connection dies mid-call; not idempotent: not retried.
            async with Client(f"ws://127.0.0.1:{gw.port}/") as c:
                try:
                    await c.call("drop")
                except RPCError as e:
                    assert e.code == UPSTREAM_LOST and e.data == {"sent": True}, e
                else:
                    raise AssertionError("drop answered")
                assert state.calls == calls + 1  # sent once, never again
                assert await c.call("echo", 1) == 1  # the pool reconnected
            # The request counters (issue 11): one outcome per forwarded call, per upstream;
            # per method only names the upstream answered: "nope" (its -32601) is an
            # unknown method, and "drop" (no answer ever came) is not shown either.
            url = f"ws://127.0.0.1:{port}/"
            assert gw.forwarder.upstream_stats() == {url: {"ok": 8, "busy": 0, "lost": 1, "timeout": 0}}
            stats = gw.dispatcher.method_stats()
            assert {k: {o: n for o, n in v.items() if o not in ("buckets", "sum") and n}
                    for k, v in stats.items()} == {
                "add": {"success": 4}, "echo": {"success": 2}, "fail": {"error": 1}}
            assert gw.dispatcher.metrics()["unknown_methods"] == 1
            assert gw.forwarder.counters == {"forwarded": 9, "busy": 0, "upstream_lost": 1}
            await gw.stop()  # its upstream pool is a client: closed before the leak check
        finally:
            await stop()

    crun(body(), 60)


def test_forwarded_timeouts_invalid_replies_and_busy_counted(crun, rpc_server):
    """The outcomes a reply does not give: the pool's call timeout (-32001), a reply
    that is not JSON-RPC (-32603; the upstream did answer), no upstream at all (-32005)."""
    async def body():
        state = peers.PeerState()
        port, stop = await peers.start_websockets(state)
        stopped = False
        try:
            gw = await rpc_server(Gateway([f"ws://127.0.0.1:{port}/"], pool_size=1, pool_options={
                "call_timeout": 0.3, "acquire_timeout": 0.3, "backoff_initial": 0.05, "backoff_max": 0.2}))
            async with Client(f"ws://127.0.0.1:{gw.port}/") as c:
                assert await c.call("sleep", 0) == 0
                for code, method, args in ((-32001, "sleep", (5,)), (-32603, "bad_shape", ()),
                                           (-32603, "bad_shape", ())):
                    try:
                        await c.call(method, *args)
                    except RPCError as e:
                        assert e.code == code, e
                    else:
                        raise AssertionError(f"{method} answered")
                await stop()
                stopped = True
                for _ in range(2):
                    try:
                        await c.call("sleep", 0)
                    except RPCError as e:
                        assert (e.code, e.message) == (-32005, "server busy"), e
                    else:
                        raise AssertionError("answered with no upstream")
            url = f"ws://127.0.0.1:{port}/"
            ups = gw.forwarder.upstream_stats()
            assert ups == {url: {"ok": 3, "busy": 0, "lost": 0, "timeout": 1},
                           "": {"ok": 0, "busy": 2, "lost": 0, "timeout": 0}}, ups
            stats = gw.dispatcher.method_stats()
            assert {k: {o: n for o, n in v.items() if o not in ("buckets", "sum") and n}
                    for k, v in stats.items()} == {"sleep": {"success": 1, "timeout": 1, "refused": 2}}
            assert stats["sleep"]["sum"] >= 0.3  # the timed-out call waited its call_timeout
            await gw.stop()
        finally:
            if not stopped:
                await stop()

    crun(body(), 60)


def test_one_upstream_subscription_fans_out_and_survives_a_kill(crun, rpc_server, cluster):
    async def body():
        (node,) = await cluster(["n1"])
        state = peers.PeerState()
        port, stop_peer = await peers.start_websockets(state)
        peer_url = f"ws://127.0.0.1:{port}/"
        stopped = False
        try:
            gw = await rpc_server(_gateway([peer_url, node.url]))
            url = f"ws://127.0.0.1:{gw.port}/"
            # A consumer stops reading once it saw its gap and 3 more ticks; the buffer keeps
            # its subscription alive until the end however slow the machine (the default
            # 1,024 ticks last 51 s, and an overflow unsubscribes).
            clients = [Client(url, subscription_buffer=100_000) for _ in range(N_SUBSCRIBERS)]
            await asyncio.gather(*(c.connect() for c in clients))
            params = ("ticks", 10**6, 0, 0.05)
            subs = await asyncio.gather(*(c.subscribe("eth", *params) for c in clients[:10]))
            subs += await asyncio.gather(*(c.subscribe("eth", *params) for c in clients[10:]))
            assert len({s.id for s in subs}) == 1  # one channel: one id shared
            # a raw client sees the exact gap notice
            raw = await ws_connect(url)
            await raw.send(orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": list(params)}))
            raw_id = None
            while raw_id is None:
                m = orjson.loads(await raw.recv())
                raw_id = m.get("result") if m.get("id") == 1 else None
            assert raw_id == subs[0].id

            # ask each upstream directly how many subscriptions it holds
            async with Client(node.url) as direct:
                on_node = await direct.call("subs")
            on_peer = len(state.subscribed) - len(state.unsubscribed)
            assert (on_node, on_peer) in ((1, 0), (0, 1)), (on_node, on_peer)
            assert gw.upstream_subscriptions() == 1

            got = collections.Counter()
            gaps = collections.Counter()
            sources: dict[int, list[str]] = collections.defaultdict(list)

            async def consume(i, s, n):
                async for item in s:
                    if isinstance(item, Gap):  # the gateway's gap notice
                        gaps[i] += 1
                        continue
                    sources[i].append(item.get("node", "peer"))
                    got[i] += 1
                    if got[i] >= n and gaps[i]:
                        return

            # some notifications before the kill
            tasks = [asyncio.ensure_future(consume(i, s, 3)) for i, s in enumerate(subs)]
            deadline = asyncio.get_running_loop().time() + WAIT  # bounded: a loaded machine is slow
            while not all(got[i] > 0 for i in range(N_SUBSCRIBERS)):
                assert asyncio.get_running_loop().time() < deadline, "every subscriber receives"
                await asyncio.sleep(0.05)
            before = {i: len(sources[i]) for i in range(N_SUBSCRIBERS)}
            first = "n1" if on_node else "peer"
            if on_node:
                node.kill()
            else:
                await stop_peer()
                stopped = True
            done, pending = await asyncio.wait(tasks, timeout=WAIT)
            assert not pending, f"{len(pending)} subscribers never saw the gap and the other upstream"
            for t in done:
                t.result()
            for i in range(N_SUBSCRIBERS):
                assert gaps[i] == 1, (i, gaps[i])
                after = sources[i][before[i]:]
                assert after and after[-1] != first, (i, after[-5:])
            # the raw client: the exact notice, then notifications from the other upstream
            seen_gap = False
            for _ in range(10_000):
                m = orjson.loads(await asyncio.wait_for(raw.recv(), WAIT))
                if m.get("params", {}).get("gap"):
                    assert orjson.dumps(m) == gap_notice("eth", raw_id)
                    seen_gap = True
                elif seen_gap:
                    assert m["params"]["subscription"] == raw_id
                    break
            assert seen_gap
            await raw.close()
            assert gw.upstream_subscriptions() == 1
            assert gw.gaps_sent == N_SUBSCRIBERS + 1
            await asyncio.gather(*(s.aclose() for s in subs))
            await asyncio.gather(*(c.close() for c in clients))
            await gw.stop()
        finally:
            if not stopped:
                await stop_peer()

    crun(body(), 120)


def test_gateway_command_with_workers(crun, tmp_path):
    """``fastrpc gateway --workers 2`` in front of a websockets upstream, as a process."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    async def body():
        state = peers.PeerState()
        port, stop = await peers.start_websockets(state)
        gport = free_port()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=root)
        proc = subprocess.Popen([sys.executable, "-m", "fastrpc", "gateway", "--listen", f"127.0.0.1:{gport}",
                                 "--upstream", f"ws://127.0.0.1:{port}/", "--workers", "2", "--loop", "asyncio"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                try:
                    async with Client(f"ws://127.0.0.1:{gport}/") as c:
                        assert await c.call("add", 20, 22) == 42
                        break
                except (OSError, ConnectionError):
                    assert loop.time() < deadline, "gateway did not start"
                    await asyncio.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            await stop()

    crun(body(), 60)


def test_subscribe_names_from_the_network_leave_nothing_behind(crun, rpc_server):
    """``<ns>_subscribe`` for namespaces the upstream does not have: each is refused with
    the upstream's answer, and no namespace, topic or upstream subscription stays in the
    gateway (the names come from the network: kept, they would grow without bound)."""
    async def body():
        state = peers.PeerState()
        port, stop = await peers.start_websockets(state)
        try:
            gw = await rpc_server(_gateway([f"ws://127.0.0.1:{port}/"]))
            async with Client(f"ws://127.0.0.1:{gw.port}/") as c:
                for i in range(300):
                    try:
                        await c.call(f"junk{i}_subscribe", "newHeads")
                    except RPCError as e:
                        assert e.code in (-32601, -32602), e
                    else:
                        raise AssertionError("an unknown namespace subscribed")
            assert gw._services == {} and gw._up == {}
            assert gw.upstream_subscriptions() == 0
        finally:
            await stop()

    crun(body())
