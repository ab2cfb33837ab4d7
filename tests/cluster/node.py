"""A fastrpc node that overflows to its peers, in its own process (killed mid-run).

    python node.py --name a --port P [--peer ws://127.0.0.1:Q/ ...] [--concurrency 4] [--log FILE]
        [--max-in-flight N] [--memory-limit BYTES --memory-soft-ratio R]
        [--failure-threshold N --cooldown SECONDS]

The soft limits of issue 10: ``--max-in-flight`` is ``forward(max_in_flight=)``;
``--memory-limit`` / ``--memory-soft-ratio`` are the ``Limits``' (the memory soft limit
is their product); ``--failure-threshold`` / ``--cooldown`` are the ``work`` breaker's.

Prints ``listening on 127.0.0.1:PORT`` once it accepts connections. Methods:

* ``whoami() -> name``;
* namespace ``work`` (bulkhead ``max_concurrency`` = ``--concurrency``), forwarded to
  the peers on overflow (``when="overflow"``):
  - ``work_do(token, seconds)`` (async, not idempotent): appends ``name token`` to the
    ``--log`` file when it starts, answers ``[name, token]`` after ``seconds``;
  - ``work_read(token, seconds)`` (async, declared idempotent to the peer pool): the same;
  - ``work_fail(token)`` (async): appends ``name token`` and raises (-32603, a breaker
    failure);
* topic ``feed.ticks``: ``{"node": name, "n": i}`` every 10 ms;
* topic ``eth.ticks`` with the params of ``peers.py``'s (``count, early, interval``,
  ignored: one channel): ``{"node": name, "n": i}`` every 10 ms;
* ``subs() -> int``: subscriptions open on this node (what a gateway in front holds);
* ``stats() -> {"methods", "upstreams", "counters"}``: the request counters
  (``method_stats()``, the forwarder's ``upstream_stats()``, the dispatcher's
  ``metrics()`` without its bulkheads).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from fastrpc import Limits, Server  # noqa: E402
from fastrpc.cluster import peer_pool  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    limits = Limits(max_connections=4096, max_connections_per_ip=4096, handshake_timeout=5.0)
    if args.memory_limit is not None:
        limits = limits.replace(memory_limit=args.memory_limit, memory_soft_ratio=args.memory_soft_ratio)
    server = Server(limits=limits)
    server.topic("feed", "ticks")
    server.topic("eth", "ticks", params=lambda count=0, early=0, interval=0.0: "all")

    @server.method("subs")
    def subs() -> int:
        return int(server.dispatcher.subscriptions.count())

    @server.method("stats")
    def stats() -> dict[str, object]:
        d = server.dispatcher
        return {"methods": d.method_stats(),
                "upstreams": server.forwarders[0].upstream_stats() if server.forwarders else {},
                "counters": {k: v for k, v in d.metrics().items() if k != "services"}}
    name = args.name
    log = open(args.log, "a", buffering=1) if args.log else None

    @server.method("whoami")
    def whoami() -> str:
        return name

    class Work:
        async def do(self, token: str, seconds: float) -> list[str]:
            if log is not None:
                log.write(f"{name} {token}\n")
            await asyncio.sleep(seconds)
            return [name, token]

        read = do

        async def fail(self, token: str) -> None:
            if log is not None:
                log.write(f"{name} {token}\n")
            raise RuntimeError(f"{token} fails on purpose")

    server.register("work", Work(), max_concurrency=args.concurrency,
                    failure_threshold=args.failure_threshold, cooldown=args.cooldown)
    pool = None
    if args.peer:
        pool = peer_pool(args.peer, size=2, idempotent={"work_read"}, acquire_timeout=1.0,
                         backoff_initial=0.05, backoff_max=0.5)
        server.forward("work", pool, when="overflow", max_in_flight=args.max_in_flight,
                       health_interval=0.1, health_timeout=0.5)
        await pool.start()
    await server.start("127.0.0.1", args.port)
    print(f"listening on 127.0.0.1:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    n = 0
    while not stop.is_set():
        server.publish("feed.ticks", {"node": name, "n": n})
        server.publish("eth.ticks", {"node": name, "n": n}, key="all")
        n += 1
        try:
            await asyncio.wait_for(stop.wait(), args.tick)
        except asyncio.TimeoutError:
            pass
    await server.stop()
    if pool is not None:
        await pool.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--peer", action="append", default=[])
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--log", default=None)
    p.add_argument("--max-in-flight", type=int, default=None)
    p.add_argument("--memory-limit", type=int, default=None)
    p.add_argument("--memory-soft-ratio", type=float, default=0.8)
    p.add_argument("--failure-threshold", type=int, default=5)
    p.add_argument("--cooldown", type=float, default=10.0)
    p.add_argument("--loop", default="asyncio")
    p.add_argument("--tick", type=float, default=0.01, help="seconds between published ticks")
    a = p.parse_args()
    if a.loop == "uvloop":
        import uvloop

        uvloop.run(main(a))
    else:
        asyncio.run(main(a))
