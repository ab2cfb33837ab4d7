"""Child process of ``test_memory_accounting.py``: a fresh interpreter running one
JSON-RPC server and nothing else, so its RSS is the server's.

    python memory_child.py {asyncio|uvloop} MAX_CONNECTIONS

Starts ``Server()`` (JSON-RPC, one method) on 127.0.0.1 port 0 with room for
MAX_CONNECTIONS idle connections from one address and no timers that would touch them
(no idle timeout, no pings), prints ``{"port": N, "pid": P}``, then answers one JSON
line per stdin line:

* ``stats``: ``server.stats()``
* ``stop``: ``await server.stop()`` → ``{"left": len(reactor), "in_use": pool bytes}``, exit

It exits by itself when stdin closes or no command comes for 120 s.
"""
from __future__ import annotations

import asyncio
import json
import os
import sys
import threading

from fastrpc.limits import Limits
from fastrpc.server import Server


def say(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve(max_connections: int) -> None:
    limits = Limits(
        max_connections=max_connections,
        max_connections_per_ip=max_connections,
        idle_timeout=None,
        ping_interval=None,
        pong_timeout=None,
        handshake_timeout=30.0,
    )
    server = Server(limits=limits)

    @server.method("echo")
    def echo(x: object) -> object:
        return x

    await server.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "stop")

    threading.Thread(target=read_stdin, daemon=True).start()
    say({"port": server.port, "pid": os.getpid()})
    try:
        while True:
            line = await asyncio.wait_for(commands.get(), 120)
            if line == "stats":
                say(server.stats())
            elif line == "stop":
                await server.stop()
                say({"left": len(server.reactor), "in_use": server.pool.bytes_in_use})
                return
            else:
                say({"error": f"unknown command {line!r}"})
    finally:
        await server.stop()


def main() -> None:
    loop_name, max_connections = sys.argv[1], int(sys.argv[2])
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(serve(max_connections))
    else:
        asyncio.run(serve(max_connections))


if __name__ == "__main__":
    main()
