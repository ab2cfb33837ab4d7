"""The app ``benchmarks/soak.py`` serves: ``fastrpc serve soak_app:build --workers 2``
(with ``benchmarks/`` on ``PYTHONPATH``).

* ``soak_echo(s)`` → ``s`` and ``soak_add(a, b)`` → ``a + b``: the calls the soak
  clients send and check.
* ``soak_subscribe("tick")``: a notification every second whose result is the tick
  number (1, 2, ... counted by each worker process).
* Every second, just before publishing the tick, each worker appends one JSON line to
  ``$SOAK_STATS_DIR/stats-<pid>.jsonl``: its pid, the tick, the subscribers it wrote
  to, its table count (``len(server.reactor)``: every slot in use, handshakes and
  closing connections included), ``server.metrics()`` (connections, pool bytes in use
  and reserved, every counter) and the dispatcher's figures (calls in flight,
  subscriptions, channels). A file rather than a JSON-RPC method or ``GET /health``
  because a connection asking for the figures would hold a slot of the very table it
  counts (after the drain the table could never be seen empty), and with
  ``SO_REUSEPORT`` it would reach whichever worker the kernel picks, not the one to
  sample. The line is written just before the publish, when nothing is queued; a
  notification just published holds a pool block (1 KiB) per subscriber until the
  loop flushes it, so the pool right after the publish is in the line too
  (``burst``: bytes in use and reserved then).

Every limit is the default except two: ``max_connections`` (``$SOAK_MAX_CONNECTIONS``,
default 15,000: a worker's share of 20,000 plus room for the kernel's uneven split,
under the 20,000 open files a process may have here) and ``max_connections_per_ip``
(the same: all clients come from a few 127.0.0.x addresses).
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import orjson

from fastrpc import Limits, Server

TICK_S = 1.0
_tickers: list[asyncio.Task[None]] = []  # a reference keeps each ticker task alive


class Soak:
    def echo(self, s: str) -> str:
        return s

    def add(self, a: int, b: int) -> int:
        return a + b


def sample(server: Server, seq: int, published: int, burst: dict[str, int]) -> dict[str, object]:
    """One stats line: what the soak script plots and checks after the drain;
    ``published`` and ``burst``: the subscribers the previous tick (``seq`` - 1) was
    written to, and the pool right after that publish."""
    rpc = server.dispatcher.metrics()
    rpc.pop("services", None)  # per-namespace bulkhead figures: not sampled
    return {"t": time.time(), "pid": os.getpid(), "tick": seq, "published": published,
            "burst": burst, "table": len(server.reactor), "metrics": server.metrics(),
            "rpc": rpc}


async def tick(server: Server, stats: Path) -> None:
    """Publish the tick and write a stats line every TICK_S seconds, on a fixed
    schedule (a late tick does not shift the next ones)."""
    loop = asyncio.get_running_loop()
    fd = os.open(stats, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        seq, published, due = 0, 0, loop.time()
        burst = {"pool_in_use": 0, "pool_reserved": 0}
        while True:
            due += TICK_S
            await asyncio.sleep(max(0.0, due - loop.time()))
            seq += 1
            os.write(fd, orjson.dumps(sample(server, seq, published, burst)) + b"\n")
            published = server.publish("soak.tick", seq)
            burst = {"pool_in_use": server.pool.bytes_in_use,
                     "pool_reserved": server.pool.bytes_reserved}
    finally:
        os.close(fd)


def build() -> Server:
    """A worker's server, and its ticker (needs the worker's running loop)."""
    n = int(os.environ.get("SOAK_MAX_CONNECTIONS", "15000"))
    server = Server(limits=Limits(max_connections=n, max_connections_per_ip=n))
    server.register("soak", Soak())
    server.topic("soak", "tick")
    stats_dir = Path(os.environ.get("SOAK_STATS_DIR", "."))
    loop = asyncio.get_running_loop()  # fastrpc serve builds the app inside its loop
    _tickers.append(loop.create_task(tick(server, stats_dir / f"stats-{os.getpid()}.jsonl")))
    return server
