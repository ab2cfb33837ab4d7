"""Plain HTTP on the WebSocket port (README "Bad input" table): ``/health`` and the
404/405 answers, each followed by the server closing the connection."""
from __future__ import annotations

import json

import pytest
from rawclient import RawWS, http_request


def test_health_200_json(run, server):
    async def body():
        srv = await server(max_connections=5)
        ws = await RawWS.open(srv.port)
        try:
            resp = await http_request(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert resp.status == 200
            assert resp.headers["content-type"] == "application/json"
            assert resp.headers["connection"].lower() == "close"
            assert int(resp.headers["content-length"]) == len(resp.body)
            doc = json.loads(resp.body)
            assert doc["status"] == "ok"
            assert doc["connections"] == 1
            assert doc["max_connections"] == 5
            # HEAD: same head, no body.
            resp = await http_request(srv.port, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert resp.status == 200 and resp.body == b""
            assert int(resp.headers["content-length"]) > 0
            await ws.send_text("unaffected")
            assert (await ws.recv())[1] == b"unaffected"
        finally:
            ws.close()
        m = srv.metrics()
        # /health answers are not refusals (issue 9): counted as plain HTTP requests only.
        assert m["refused_http"] == 0 and m["http_requests"] == 2
        assert m["upgraded"] == 1

    run(body())


def test_other_http_404_405(run, server):
    async def body():
        srv = await server()
        resp = await http_request(srv.port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.status == 404
        assert resp.headers["connection"].lower() == "close"
        resp = await http_request(srv.port, b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert resp.status == 405
        assert resp.headers["allow"] == "GET, HEAD"
        resp = await http_request(srv.port, b"DELETE /other HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.status == 405
        assert resp.headers["allow"] == "GET"
        # A WebSocket attempt with another method.
        resp = await http_request(
            srv.port,
            b"POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        assert resp.status == 405
        assert resp.headers["allow"] == "GET"
        # Malformed and wrong-version requests.
        resp = await http_request(srv.port, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        assert resp.status == 505
        resp = await http_request(srv.port, b"BROKEN\r\n\r\n")
        assert resp.status == 400
        resp = await http_request(
            srv.port,
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        )
        assert resp.status == 426
        assert resp.headers["sec-websocket-version"] == "13"
        m = srv.metrics()
        assert m["refused_http"] == 7
        assert m["http_requests"] == 7
        assert m["upgraded"] == 0
        assert m["pending_handshakes"] == 0

    run(body())


def test_refused_http_counts_only_errors(run, server):
    """A /health 200 is an answer, not a refusal: ``http_requests`` counts every plain
    HTTP answer, ``refused_http`` only the error answers."""
    async def body():
        srv = await server()
        resp = await http_request(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.status == 200
        m = srv.metrics()
        assert m["http_requests"] == 1
        assert m["refused_http"] == 0
        resp = await http_request(srv.port, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
        assert resp.status == 404
        m = srv.metrics()
        assert m["http_requests"] == 2
        assert m["refused_http"] == 1

    run(body())
