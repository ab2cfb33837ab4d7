"""Fixtures for the proxy tests: the installed binaries (installed by ``install.sh`` when
missing, failing loudly when it cannot) and ``procs``, which kills every process a test
started in its teardown."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from harness import Procs, find_binaries  # noqa: E402


@pytest.fixture(scope="session")
def binaries() -> dict[str, str]:
    try:
        return find_binaries()
    except RuntimeError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture
def procs():
    p = Procs()
    try:
        yield p
    finally:
        p.close()
