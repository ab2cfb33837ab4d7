"""Fan-out server with fastrpc: ``server.publish`` to one topic.

    python benchmarks/peers/fanout_fastrpc.py --port 9010 [--loop uvloop]

Beside its peers because it shares their control channel and payload (``_fanout.py``);
the server is fastrpc's public API and nothing else: ``server.topic("eth",
"newHeads")``, clients call ``eth_subscribe("newHeads")``, and each ``publish SEQ`` read
from stdin is ``server.publish(topic, head(SEQ))`` (encoded once, the same frame bytes
written to every subscriber by the core's ``send_many``). Limits: ``max_connections``
and ``max_connections_per_ip`` from ``--max-connections`` (the subscribers come from a
few 127.0.0.x addresses), ``ping_interval=None`` and ``idle_timeout=None`` (no keepalive
inside the measured window, as in every fan-out server); the rest are the defaults.
"""
from __future__ import annotations

import argparse

from _cli import Stop, run
from _fanout import NAMESPACE, TOPIC, control, head

from fastrpc import Limits, Server


async def serve(args: argparse.Namespace) -> Stop:
    n = max(1, args.max_connections)
    server = Server(limits=Limits(max_connections=n, max_connections_per_ip=n,
                                  ping_interval=None, idle_timeout=None))
    topic = server.topic(NAMESPACE, TOPIC)
    await server.start(args.host, args.port)

    def publish(seq: int) -> int:
        return server.publish(topic, head(seq))

    stop_reading = control(publish, lambda: server.dispatcher.metrics()["subscriptions"])

    async def stop() -> None:
        stop_reading()
        await server.stop()

    return stop


if __name__ == "__main__":
    run(serve, __doc__.split("\n\n")[0], port=9010)
