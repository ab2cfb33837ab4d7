"""JSON-RPC over real sockets (issue 4): the fixtures of ``tests/integration`` reused.

``tests/integration/conftest.py`` (owned by the transport suite) provides ``loop_name``
(every test runs on asyncio and on uvloop) and ``run`` (runs the test's coroutine on
that loop, then stops every server registered in ``run.servers`` and fails the test
unless ``len(server.reactor) == 0 and server.pool.bytes_in_use == 0``). Its module is
loaded here under its own name and the two fixtures re-exported, so both suites share
one harness instead of two copies of it.

``rpc_server`` adds what the JSON-RPC tests need: ``await rpc_server(srv)`` starts a
``fastrpc.Server`` built by the test (it speaks JSON-RPC: no handler) on 127.0.0.1,
port 0, and hands it to ``run`` for the teardown check.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Awaitable, Callable

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
INTEGRATION_DIR = os.path.join(os.path.dirname(HERE), "integration")
for _path in (HERE, INTEGRATION_DIR):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def _load_integration_conftest() -> Any:
    name = "_fastrpc_integration_conftest"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, os.path.join(INTEGRATION_DIR, "conftest.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


_integration = _load_integration_conftest()

# Re-exported fixtures (pytest collects them from this module's namespace).
loop_name = _integration.loop_name
run = _integration.run

from fastrpc.server import Server  # noqa: E402


@pytest.fixture
def rpc_server(run: Any) -> Callable[[Server], Awaitable[Server]]:
    """``await rpc_server(srv)``: start ``srv`` on 127.0.0.1 port 0; ``run`` stops it and
    checks the table is empty and the pool returned."""

    async def start(srv: Server) -> Server:
        assert srv.dispatcher is not None, "rpc_server is for JSON-RPC servers (no handler)"
        await srv.start("127.0.0.1", 0)
        srv._test_port = srv.port  # type: ignore[attr-defined]  # for teardown messages
        run.servers.append(srv)
        return srv

    return start
