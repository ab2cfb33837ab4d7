"""A fastrpc node in its own process, for the pool tests (killed with SIGKILL mid-run).

    python node.py --name a [--port 0] [--log FILE] [--loop uvloop]

Prints ``listening on 127.0.0.1:PORT`` once it accepts connections. Methods:

* ``echo(x)``, ``whoami() -> name``;
* ``slow_echo(x, seconds)`` (async): answers ``[name, x]`` after ``seconds``;
* ``record(token, seconds)`` (async): appends ``token`` to the ``--log`` file (one line,
  flushed) *when it starts*, then answers ``[name, token]`` after ``seconds``, so a
  test can tell which non-idempotent calls ran, even on a node killed before replying;
* topic ``feed.ticks``: ``{"node": name, "n": i}`` published every 10 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from fastrpc import Limits, Server  # noqa: E402


async def main(args: argparse.Namespace) -> None:
    server = Server(limits=Limits(max_connections=256, max_connections_per_ip=256, handshake_timeout=5.0))
    server.topic("feed", "ticks")
    name = args.name
    log = open(args.log, "a", buffering=1) if args.log else None

    @server.method("echo")
    def echo(x):  # type: ignore[no-untyped-def]
        return x

    @server.method("whoami")
    def whoami() -> str:
        return name

    @server.method("slow_echo")
    async def slow_echo(x, seconds: float):  # type: ignore[no-untyped-def]
        await asyncio.sleep(seconds)
        return [name, x]

    @server.method("record")
    async def record(token: str, seconds: float) -> list[str]:
        if log is not None:
            log.write(token + "\n")
        await asyncio.sleep(seconds)
        return [name, token]

    await server.start("127.0.0.1", args.port)
    print(f"listening on 127.0.0.1:{server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    n = 0
    while not stop.is_set():
        server.publish("feed.ticks", {"node": name, "n": n})
        n += 1
        try:
            await asyncio.wait_for(stop.wait(), 0.01)
        except asyncio.TimeoutError:
            pass
    await server.stop()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--log", default=None)
    p.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    a = p.parse_args()
    if a.loop == "uvloop":
        import uvloop

        uvloop.run(main(a))
    else:
        asyncio.run(main(a))
