"""Fixtures for the browser tests: the installed Chromium (installed by ``install.sh`` when
missing, failing loudly when it cannot), the page server, fastrpc nodes, and a browser
that quits in teardown whatever the test did."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from browser_rig import Browser, PageServer, RpcNode, find_binaries  # noqa: E402


@pytest.fixture(scope="session")
def binaries() -> dict[str, str]:
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.fail("selenium is missing: it is in the test extra (pip install -e '.[test]')", pytrace=False)
    try:
        return find_binaries()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def page() -> Iterator[PageServer]:
    p = PageServer()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def node() -> Iterator[Callable[..., RpcNode]]:
    """``node(**server_kw)``: a started ``RpcNode``; every one is stopped in teardown."""
    started: list[RpcNode] = []

    def start(**server_kw: Any) -> RpcNode:
        n = RpcNode(**server_kw)
        started.append(n)
        return n.start()

    try:
        yield start
    finally:
        for n in started:
            n.stop()


@pytest.fixture
def browser(binaries: dict[str, str], tmp_path: Path) -> Iterator[Browser]:
    b = Browser(binaries, tmp_path / "home")
    try:
        yield b
    finally:
        b.quit()
