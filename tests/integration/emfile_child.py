"""Child process of ``test_emfile.py``: a server under a low RLIMIT_NOFILE.

    python emfile_child.py {asyncio|uvloop} SOFT_LIMIT

Lowers its own soft RLIMIT_NOFILE (never the test runner's), starts an echo server on
127.0.0.1 port 0, prints ``{"port": N}``, then obeys one command per stdin line and
answers each with one JSON line on stdout:

* ``fill``: open /dev/null until EMFILE → ``{"filled": n}`` (no descriptor left)
* ``free N``: close N of those → ``{"freed": N}``
* ``metrics``: ``server.metrics()``
* ``stop``: ``await server.stop()`` → ``{"left": len(reactor), "in_use": pool bytes}``, exit

It exits by itself if no command comes for 60 s.
"""
from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import sys
import threading

from fastrpc.limits import Limits
from fastrpc.server import Server


class Echo:
    def on_text(self, cid: int, data: bytes) -> bytes:
        return data

    def on_binary(self, cid: int, data: bytes) -> bytes:
        return data

    def on_close(self, cid: int, code: int) -> None:
        pass


def say(obj: object) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve(soft_limit: int) -> None:
    limits = Limits(
        max_connections=8,
        max_connections_per_ip=8,
        max_pending_handshakes=8,
        pool_size_classes=(1024, 8192, 65536),
        max_message_size=65536,
        memory_limit=4 << 20,
        idle_timeout=None,
        ping_interval=None,
        pong_timeout=None,
        close_timeout=1.0,
        drain_timeout=1.0,
    )
    server = Server(Echo(), limits=limits)
    await server.start("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "stop")

    threading.Thread(target=read_stdin, daemon=True).start()
    say({"port": server.port, "soft_limit": soft_limit})
    dummies: list[int] = []
    try:
        while True:
            line = await asyncio.wait_for(commands.get(), 60)
            cmd, *args = line.split()
            if cmd == "fill":
                for _ in range(soft_limit):
                    try:
                        dummies.append(os.open(os.devnull, os.O_RDONLY))
                    except OSError as exc:
                        if exc.errno != errno.EMFILE:
                            raise
                        break
                say({"filled": len(dummies)})
            elif cmd == "free":
                n = min(int(args[0]), len(dummies))
                for _ in range(n):
                    os.close(dummies.pop())
                say({"freed": n})
            elif cmd == "metrics":
                say(server.metrics())
            elif cmd == "stop":
                for fd in dummies:
                    os.close(fd)
                dummies.clear()
                await server.stop()
                say({"left": len(server.reactor), "in_use": server.pool.bytes_in_use})
                return
            else:
                say({"error": f"unknown command {line!r}"})
    finally:
        for fd in dummies:
            os.close(fd)
        await server.stop()


def main() -> None:
    loop_name, soft_limit = sys.argv[1], int(sys.argv[2])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft_limit, hard))
    if loop_name == "uvloop":
        import uvloop

        uvloop.run(serve(soft_limit))
    else:
        asyncio.run(serve(soft_limit))


if __name__ == "__main__":
    main()
