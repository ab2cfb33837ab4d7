"""JSON-RPC over HTTP POST on the WebSocket port (issue 9, section 4), over real sockets.

Every test runs on asyncio and uvloop; the ``run`` fixture stops each server and fails
the test unless its table is empty and its pool fully returned. Requests are written by
``httpclient.HttpConn`` (raw bytes, keep-alive, pipelining, byte-by-byte bodies); the
last tests use real HTTP clients this project did not write (``http.client``,
``urllib``, aiohttp). The README's curl command runs in ``test_demo.py``.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import time
import urllib.error
import urllib.request

import aiohttp
import orjson
import pytest
from helpers import TINY, wait_until
from httpclient import HttpConn, post_request
from rawclient import RawWS, http_request, upgrade_request
from rpcclient import RpcClient

from fastrpc import Context, Server
from fastrpc.errors import METHOD_NOT_FOUND, PARSE_ERROR, REQUEST_TIMEOUT

LIMIT = 1000  #: max_http_body of the servers here


class Chain:
    def blockNumber(self) -> str:
        return "0x10"

    def echo(self, value: object) -> object:
        return value

    def fail(self) -> None:
        raise RuntimeError("secret detail")

    def header(self, name: str, ctx: Context) -> str | None:
        return ctx.header(name)


class Slow:
    def __init__(self) -> None:
        self.cancelled = 0
        self.finished = 0
        self.started = 0

    async def sleep(self, seconds: float) -> float:
        self.started += 1
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return seconds

    async def echo(self, value: object) -> object:
        await asyncio.sleep(0.01)
        return value


class Blocking:
    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def make(**overrides: object) -> tuple[Server, Slow]:
    server_kw = overrides.pop("server_kw", {})
    srv = Server(limits=TINY.replace(max_http_body=LIMIT, **overrides), **server_kw)  # type: ignore[arg-type]
    slow = Slow()
    srv.register("chain", Chain())
    srv.register("slow", slow, timeout=2.0)
    srv.register("blocking", Blocking(), threaded=True)
    srv.topic("chain", "newHeads")
    return srv, slow


def req(method: str, params: object = None, rid: object = 1) -> dict[str, object]:
    msg: dict[str, object] = {"jsonrpc": "2.0", "method": method}
    if rid is not None:
        msg["id"] = rid
    if params is not None:
        msg["params"] = params
    return msg


def http_metric(srv: Server, name: str) -> int:
    return int(srv.metrics()[name])


async def raw_json(c: HttpConn, data: bytes) -> object:
    """POST ``data`` as it is; the decoded body of the 200."""
    resp = await c.post(data)
    assert resp.status == 200, resp
    return orjson.loads(resp.body)


# --- answers -----------------------------------------------------------------------------


def test_single_call(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        async with await HttpConn.open(srv.port) as c:
            resp = await c.post(req("chain_blockNumber"))
            assert resp.status == 200
            assert resp.headers["content-type"] == "application/json"
            assert "connection" not in resp.headers  # HTTP/1.1: persistent by default
            assert resp.headers["keep-alive"] == f"timeout={int(TINY.handshake_timeout)}"
            assert orjson.loads(resp.body) == {"jsonrpc": "2.0", "id": 1, "result": "0x10"}
            # Application errors and -32603 stay in a 200, as on go-ethereum.
            reply = await c.call("chain_fail", rid=2)
            assert reply["error"]["code"] == -32603 and "secret" not in resp.raw.decode()
            assert (await c.call("nope_nope", rid=3))["error"]["code"] == METHOD_NOT_FOUND
        m = srv.metrics()
        assert m["http_rpc_requests"] == 3 and m["http_requests"] == 3 and m["refused_http"] == 0
        assert m["accepted"] == 1 and m["upgraded"] == 0

    run(body())


def test_batch(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        batch = [
            req("slow_echo", ["a"], rid=1),
            req("chain_echo", ["b"], rid=2),
            req("chain_echo", ["n"], rid=None),  # a notification: no entry in the answer
            req("blocking_sleep", [0.01], rid=3),
            req("nope_nope", rid=4),
            req("slow_echo", ["n"], rid=None),
        ]
        async with await HttpConn.open(srv.port) as c:
            resp = await c.post(batch)
            assert resp.status == 200
            answer = orjson.loads(resp.body)
            assert [r["id"] for r in answer] == [1, 2, 3, 4]
            assert answer[0]["result"] == "a" and answer[1]["result"] == "b" and answer[2]["result"] == 0.01
            assert answer[3]["error"]["code"] == METHOD_NOT_FOUND
            # Batch limits are the WebSocket ones: [] is one -32600.
            assert (await raw_json(c, b"[]"))["error"]["code"] == -32600
        assert http_metric(srv, "http_rpc_deferred") == 1

    run(body())


def test_notifications_only_empty_200(run, rpc_server):
    async def body():
        srv, slow = make()
        await rpc_server(srv)
        async with await HttpConn.open(srv.port) as c:
            for payload in (
                req("chain_echo", [1], rid=None),  # synchronous: answered at once
                req("slow_sleep", [0.05], rid=None),  # async: answered when the call ends
                [req("chain_echo", [1], rid=None), req("slow_sleep", [0.05], rid=None)],
            ):
                resp = await c.post(payload)
                assert (resp.status, resp.body, resp.headers["content-length"]) == (200, b"", "0")
            assert slow.finished == 2  # the empty answer waited for the async calls
            # An empty body reads nothing and answers an empty 200 (go-ethereum's health check).
            resp = await c.post(b"")
            assert (resp.status, resp.body) == (200, b"")
            assert (await c.call("chain_blockNumber"))["result"] == "0x10"  # still open

    run(body())


def test_invalid_json_is_32700_in_200(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        async with await HttpConn.open(srv.port) as c:
            resp = await c.post(b'{"jsonrpc":"2.0","id":1,')
            assert resp.status == 200
            assert orjson.loads(resp.body) == {"jsonrpc": "2.0", "id": None,
                                               "error": {"code": PARSE_ERROR, "message": "Parse error"}}
            resp = await c.post(b"\xff\xfe")  # not UTF-8 either
            assert orjson.loads(resp.body)["error"]["code"] == PARSE_ERROR
            assert (await c.call("chain_echo", [7]))["result"] == 7  # the connection lives on

    run(body())


def test_async_and_threaded_deferred(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        async with await HttpConn.open(srv.port) as c:
            assert (await c.call("slow_sleep", [0.05]))["result"] == 0.05
            assert (await c.call("blocking_sleep", [0.05]))["result"] == 0.05
            # The namespace's timeout is the WebSocket one: -32001 in a 200.
            assert (await c.call("slow_sleep", [5]))["error"]["code"] == REQUEST_TIMEOUT
            assert (await c.call("chain_blockNumber"))["result"] == "0x10"
        m = srv.metrics()
        assert m["http_rpc_deferred"] == 3 and m["http_rpc_in_flight"] == 0

    run(body())


def test_subscriptions_not_supported(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        async with await HttpConn.open(srv.port) as c:
            reply = await c.call("chain_subscribe", ["newHeads"])
            # go-ethereum's ErrNotificationsUnsupported: -32601 "notifications not supported".
            assert reply["error"] == {"code": METHOD_NOT_FOUND, "message": "notifications not supported"}
            reply = await c.call("chain_subscribe", ["no such topic"])
            assert reply["error"]["message"] == "notifications not supported"
            (reply,) = await raw_json(c, orjson.dumps([req("chain_subscribe", ["newHeads"], rid=5)]))
            assert reply["error"]["code"] == METHOD_NOT_FOUND
            assert (await c.call("chain_unsubscribe", ["0x1"]))["result"] is False
        assert srv.dispatcher.subscriptions.count() == 0

    run(body())


def test_rpc_modules(run, rpc_server):
    async def body():
        srv = Server(limits=TINY, namespaces=["chain", "slow"])
        srv.register("chain", Chain())
        srv.register("slow", Slow())
        srv.register("hidden", Blocking())
        await rpc_server(srv)
        want = {"chain": "1.0", "rpc": "1.0", "slow": "1.0"}
        async with await HttpConn.open(srv.port) as c:
            assert (await c.call("rpc_modules"))["result"] == want
        async with await RpcClient.open(srv.port) as ws:
            assert await ws.call("rpc_modules") == want

    run(body())


def test_context_headers(run, rpc_server):
    async def body():
        srv = await rpc_server(make(server_kw={"keep_headers": True})[0])
        async with await HttpConn.open(srv.port) as c:
            reply = await c.call("chain_header", ["X-Client"], headers=(("X-Client", "wallet/1.2"),))
            assert reply["result"] == "wallet/1.2"
            assert (await c.call("chain_header", ["X-Client"]))["result"] is None  # per request

    run(body())


# --- persistence -----------------------------------------------------------------------


def test_keep_alive_many_requests(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        async with await HttpConn.open(srv.port) as c:
            for i in range(20):
                method = ("chain_echo", "slow_echo", "blocking_sleep")[i % 3]
                params = [0.001] if method == "blocking_sleep" else [i]
                reply = await c.call(method, params, rid=i)
                assert reply["id"] == i
        m = srv.metrics()
        assert m["accepted"] == 1 and m["http_rpc_requests"] == 20
        await wait_until(lambda: len(srv.reactor) == 0, what="the connection to end")

    run(body())


def test_pipelined_answered_in_order(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        async with await HttpConn.open(srv.port) as c:
            # A slow async call first: the ones after it wait (the connection is not read
            # while an answer is pending), so answers come back in request order.
            reqs = [req("slow_sleep", [0.1], 1), req("chain_echo", ["b"], 2), req("slow_echo", ["c"], 3),
                    req("chain_echo", ["d"], None), req("chain_echo", ["e"], 5)]
            data = b"".join(post_request(r) for r in reqs)
            assert len(data) < TINY.max_handshake_size  # see test_body_past_head_limit_in_one_write
            await c.send(data)
            bodies = [(await c.read_response()).body for _ in reqs]
            assert [orjson.loads(b)["id"] if b else None for b in bodies] == [1, 2, 3, None, 5]
            assert orjson.loads(bodies[0])["result"] == 0.1
        assert http_metric(srv, "accepted") == 1

    run(body())


def test_connection_close(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        for name in ("chain_echo", "slow_echo"):
            async with await HttpConn.open(srv.port) as c:
                resp = await c.post(req(name, ["x"]), headers=(("Connection", "close"),))
                assert resp.status == 200 and resp.headers["connection"] == "close"
                assert orjson.loads(resp.body)["result"] == "x"
                await c.expect_eof()

    run(body())


def test_http10(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        async with await HttpConn.open(srv.port) as c:  # HTTP/1.0: close unless asked
            resp = await c.post(req("chain_echo", [1]), version="HTTP/1.0", host=None)
            assert resp.status == 200 and resp.headers["connection"] == "close"
            await c.expect_eof()
        async with await HttpConn.open(srv.port) as c:  # ab -k: Connection: keep-alive
            for i in range(3):
                resp = await c.post(req("chain_echo", [i]), version="HTTP/1.0",
                                    headers=(("Connection", "keep-alive"),))
                assert resp.headers["connection"] == "keep-alive"
                assert orjson.loads(resp.body)["result"] == i
        resp = await http_request(srv.port, b"GET /health HTTP/1.0\r\n\r\n")
        assert resp.status == 505  # HTTP/1.0 only for JSON-RPC POSTs

    run(body())


def test_keep_alive_idle_closed_after_handshake_timeout(run, rpc_server):
    async def body():
        srv = await rpc_server(make(handshake_timeout=0.3)[0])
        async with await HttpConn.open(srv.port) as c:
            assert (await c.call("chain_echo", [1]))["result"] == 1
            assert (await c.call("slow_echo", [2]))["result"] == 2  # the wait restarts per answer
            started = asyncio.get_running_loop().time()
            await c.expect_eof(timeout=3.0)
            waited = asyncio.get_running_loop().time() - started
            assert 0.25 <= waited < 2.0, waited
        assert http_metric(srv, "handshake_timeout") == 1

    run(body())


def test_draining_answers_with_close(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        async with await HttpConn.open(srv.port) as c:
            assert (await c.call("chain_echo", [1]))["result"] == 1
            srv.begin_drain()
            resp = await c.post(req("chain_echo", [2]))
            assert resp.status == 200 and resp.headers["connection"] == "close"
            await c.expect_eof()

    run(body())


def test_stop_waits_for_deferred_answer(run, rpc_server):
    async def body():
        srv, slow = make()
        await rpc_server(srv)
        async with await HttpConn.open(srv.port) as c:
            await c.send(post_request(req("slow_sleep", [0.3])))
            await wait_until(lambda: slow.started == 1, what="the call to start")
            stopping = asyncio.ensure_future(srv.stop())
            resp = await c.read_response()
            assert orjson.loads(resp.body)["result"] == 0.3
            assert resp.headers["connection"] == "close"  # stop() drains
            await stopping
        assert slow.cancelled == 0

    run(body())


# --- bad input ---------------------------------------------------------------------------


def test_413_before_the_body_is_sent(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        async with await HttpConn.open(srv.port) as c:
            # Only the head: the answer comes without the body ever being sent.
            await c.send(post_request(b"", length=LIMIT + 1))
            resp = await c.read_response()
            assert resp.status == 413 and resp.headers["connection"] == "close"
            assert resp.body == f"request body over {LIMIT} bytes\n".encode()
            await c.expect_eof()
        async with await HttpConn.open(srv.port) as c:  # exactly at the limit
            msg = orjson.dumps(req("chain_echo", ["x"]))
            padded = msg + b" " * (LIMIT - len(msg))
            assert len(padded) == LIMIT
            assert (await raw_json(c, padded))["result"] == "x"
        m = srv.metrics()
        assert m["refused_http_body"] == 1 and m["refused_http"] == 1

    run(body())


@pytest.mark.parametrize(
    "request_bytes,status",
    [
        (post_request(req("chain_echo", [1]), content_type=None), 415),
        (post_request(req("chain_echo", [1]), content_type="application/x-www-form-urlencoded"), 415),
        (post_request(req("chain_echo", [1]), content_type="text/plain"), 415),
        (post_request(b"", length=-1, headers=(("Transfer-Encoding", "chunked"),)), 411),
        (post_request(b"", length=-1), 411),
        (post_request(b"x", headers=(("Transfer-Encoding", "chunked"),)), 400),
        (post_request(b"x", length=-1, headers=(("Content-Length", "x"),)), 400),
        (b"PUT / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (post_request(b"", path="/health"), 405),
    ],
    ids=["no-type", "form", "text", "chunked", "no-length", "both", "bad-length", "put", "health"],
)
def test_refusals(run, rpc_server, request_bytes, status):
    async def body():
        srv = await rpc_server(make()[0])
        resp = await http_request(srv.port, request_bytes)  # reads until the server closes
        assert resp.status == status and resp.headers["connection"] == "close"
        if status == 405:
            assert resp.headers["allow"] == ("GET, HEAD" if b"/health" in request_bytes else "GET, POST")
        assert http_metric(srv, "refused_http") == 1

    run(body())


def test_origin_403(run, rpc_server):
    async def body():
        srv = await rpc_server(make(server_kw={"origins": ["https://app.example"]})[0])
        resp = await http_request(srv.port, post_request(req("chain_echo", [1]), headers=(("Origin", "https://evil.example"),)))
        assert resp.status == 403
        resp = await http_request(srv.port, post_request(req("chain_echo", [1])))  # no Origin: not listed
        assert resp.status == 403
        async with await HttpConn.open(srv.port) as c:
            assert (await c.call("chain_echo", [1], headers=(("Origin", "https://app.example"),)))["result"] == 1
        assert srv.metrics()["refused_origin"] == 2

    run(body())


def test_auth_401_403(run, rpc_server):
    def auth(path: str, headers: list[tuple[str, str]]) -> bool | int:
        token = dict((k.lower(), v) for k, v in headers).get("authorization")
        return True if token == "Bearer good" else 403 if token else False

    async def body():
        srv = await rpc_server(make(server_kw={"auth": auth})[0])
        resp = await http_request(srv.port, post_request(req("chain_echo", [1])))
        assert resp.status == 401 and resp.headers["www-authenticate"] == "Bearer"
        resp = await http_request(srv.port, post_request(req("chain_echo", [1]), headers=(("Authorization", "Bearer bad"),)))
        assert resp.status == 403
        async with await HttpConn.open(srv.port) as c:
            reply = await c.call("chain_echo", [1], headers=(("Authorization", "Bearer good"),))
            assert reply["result"] == 1
        assert srv.metrics()["refused_origin"] == 0  # the auth hook's 403 is not an Origin's

    run(body())


def test_memory_soft_limit_503(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        srv._over_soft_limit = lambda: True  # type: ignore[method-assign]
        resp = await http_request(srv.port, post_request(req("chain_echo", [1])))
        assert resp.status == 503 and resp.headers["retry-after"] == str(TINY.retry_after)
        assert http_metric(srv, "refused_memory") == 1

    run(body())


def test_http_rpc_off(run, rpc_server):
    async def body():
        srv = Server(limits=TINY, http_rpc=False)
        srv.register("chain", Chain())
        await rpc_server(srv)
        resp = await http_request(srv.port, post_request(req("chain_echo", [1])))
        assert resp.status == 405 and resp.headers["allow"] == "GET"
        assert "http_rpc_requests" not in srv.metrics()

    run(body())


# --- the wire: split bodies, other clients, disconnects -----------------------------------


def test_body_byte_by_byte(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        data = post_request(req("chain_echo", ["split" * 10]))
        async with await HttpConn.open(srv.port) as c:
            for i in range(len(data)):  # ~200 writes, well inside handshake_timeout
                await c.send(data[i:i + 1])
                await asyncio.sleep(0.001)
            resp = await c.read_response()
            assert orjson.loads(resp.body)["result"] == "split" * 10

    run(body())


def test_body_after_head_over_head_limit(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        big = "y" * (LIMIT - 60)
        data = post_request(req("chain_echo", [big]))
        head_end = data.index(b"\r\n\r\n") + 4
        async with await HttpConn.open(srv.port) as c:
            await c.send(data[:head_end])
            await asyncio.sleep(0.05)  # the head is read on its own
            await c.send(data[head_end:])
            assert orjson.loads((await c.read_response()).body)["result"] == big

    run(body())


def test_body_past_head_limit_in_one_write(run, rpc_server):
    async def body():
        srv = await rpc_server(make(max_handshake_size=512)[0])
        data = post_request(req("chain_echo", ["z" * 700]))  # head ~100 bytes, body ~750
        async with await HttpConn.open(srv.port) as c:
            await c.send(data)
            resp = await c.read_response()
            assert resp.status == 200, resp

    run(body())


def test_client_leaves_mid_call(run, rpc_server):
    async def body():
        srv, slow = make()
        await rpc_server(srv)
        # FIN: the core watches a deferred connection for the peer leaving (EPOLLRDHUP),
        # drops the slot and reports it (on_http_close): the call is cancelled at once.
        c = await HttpConn.open(srv.port)
        await c.send(post_request(req("slow_sleep", [1.5])))
        await wait_until(lambda: slow.started == 1, what="the call to start")
        c.close()
        await wait_until(lambda: slow.cancelled == 1, timeout=1.0, what="the call to be cancelled")
        await wait_until(lambda: len(srv.reactor) == 0, what="the slot to be freed")
        # RST: the same.
        c = await HttpConn.open(srv.port)
        await c.send(post_request(req("slow_sleep", [1.5])))
        await wait_until(lambda: slow.started == 2, what="the call to start")
        c.reset()
        await wait_until(lambda: slow.cancelled == 2, timeout=1.0, what="the call to be cancelled")
        m = srv.metrics()
        assert m["http_rpc_abandoned"] == 2 and m["http_rpc_in_flight"] == 0 and len(srv.reactor) == 0
        assert srv._http.dispatcher.in_flight == 0  # type: ignore[union-attr]
        assert srv.pool.bytes_in_use == 0

    run(body())


def test_http_and_websocket_on_one_port(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        async with await RpcClient.open(srv.port) as ws:
            sub = await ws.call("chain_subscribe", ["newHeads"])
            conns = [await HttpConn.open(srv.port) for _ in range(4)]
            try:
                for n in range(5):
                    calls = [c.call("slow_echo", [n], rid=i) for i, c in enumerate(conns)]
                    replies = await asyncio.gather(ws.call("slow_echo", [n]), *calls)
                    assert replies[0] == n and [r["result"] for r in replies[1:]] == [n] * 4
                    assert srv.publish("chain.newHeads", {"n": n}) == 1  # HTTP clients subscribe to nothing
                notes = await ws.wait_notifications(5)
                assert [x["params"]["result"]["n"] for x in notes] == list(range(5))
                assert all(x["params"]["subscription"] == sub for x in notes)
            finally:
                for c in conns:
                    c.close()
            assert ws.unexpected == []

    run(body())


def test_keep_alive_connection_upgrades(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        async with await HttpConn.open(srv.port) as c:
            assert (await c.call("slow_echo", [1]))["result"] == 1
            # The same connection (same cid) becomes a WebSocket: the HTTP dispatcher's
            # state for it is long gone, the WebSocket one starts clean.
            await c.send(upgrade_request())
            head = await asyncio.wait_for(_read_head(c), 5.0)
            assert head.startswith(b"HTTP/1.1 101 ")
            ws = RawWS(c.sock)
            ws._feed(bytes(c.buf))
            await ws.send_text(orjson.dumps(req("slow_echo", ["ws"], 9)))
            _op, data = await ws.recv()
            assert orjson.loads(data)["result"] == "ws"
        assert http_metric(srv, "upgraded") == 1

    run(body())


async def _read_head(c: HttpConn) -> bytes:
    while b"\r\n\r\n" not in c.buf:
        await c._fill()
    end = c.buf.index(b"\r\n\r\n") + 4
    head = bytes(c.buf[:end])
    del c.buf[:end]
    return head


def test_stdlib_clients(run, rpc_server):
    """``http.client`` (one persistent connection) and ``urllib`` as real peers, in threads."""

    async def body():
        srv = await rpc_server(make()[0])
        port = srv.port

        def with_http_client() -> list[object]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            out = []
            try:
                for i, method in enumerate(["chain_blockNumber", "slow_echo", "chain_echo"]):
                    payload = json.dumps(req(method, None if i == 0 else [i], rid=i))
                    conn.request("POST", "/", payload, {"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    assert resp.status == 200 and resp.getheader("Content-Type") == "application/json"
                    out.append(json.loads(resp.read())["result"])
                # Without the header: 415, then the server closes.
                conn.request("POST", "/", "{}", {"Content-Type": "text/plain"})
                resp = conn.getresponse()
                out.append(resp.status)
                resp.read()
            finally:
                conn.close()
            return out

        def with_urllib() -> tuple[object, int]:
            r = urllib.request.Request(f"http://127.0.0.1:{port}/", data=json.dumps(req("chain_echo", ["u"])).encode(),
                                       headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(r, timeout=5) as resp:
                result = json.loads(resp.read())["result"]
            try:  # urllib's default Content-Type for data is form-urlencoded: 415, like curl -d
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", data=b"{}", timeout=5)
                code = 0
            except urllib.error.HTTPError as e:
                code = e.code
                e.close()
            return result, code

        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, with_http_client) == ["0x10", 1, 2, 415]
        assert await loop.run_in_executor(None, with_urllib) == ("u", 415)
        assert http_metric(srv, "accepted") == 3

    run(body())


def test_aiohttp_client(run, rpc_server):
    async def body():
        srv = await rpc_server(make()[0])
        url = f"http://127.0.0.1:{srv.port}/"
        connector = aiohttp.TCPConnector(limit=2)
        async with aiohttp.ClientSession(connector=connector) as session:
            for i in range(10):
                async with session.post(url, json=req("slow_echo" if i % 2 else "chain_echo", [i], i)) as resp:
                    assert resp.status == 200 and resp.content_type == "application/json"
                    assert (await resp.json())["result"] == i
            batch = [req("chain_echo", [i], i) for i in range(5)]
            async with session.post(url, json=batch) as resp:
                assert [r["result"] for r in await resp.json()] == list(range(5))
            async with session.post(url, data="{}") as resp:  # text/plain
                assert resp.status == 415
        assert http_metric(srv, "accepted") <= 3  # the pool reused its connections

    run(body())
