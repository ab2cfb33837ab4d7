"""Client and pool tests over 127.0.0.1: the ``run`` / ``loop_name`` fixtures of
``tests/integration`` (every test on asyncio and on uvloop, servers stopped and checked
at the end), plus a check of the client side.

``crun(coro)`` runs ``coro`` like ``run`` and then checks the client's teardown
contract: once every client and pool is closed, the loop's client reactors are gone
(retired and detached), and each had returned every pooled block when it retired. A
test that leaves a client open fails.

``rpc_server(srv)`` (from ``tests/integration_rpc``) starts a fastrpc ``Server``.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import sys
from typing import Any, Awaitable, Callable, Coroutine

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
for _path in (HERE, os.path.join(TESTS, "integration"), os.path.join(TESTS, "integration_rpc")):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def _load(name: str, path: str) -> Any:
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


_integration = _load("_fastrpc_integration_conftest", os.path.join(TESTS, "integration", "conftest.py"))
loop_name = _integration.loop_name
run = _integration.run

from fastrpc import client as client_mod  # noqa: E402
from fastrpc.server import Server  # noqa: E402

#: Seconds a test waits for a client reactor to retire after its last client closed.
RETIRE_WAIT = 2.0


@pytest.fixture
def rpc_server(run: Any) -> Callable[[Server], Awaitable[Server]]:
    async def start(srv: Server) -> Server:
        await srv.start("127.0.0.1", 0)
        srv._test_port = srv.port  # type: ignore[attr-defined]
        run.servers.append(srv)
        return srv

    return start


@pytest.fixture
def crun(run: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    leaks: list[str] = []
    original = client_mod._Hub.retire

    def retire(hub: Any) -> None:
        first = not hub.retired
        original(hub)
        if first and hub.pool.bytes_in_use:
            leaks.append(f"client reactor retired with {hub.pool.bytes_in_use} pooled bytes in use")

    monkeypatch.setattr(client_mod._Hub, "retire", retire)

    def go(coro: Coroutine[Any, Any, Any], timeout: float = 60.0) -> Any:
        async def body() -> Any:
            result = await coro
            loop = asyncio.get_running_loop()
            deadline = loop.time() + RETIRE_WAIT
            while client_mod._hubs.get(loop) and loop.time() < deadline:
                await asyncio.sleep(0.01)
            left = client_mod._hubs.get(loop)
            if left:
                n = sum(len(h.clients) for h in left.values())
                for h in list(left.values()):
                    h.retire()
                pytest.fail(f"{n} client connection(s) left open at the end of the test", pytrace=False)
            if leaks:
                pytest.fail("; ".join(leaks), pytrace=False)
            return result

        return run(body(), timeout)

    return go


NODE_SCRIPT = os.path.join(HERE, "node.py")
NODE_START_TIMEOUT = 20.0


class Node:
    """A fastrpc server process (``node.py``) on 127.0.0.1; ``kill()`` is SIGKILL."""

    def __init__(self, name: str, workdir: str, loop_name: str) -> None:
        self.name = name
        self.loop_name = loop_name
        self.log = os.path.join(workdir, f"node-{name}.log")
        self.errlog = os.path.join(workdir, f"node-{name}.stderr")
        self.port = 0
        self.proc: Any = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def command(self) -> list[str]:
        """The node's command line (subclasses add their own options)."""
        return [sys.executable, NODE_SCRIPT, "--name", self.name, "--port", str(self.port),
                "--log", self.log, "--loop", self.loop_name]

    async def start(self) -> "Node":
        """Start it (on the port it had before, after a restart); returns once it listens."""
        import subprocess

        assert self.proc is None, "already running"
        with open(self.errlog, "ab") as err:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=err,
                                         stdin=subprocess.DEVNULL)
        self.starts += 1
        fd = self.proc.stdout.fileno()
        os.set_blocking(fd, False)  # polled: no thread, no blocking the loop
        buf = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + NODE_START_TIMEOUT
        while b"\n" not in buf:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                chunk = None
            if chunk == b"" or self.proc.poll() is not None or loop.time() > deadline:
                self.kill()
                with open(self.errlog) as f:
                    raise RuntimeError(f"node {self.name} did not start: {f.read()[-2000:]}")
            if chunk:
                buf += chunk
            else:
                await asyncio.sleep(0.01)
        line = buf.split(b"\n", 1)[0].decode()
        assert line.startswith("listening on "), line
        self.port = int(line.rsplit(":", 1)[1])
        return self

    def kill(self) -> None:
        """SIGKILL and reap (no clean close: its connections just drop)."""
        if self.proc is None:
            return
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()
        self.proc = None

    def tokens(self) -> list[str]:
        """Every ``record`` token this node (all its runs) started executing."""
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [line.strip() for line in f if line.strip()]


@pytest.fixture
def nodes(tmp_path: Any, loop_name: str) -> Any:
    """``await nodes("a")``: a started ``Node``; every node is killed at the end."""
    made: list[Node] = []

    async def make(name: str) -> Node:
        node = Node(name, str(tmp_path), loop_name)
        made.append(node)
        return await node.start()

    yield make
    for node in made:
        node.kill()
