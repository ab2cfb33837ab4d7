"""A node for the proxy tests (``fastrpc serve tests.apps.proxy_app:build``), configured
by environment variables so the tests can start several on different ports:

``NODE_NAME`` (what ``whoami`` answers), ``NODE_AGENT_PORT`` (serve the HAProxy agent
check there), ``NODE_TRUSTED`` (comma-separated trusted proxy networks),
``NODE_MAX_CONNECTIONS`` (default 100), ``NODE_PER_IP`` (``max_connections_per_ip``,
default 1,000).
"""
from __future__ import annotations

import os

from fastrpc import Context, Limits, Server


def build() -> Server:
    env = os.environ
    name = env.get("NODE_NAME", str(os.getpid()))
    agent = env.get("NODE_AGENT_PORT")
    trusted = env.get("NODE_TRUSTED")
    server = Server(
        limits=Limits(max_connections=int(env.get("NODE_MAX_CONNECTIONS", "100")),
                      max_connections_per_ip=int(env.get("NODE_PER_IP", "1000")),
                      drain_timeout=2.0, close_timeout=1.0),
        agent_port=int(agent) if agent else None,
        trusted_proxies=trusted.split(",") if trusted else None,
    )

    @server.method("whoami")
    def whoami() -> str:
        return name

    @server.method("peer")
    def peer(ctx: Context) -> list:
        return list(ctx.peer)

    @server.method("node_drain")
    def node_drain() -> bool:
        """What a deployment does a few check intervals before stop()."""
        server.begin_drain()
        return True

    return server
