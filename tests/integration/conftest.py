"""Integration fixtures: real sockets on 127.0.0.1, every test on asyncio and on uvloop.

pytest-asyncio is not used. Tests are plain functions that take the ``run`` fixture and
hand it a coroutine; ``run`` executes it under ``asyncio.run`` or ``uvloop.run`` (the
``loop_name`` parameter), bounded by a timeout::

    def test_echo(run, server):
        async def body():
            srv = await server(max_message_size=1024)
            ...
        run(body())

``server`` is a factory: each call starts ``Server(handler or Echo(), limits=...)`` on
127.0.0.1 port 0 with the tiny ``TINY`` limits plus the test's overrides. When the
test's coroutine ends, ``run`` stops every server it started *in the same loop* and
checks the teardown contract: ``len(server.reactor) == 0`` and
``server.pool.bytes_in_use == 0``. A violation fails the test itself.
"""
from __future__ import annotations

import asyncio
import sys
from typing import Any, Awaitable, Callable, Coroutine

import pytest
import uvloop

from fastrpc.server import Server

INTEGRATION_DIR = __file__.rsplit("/", 1)[0]
if INTEGRATION_DIR not in sys.path:
    sys.path.insert(0, INTEGRATION_DIR)

from helpers import TEST_TIMEOUT, TINY, Echo  # noqa: E402
from rawclient import close_leftover_sockets  # noqa: E402


class Runner:
    """Runs one coroutine per call on the selected loop; stops and checks the servers
    started inside it before the loop ends."""

    def __init__(self, loop_name: str) -> None:
        self.loop_name = loop_name
        self.servers: list[Server] = []
        self.checked: list[Server] = []

    def __call__(self, coro: Coroutine[Any, Any, Any], timeout: float = TEST_TIMEOUT) -> Any:
        async def main() -> Any:
            failed = True
            try:
                result = await asyncio.wait_for(coro, timeout)
                failed = False
                return result
            finally:
                await self._teardown(check=not failed)

        if self.loop_name == "uvloop":
            return uvloop.run(main())
        return asyncio.run(main())

    async def _teardown(self, check: bool) -> None:
        problems = []
        servers, self.servers = self.servers, []
        for srv in servers:
            await srv.stop()
            self.checked.append(srv)
            left = len(srv.reactor)
            in_use = srv.pool.bytes_in_use
            if left or in_use:
                problems.append(
                    f"server on port {getattr(srv, '_test_port', '?')}: after stop() "
                    f"len(reactor) == {left}, pool.bytes_in_use == {in_use}; "
                    f"metrics {srv.metrics()}"
                )
        close_leftover_sockets()
        if check and problems:
            pytest.fail("teardown check failed:\n" + "\n".join(problems), pytrace=False)


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def run(loop_name: str) -> Runner:
    return Runner(loop_name)


ServerFactory = Callable[..., Awaitable[Server]]


@pytest.fixture
def server(run: Runner) -> ServerFactory:
    """``await server(handler=None, *, server_kw=None, **limit_overrides)``: a started
    server (``Echo()`` unless ``handler``), limits ``TINY.replace(**limit_overrides)``."""

    async def start(
        handler: Any = None, *, server_kw: dict[str, Any] | None = None, **overrides: Any
    ) -> Server:
        srv = Server(handler if handler is not None else Echo(), limits=TINY.replace(**overrides),
                     **(server_kw or {}))
        await srv.start("127.0.0.1", 0)
        srv._test_port = srv.port  # type: ignore[attr-defined]  # for teardown messages
        run.servers.append(srv)
        return srv

    return start
