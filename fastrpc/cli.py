"""The ``fastrpc`` command (also ``python -m fastrpc``).

    fastrpc serve module:app [--host 127.0.0.1] [--port 8546] [--workers N] [--loop auto]
    fastrpc gateway --listen 127.0.0.1:8546 --upstream ws://node1:8546 --upstream ws://node2:8546
                    [--pool-size 2] [--max-connections 10000] [--workers N] [--loop auto]
    fastrpc demo [--host 127.0.0.1] [--port 8546]        # the demo node (fastrpc-demo)

``gateway`` runs a :class:`fastrpc.cluster.Gateway`: every method forwarded to the
upstreams through a connection pool, one upstream subscription per distinct channel.
With ``--workers N`` each worker process is a gateway of its own (own pool, own
upstream subscriptions). ``serve`` runs the :class:`~fastrpc.Server` named by ``module:app`` (a Server or a
factory returning one; see :mod:`fastrpc.workers` for workers, limits per worker,
stopping and restarts). ``worker`` is what the supervisor starts; not for direct use.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import workers


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8546, help="port (default 8546; 0 picks a free one)")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="event loop (default: uvloop when installed)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fastrpc", description="JSON-RPC 2.0 over WebSocket and HTTP")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve module:app, in one or several worker processes")
    serve.add_argument("app", help="module:attribute naming a fastrpc.Server or a factory of one")
    _common(serve)
    serve.add_argument("--workers", type=int, default=1,
                       help="processes sharing the port with SO_REUSEPORT (default 1: no supervisor)")
    serve.add_argument("--stop-timeout", type=float, default=30.0,
                       help="seconds workers get to drain and stop before they are killed (default 30)")
    worker = sub.add_parser("worker", help=argparse.SUPPRESS)
    worker.add_argument("app")
    _common(worker)
    worker.add_argument("--index", type=int, default=0)
    worker.add_argument("--parent", type=int, default=None)
    gw = sub.add_parser("gateway", help="forward every call to upstream nodes through a pool")
    gw.add_argument("--listen", default="127.0.0.1:8546", help="host:port (default 127.0.0.1:8546)")
    gw.add_argument("--upstream", action="append", required=True, metavar="URL",
                    help="ws:// URL of an upstream node (repeat for several)")
    gw.add_argument("--pool-size", type=int, default=2, help="connections per upstream (default 2)")
    gw.add_argument("--max-connections", type=int, default=10_000,
                    help="client connections per worker (default 10000)")
    gw.add_argument("--workers", type=int, default=1, help="gateway processes on the port (default 1)")
    gw.add_argument("--stop-timeout", type=float, default=30.0)
    gw.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    demo = sub.add_parser("demo", help="the demo node")
    _common(demo)
    args = p.parse_args(argv)

    sys.path.insert(0, os.getcwd())  # module:app is looked up like uvicorn/gunicorn do: from here
    if args.command == "gateway":
        return _gateway(args)
    if args.command == "serve" and args.workers > 1:
        return workers.Supervisor(args.app, args.host, args.port, args.workers, args.loop,
                                  args.stop_timeout).run()
    if args.command == "serve":
        workers.run_loop(lambda: workers.serve_until_signal(args.app, args.host, args.port), args.loop)
        return 0
    if args.command == "worker":
        workers.die_with_parent()
        if args.parent is not None and os.getppid() != args.parent:
            return 1  # the supervisor died before this worker got going
        workers.run_loop(lambda: workers.serve_until_signal(
            args.app, args.host, args.port, reuse_port=True, worker=args.index,
            parent=args.parent), args.loop)
        return 0
    from .demo import run as run_demo

    workers.run_loop(lambda: run_demo(args.host, args.port), args.loop)
    return 0


def _gateway(args: argparse.Namespace) -> int:
    from .cluster import GATEWAY_ENV

    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        raise SystemExit(f"--listen must be host:port, not {args.listen!r}")
    cfg = {"upstreams": args.upstream, "pool_size": args.pool_size,
           "limits": {"max_connections": args.max_connections,
                      "max_connections_per_ip": args.max_connections}}
    os.environ[GATEWAY_ENV] = json.dumps(cfg)  # the workers build theirs from it
    app = "fastrpc.cluster:gateway_from_env"
    if args.workers > 1:
        return workers.Supervisor(app, host, int(port), args.workers, args.loop, args.stop_timeout).run()
    workers.run_loop(lambda: workers.serve_until_signal(app, host, int(port)), args.loop)
    return 0
