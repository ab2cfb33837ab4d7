"""Gateway memory per client connection and CPU per forwarded call.

    python benchmarks/gateway.py [--n 10000] [--calls 20000] [--loop uvloop] \\
        [--json benchmarks/results/gateway.json] [--markdown benchmarks/results/gateway.md]

1. Start one upstream node (``tests/cluster/node.py``, ticks every ``--tick`` s on
   topic ``eth.ticks``) and ``fastrpc gateway`` in front of it, each in its own process.
2. Let the gateway's RSS settle: the baseline (``VmRSS``, read as ``memory.py`` does).
3. Open ``--n`` client connections (fastrpc ``Client`` objects in this process);
   settle: **idle bytes per connection** = (RSS - baseline) / N.
4. Subscribe every connection to ``eth_subscribe("ticks")`` and check that the
   upstream holds ONE subscription and that every subscriber receives a tick; settle:
   **subscribed bytes per connection**.
5. ``--calls`` forwarded calls (``whoami``, 64 at a time over 64 of the connections):
   **gateway CPU per forwarded call** = its utime+stime delta / calls (``load.py``'s
   ``proc_cpu_s``), beside the upstream's CPU per call for the same calls and the
   same calls sent to the upstream directly (what a node spends answering one).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from _harness import proc_cpu_s, read_status  # noqa: E402

import fastrpc.client  # noqa: E402
from fastrpc import Client  # noqa: E402

# One loop holds 4,096 client connections by default; this process holds --n of them.
fastrpc.client.MAX_CLIENTS_PER_LOOP = 16_384

NODE = ROOT / "tests" / "cluster" / "node.py"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {port}")
            await asyncio.sleep(0.1)


async def settle(pid: int, window: float = 1.5, tolerance: int = 64 * 1024, limit: float = 20.0) -> int:
    samples: list[int] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        samples.append(read_status(pid)["VmRSS"])
        recent = samples[-int(window / 0.25):]
        if len(recent) >= int(window / 0.25) and max(recent) - min(recent) <= tolerance:
            return recent[-1]
        await asyncio.sleep(0.25)
    return samples[-1]


async def main(args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    up_port, gw_port = free_port(), free_port()
    procs = []
    try:
        up = subprocess.Popen([sys.executable, str(NODE), "--name", "up1", "--port", str(up_port),
                               "--loop", args.loop, "--tick", str(args.tick)],
                              stdout=subprocess.DEVNULL, env=env)
        procs.append(up)
        await wait_listening(up_port)
        gw = subprocess.Popen([sys.executable, "-m", "fastrpc", "gateway", "--listen", f"127.0.0.1:{gw_port}",
                               "--upstream", f"ws://127.0.0.1:{up_port}/", "--max-connections",
                               str(args.n + 200), "--loop", args.loop],
                              stdout=subprocess.DEVNULL, env=env)
        procs.append(gw)
        await wait_listening(gw_port)
        url = f"ws://127.0.0.1:{gw_port}/"
        async with Client(url) as c:  # warm the pool and the method cache once
            assert await c.call("whoami") == "up1"
        base = await settle(gw.pid)
        clients = [Client(url) for _ in range(args.n)]
        for i in range(0, args.n, 500):
            await asyncio.gather(*(c.connect() for c in clients[i:i + 500]))
        idle = await settle(gw.pid)
        got = [0] * args.n

        async def consume(i: int, s) -> None:
            async for _ in s:
                got[i] += 1

        subs = []
        for i in range(0, args.n, 500):
            subs += await asyncio.gather(*(c.subscribe("eth", "ticks") for c in clients[i:i + 500]))
        tasks = [asyncio.ensure_future(consume(i, s)) for i, s in enumerate(subs)]
        async with Client(f"ws://127.0.0.1:{up_port}/") as direct:
            upstream_subs = await direct.call("subs")
            deadline = time.monotonic() + 30
            while min(got) == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            received_all = min(got) > 0
            subscribed = await settle(gw.pid)

            async def calls(target, n: int) -> float:
                width = min(64, len(target))
                t0 = time.perf_counter()
                for _ in range(n // width):
                    await asyncio.gather(*(target[j].call("whoami") for j in range(width)))
                return time.perf_counter() - t0

            g0, u0 = proc_cpu_s(gw.pid), proc_cpu_s(up.pid)
            wall = await calls(clients, args.calls)
            g1, u1 = proc_cpu_s(gw.pid), proc_cpu_s(up.pid)
            directs = [Client(f"ws://127.0.0.1:{up_port}/") for _ in range(64)]
            await asyncio.gather(*(d.connect() for d in directs))
            d0 = proc_cpu_s(up.pid)
            dwall = await calls(directs, args.calls)
            d1 = proc_cpu_s(up.pid)
            await asyncio.gather(*(d.close() for d in directs))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in clients))
        n, k = args.n, (args.calls // 64) * 64
        return {
            "n": n, "loop": args.loop, "calls": k,
            "rss_baseline": base, "rss_idle": idle, "rss_subscribed": subscribed,
            "idle_bytes_per_conn": (idle - base) / n,
            "subscribed_bytes_per_conn": (subscribed - base) / n,
            "upstream_subscriptions": upstream_subs, "every_subscriber_received": received_all,
            "ticks_received_min": min(got),
            "gateway_cpu_us_per_call": (g1 - g0) / k * 1e6,
            "upstream_cpu_us_per_call_via_gateway": (u1 - u0) / k * 1e6,
            "upstream_cpu_us_per_call_direct": (d1 - d0) / k * 1e6,
            "calls_per_s_via_gateway": k / wall, "calls_per_s_direct": k / dwall,
        }
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def render(r: dict) -> str:
    return "\n".join([
        f"# Gateway: {r['n']:,} client connections, {r['loop']}",
        "",
        "| measure | value |", "|---|---|",
        f"| gateway RSS baseline | {r['rss_baseline'] / 2**20:.1f} MiB |",
        f"| idle bytes per client connection | {r['idle_bytes_per_conn']:.0f} B |",
        f"| subscribed bytes per client connection (one shared channel) | {r['subscribed_bytes_per_conn']:.0f} B |",
        f"| upstream subscriptions for {r['n']:,} subscribers | {r['upstream_subscriptions']} |",
        f"| every subscriber received ticks | {r['every_subscriber_received']} |",
        f"| gateway CPU per forwarded call | {r['gateway_cpu_us_per_call']:.1f} µs |",
        f"| upstream CPU per call, via the gateway / direct | {r['upstream_cpu_us_per_call_via_gateway']:.1f} / "
        f"{r['upstream_cpu_us_per_call_direct']:.1f} µs |",
        f"| calls/s, 64 in flight, via the gateway / direct | {r['calls_per_s_via_gateway']:,.0f} / "
        f"{r['calls_per_s_direct']:,.0f} |",
        "",
        "Command: `python benchmarks/gateway.py " + f"--n {r['n']} --calls {r['calls']} --loop {r['loop']}`"
        " (client connections in the benchmark process, gateway and upstream in their own; 2 cores).",
        "",
    ])


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--tick", type=float, default=0.5)
    p.add_argument("--loop", default="uvloop", choices=("asyncio", "uvloop"))
    p.add_argument("--json")
    p.add_argument("--markdown")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20_000), hard))
    import uvloop

    result = uvloop.run(main(a)) if a.loop == "uvloop" else asyncio.run(main(a))
    print(json.dumps(result, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    if a.markdown:
        Path(a.markdown).write_text(render(result))
