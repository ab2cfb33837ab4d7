"""A reactor dropped without stop() must not leak its sockets or blocks: the table owns
the client sockets, so freeing it closes them (also when the cycle collector frees it)."""
from __future__ import annotations

import asyncio
import gc
import os
import socket

from fastrpc import _core


def _fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


async def _wait(pred, what: str) -> None:
    for _ in range(200):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_reactor_dropped_without_stop_closes_its_sockets():
    async def body() -> None:
        pool = _core.BufferPool()
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        lsock.setblocking(False)
        before = _fds()
        r = _core.Reactor(pool, 10, 10)
        r.on_handshake = lambda *a: (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", False)
        r.add_listener(lsock.fileno())
        r.attach(asyncio.get_running_loop())
        clients = [socket.create_connection(lsock.getsockname()) for _ in range(5)]
        await _wait(lambda: len(r) == 5, "five accepted sockets")
        owned = _fds() - before - {c.fileno() for c in clients}  # accepted sockets + epoll
        assert len(owned) == 6
        r.detach()
        del r
        gc.collect()
        assert not (owned & _fds()), "the reactor's descriptors outlived it"
        assert pool.bytes_in_use == 0
        for c in clients:
            c.close()
        lsock.close()

    asyncio.run(body())
