"""Guards on the harness itself: a suite that silently ran on the wrong loop, or
without the compiled core, would prove nothing."""
from __future__ import annotations

import asyncio

import uvloop

import fastrpc._core


def test_runs_on_the_requested_loop(run, loop_name):
    async def body():
        return asyncio.get_running_loop()

    loop = run(body())
    assert isinstance(loop, uvloop.Loop) == (loop_name == "uvloop")


def test_core_is_compiled():
    assert fastrpc._core.__file__.endswith(".so"), fastrpc._core.__file__
