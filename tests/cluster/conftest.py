"""Cluster tests: real node processes on 127.0.0.1 (``node.py``), killed mid-run.

Reuses ``tests/integration_client``'s fixtures: ``run`` / ``loop_name`` (every test on
asyncio and uvloop, servers stopped and checked at the end) and ``crun`` (``run`` plus
the client teardown check: every client and pool closed, no pooled block leaked).
``cluster(names, concurrency=..., args=...)`` starts nodes that overflow to each other
(``args``: more ``node.py`` options, for every node or per name).
"""
from __future__ import annotations

import os
import socket
import sys
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(TESTS, "integration_client"))

_client_conftest: Any = None
for _name, _mod in list(sys.modules.items()):
    if _name.endswith("integration_client.conftest") or getattr(_mod, "__file__", "") == os.path.join(
            TESTS, "integration_client", "conftest.py"):
        _client_conftest = _mod
if _client_conftest is None:
    import importlib.util

    _spec = importlib.util.spec_from_file_location(
        "_fastrpc_client_conftest", os.path.join(TESTS, "integration_client", "conftest.py"))
    assert _spec is not None and _spec.loader is not None
    _client_conftest = importlib.util.module_from_spec(_spec)
    sys.modules["_fastrpc_client_conftest"] = _client_conftest
    _spec.loader.exec_module(_client_conftest)

loop_name = _client_conftest.loop_name
run = _client_conftest.run
crun = _client_conftest.crun
rpc_server = _client_conftest.rpc_server
Node = _client_conftest.Node

NODE_SCRIPT = os.path.join(HERE, "node.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ClusterNode(Node):  # type: ignore[misc, valid-type]
    """``node.py`` with its peers and its ``work`` concurrency; ``tokens()`` are
    ``"name token"`` lines of every call it started."""

    def __init__(self, name: str, workdir: str, loop_name: str, port: int,
                 peers: list[int], concurrency: int, extra: list[str] | None = None) -> None:
        super().__init__(name, workdir, loop_name)
        self.port = port
        self.peers = peers
        self.concurrency = concurrency
        self.extra = list(extra or ())

    def command(self) -> list[str]:
        cmd = [sys.executable, NODE_SCRIPT, "--name", self.name, "--port", str(self.port),
               "--log", self.log, "--loop", self.loop_name, "--concurrency", str(self.concurrency),
               *self.extra]
        for p in self.peers:
            cmd += ["--peer", f"ws://127.0.0.1:{p}/"]
        return cmd

    def tokens(self) -> list[str]:  # type: ignore[override]
        if not os.path.exists(self.log):
            return []
        with open(self.log) as f:
            return [line.split()[1] for line in f if line.strip()]


@pytest.fixture
def cluster(tmp_path: Any, loop_name: str) -> Any:
    """``await cluster(["a", "b", "c"], concurrency={"a": 4}, args={"a": ["--max-in-flight",
    "3"]})``: started nodes, each with every other as peer; all killed at the end.
    ``args``: a list (every node) or name -> list of more ``node.py`` options."""
    made: list[ClusterNode] = []

    async def make(names: list[str], concurrency: dict[str, int] | None = None,
                   args: list[str] | dict[str, list[str]] | None = None) -> list[ClusterNode]:
        ports = {n: free_port() for n in names}
        conc = concurrency or {}
        extra = args if isinstance(args, dict) else {n: list(args or ()) for n in names}
        nodes = [ClusterNode(n, str(tmp_path), loop_name, ports[n],
                             [ports[m] for m in names if m != n], conc.get(n, 16), extra.get(n))
                 for n in names]
        made.extend(nodes)
        for node in nodes:
            await node.start()
        return nodes

    yield make
    for node in made:
        node.kill()
