"""nginx in front of real fastrpc nodes on 127.0.0.1: the WebSocket upgrade proxied,
JSON-RPC over HTTP POST, passive failover, and the real client address from
X-Forwarded-For behind a trusted proxy (clients bound to 127.0.0.2, 127.0.0.3, ...)."""
from __future__ import annotations

import asyncio
import collections
import signal

import pytest
import websockets

from harness import Nginx, call, connect, post

pytestmark = pytest.mark.timeout(60)

# What the README shows, with the test's ports and paths filled in (temp paths: nginx
# runs from a temporary prefix, not /var/lib/nginx).
CONFIG = """\
worker_processes 1;
pid {dir}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    upstream fastrpc {{
UPSTREAMS
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://fastrpc;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 3600s;        # above the nodes' idle_timeout (300 s)
            proxy_send_timeout 3600s;
            proxy_connect_timeout 1s;
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries 2;
        }}
    }}
}}
"""


def start(binaries, procs, tmp_path, names, **node_env):
    nodes = procs.nodes(*names, **node_env)
    ups = "\n".join(f"        server 127.0.0.1:{n.port} max_fails=1 fail_timeout=10s;" for n in nodes)
    ngx = procs.add(Nginx(binaries["nginx"], tmp_path, CONFIG.replace("UPSTREAMS", ups)))
    return {n.name: n for n in nodes}, ngx


def test_websocket_and_http_rpc_through_nginx_and_failover(binaries, procs, tmp_path):
    nodes, ngx = start(binaries, procs, tmp_path, ("a", "b"))

    async def round(n: int) -> tuple[collections.Counter, collections.Counter]:
        ws_seen, post_seen = collections.Counter(), collections.Counter()
        for _ in range(n):  # two of each in a row: round robin sends them to both nodes
            for _ in range(2):
                ws = await connect(ngx.port)
                ws_seen[await call(ws, "whoami")] += 1
                assert await call(ws, "whoami", rid=2) in nodes  # more than one message
                await ws.close()
            for _ in range(2):
                post_seen[await post(ngx.port, "whoami")] += 1
        return ws_seen, post_seen

    async def body():
        before = await round(3)
        long_lived = await connect(ngx.port)
        owner = await call(long_lived, "whoami")
        survivor = "a" if owner == "b" else "b"
        nodes[owner].proc.kill(signal.SIGKILL)  # the node behind the open connection dies
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(long_lived.recv(), 5)
        after = await round(5)  # no failure: nginx moves on to the other node
        return before, after, survivor

    before, after, survivor = asyncio.run(asyncio.wait_for(body(), 40))
    assert before[0] == {"a": 3, "b": 3} and before[1] == {"a": 3, "b": 3}, before  # round robin
    assert after[0] == {survivor: 10} and after[1] == {survivor: 10}, after


def test_per_ip_limit_applies_to_the_real_client_behind_nginx(binaries, procs, tmp_path):
    nodes, ngx = start(binaries, procs, tmp_path, ("a",), trusted="127.0.0.1", per_ip="3")

    async def body():
        mine = [await connect(ngx.port, local="127.0.0.2") for _ in range(3)]
        assert [await call(ws, "peer") for ws in mine] == [["127.0.0.2", 0]] * 3
        with pytest.raises(websockets.InvalidStatus) as e:  # the 4th from 127.0.0.2
            await connect(ngx.port, local="127.0.0.2")
        assert e.value.response.status_code == 429
        # Other clients behind the same proxy are not affected...
        other = await connect(ngx.port, local="127.0.0.3")
        assert await call(other, "peer") == ["127.0.0.3", 0]
        # ...and a client cannot pose as another: nginx appends the real address.
        spoof = await connect(ngx.port, local="127.0.0.4", headers=[("X-Forwarded-For", "127.0.0.2")])
        assert await call(spoof, "peer") == ["127.0.0.4", 0]
        # HTTP POST: each request carries its client (nginx may reuse upstream connections).
        assert await post(ngx.port, "peer", local="127.0.0.5") == ["127.0.0.5", 0]
        assert await post(ngx.port, "peer", local="127.0.0.6",
                          headers=[("X-Forwarded-For", "10.9.9.9")]) == ["127.0.0.6", 0]
        for ws in mine + [other, spoof]:
            await ws.close()
        # The slots of 127.0.0.2 are free again once its connections closed.
        for _ in range(100):
            try:
                ws = await connect(ngx.port, local="127.0.0.2")
                break
            except websockets.InvalidStatus:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("127.0.0.2 still at its cap after closing")
        await ws.close()

    asyncio.run(asyncio.wait_for(body(), 40))


def test_without_trusted_proxies_every_client_behind_nginx_shares_its_address(binaries, procs, tmp_path):
    """The contrast: the same cap, nginx not trusted: the proxy's one address is capped."""
    nodes, ngx = start(binaries, procs, tmp_path, ("a",), per_ip="3")

    async def body():
        conns = [await connect(ngx.port, local=f"127.0.0.{i}") for i in (2, 3, 4)]
        assert (await call(conns[0], "peer"))[0] == "127.0.0.1"
        with pytest.raises(websockets.InvalidStatus) as e:
            await connect(ngx.port, local="127.0.0.5")
        assert e.value.response.status_code == 429
        for ws in conns:
            await ws.close()

    asyncio.run(asyncio.wait_for(body(), 40))
