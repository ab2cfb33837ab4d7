"""Out of file descriptors: accept hits EMFILE. The server must pause accepting (not
spin on a listener that stays readable), keep serving the connections it has, and
accept again once descriptors are free.

RLIMIT_NOFILE is lowered in a child process (``emfile_child.py``), never in pytest's.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys

from rawclient import OP_TEXT, RawWS, open_socket, upgrade_request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CHILD = os.path.join(HERE, "emfile_child.py")
SOFT_LIMIT = 64  # max_connections (8) + the server's FD_RESERVE (32) fit under it


class Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def ask(self, command: str, timeout: float = 10) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.read(timeout)

    async def read(self, timeout: float = 10) -> dict:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            err = await self.proc.stderr.read() if self.proc.stderr else b""
            raise AssertionError(f"child exited: {err.decode(errors='replace')}")
        return json.loads(line)


def test_emfile_pauses_accept_then_recovers(run, loop_name):
    async def body():
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, CHILD, loop_name, str(SOFT_LIMIT),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO,
        )
        child = Child(proc)
        first = waiting = None
        try:
            port = (await child.read())["port"]
            first = await RawWS.open(port)
            await first.send_text("before")
            assert await first.recv() == (OP_TEXT, b"before")

            filled = (await child.ask("fill"))["filled"]
            assert 0 < filled < SOFT_LIMIT
            # TCP completes in the kernel's backlog; accept() in the child fails.
            sock = await open_socket(port)
            waiting = RawWS(sock)
            await waiting.send_raw(upgrade_request())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            m = await child.ask("metrics")
            while m["accept_paused"] < 1 and loop.time() < deadline:
                await asyncio.sleep(0.05)
                m = await child.ask("metrics")
            assert m["accept_paused"] >= 1, m
            assert m["accepted"] == 1

            # Paused, not spinning: over ~1.5 s the listener is retried a few times at
            # most (the server retries every 0.5 s), and open connections are served.
            for i in range(15):
                await first.send_text(f"while paused {i}")
                assert await first.recv() == (OP_TEXT, f"while paused {i}".encode())
                await asyncio.sleep(0.1)
            m = await child.ask("metrics")
            assert 1 <= m["accept_paused"] <= 20, m
            assert m["accepted"] == 1 and m["upgraded"] == 1
            assert _nothing_to_read(sock), "the waiting client got an answer while out of fds"

            # Descriptors come back: the waiting client is accepted and upgraded.
            assert (await child.ask("free 4"))["freed"] == 4
            resp = await waiting.read_handshake(timeout=10)
            assert resp.status == 101
            await waiting.send_text("after")
            assert await waiting.recv() == (OP_TEXT, b"after")
            await first.send_text("first still here")
            assert await first.recv() == (OP_TEXT, b"first still here")
            m = await child.ask("metrics")
            assert m["accepted"] == 2 and m["upgraded"] == 2

            for ws in (first, waiting):
                await ws.send_close(1000)
                assert (await ws.expect_close())[0] == 1000
            done = await child.ask("stop")
            assert done == {"left": 0, "in_use": 0}
            _, err = await asyncio.wait_for(proc.communicate(), 10)
            assert proc.returncode == 0, err.decode(errors="replace")
            assert b"out of file descriptors" in err
        finally:
            for ws in (first, waiting):
                if ws is not None:
                    ws.close()
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()

    run(body())


def _nothing_to_read(sock: socket.socket) -> bool:
    """True when no byte (and no EOF) is waiting on ``sock``."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    return False  # data or EOF
