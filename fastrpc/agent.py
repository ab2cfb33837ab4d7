"""The HAProxy agent check: a node reports its spare capacity on a small TCP port.

HAProxy's ``agent-check`` (server keyword; ``agent-port``, ``agent-inter``) opens a TCP
connection to the agent port, reads one ASCII line and closes. The line here is one of:

* ``up ready 75%``: healthy, weight = 75 % of the server's configured ``weight``. The
  percentage is the node's spare capacity: 100 minus the tightest of connections /
  ``max_connections``, memory / the memory soft limit (``memory_limit`` ×
  ``memory_soft_ratio``) and requests in flight / ``max_inflight``, rounded down, but at
  least 1 % while anything is spare (0 % only when full). ``up`` and ``ready`` undo an
  earlier ``down`` or ``drain`` (HAProxy keeps those states until told otherwise).
* ``drain``: ``begin_drain()`` was called; HAProxy sends no new connections, the open
  ones carry on.
* ``down``: over the memory ceiling (where ``/health`` answers 503 and upgrades are
  refused); HAProxy marks the server down until the agent says ``up`` again.

The agent reads nothing (configure no ``agent-send``) and closes after the line. It is
served by asyncio's ``start_server``: a check interval brings a handful of connections,
so per-connection memory does not matter here.

:func:`agent_line` is the pure computation; :func:`start_agent` the asyncio listener.
``Server(agent_port=...)`` starts it with the server (see ``Server``).
"""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Callable

__all__ = ["agent_line", "start_agent", "AGENT_DOWN", "AGENT_DRAIN"]

log = logging.getLogger("fastrpc.agent")

AGENT_DRAIN = "drain"
AGENT_DOWN = "down"
#: Seconds the agent waits for a check's connection to take its line before dropping it.
AGENT_WRITE_TIMEOUT = 1.0


def agent_line(
    *,
    draining: bool,
    over_memory: bool,
    connections: int,
    max_connections: int,
    memory: int,
    memory_soft_limit: float,
    inflight: int,
    max_inflight: int | None,
) -> str:
    """The agent's answer, without the line end (see the module doc)."""
    if draining:
        return AGENT_DRAIN
    if over_memory:
        return AGENT_DOWN
    used = max(
        connections / max_connections if max_connections > 0 else 1.0,
        memory / memory_soft_limit if memory_soft_limit > 0 else 1.0,
        inflight / max_inflight if max_inflight else 0.0,
    )
    spare = max(0.0, 1.0 - used)
    pct = int(spare * 100 + 1e-9)  # 1 - 0.9 is 0.0999...: not 9 %
    if pct == 0 and spare > 0:
        pct = 1
    return f"up ready {pct}%"


async def start_agent(
    line: Callable[[], str], host: str = "127.0.0.1", port: int = 0, *, reuse_port: bool = False
) -> asyncio.Server:
    """Serve ``line()`` + ``\\n`` to every connection on ``host:port`` in the running loop
    (port 0 picks a free one: ``server.sockets[0].getsockname()``). Close it with
    ``close()`` and ``await wait_closed()``."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                text = line()
            except Exception:
                log.exception("agent: computing the reply failed")
                text = AGENT_DOWN  # fails safe: HAProxy's health check still decides "up"
            writer.write(text.encode("ascii") + b"\n")
            await asyncio.wait_for(writer.drain(), AGENT_WRITE_TIMEOUT)
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(
        answer, host, port, family=socket.AF_UNSPEC, reuse_address=True, reuse_port=reuse_port,
        backlog=64,
    )
