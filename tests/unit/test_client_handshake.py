"""The client's side of the opening handshake, sans-I/O (RFC 6455 §4.1): URL parsing,
the request it writes, and every check of the server's answer; plus ClientOptions."""
from __future__ import annotations

import base64

import pytest

from fastrpc.client import ClientOptions, check_response, new_key, parse_url, upgrade_request
from fastrpc.errors import ConnectError
from fastrpc.handshake import accept_key

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
OPTS = ClientOptions()


def resp(*lines: str, status: str = "HTTP/1.1 101 Switching Protocols") -> bytes:
    return ("\r\n".join((status,) + lines) + "\r\n\r\n").encode("latin-1")


GOOD = ("Upgrade: websocket", "Connection: Upgrade", f"Sec-WebSocket-Accept: {ACCEPT}")


class TestURL:
    @pytest.mark.parametrize("url, host, port, resource, host_header", [
        ("ws://127.0.0.1:8546", "127.0.0.1", 8546, "/", "127.0.0.1:8546"),
        ("ws://example.com/", "example.com", 80, "/", "example.com"),
        ("ws://example.com:80/a/b?c=d&e", "example.com", 80, "/a/b?c=d&e", "example.com"),
        ("ws://[::1]:9000/rpc", "::1", 9000, "/rpc", "[::1]:9000"),
        ("WS://Example.COM:81", "example.com", 81, "/", "example.com:81"),
    ])
    def test_parts(self, url, host, port, resource, host_header):
        t = parse_url(url)
        assert (t.host, t.port, t.resource, t.host_header, t.auth) == (host, port, resource, host_header, None)

    def test_userinfo_becomes_basic_auth(self):
        assert parse_url("ws://al%3Ai:pw@h/").auth == "al:i:pw"

    @pytest.mark.parametrize("url", ["wss://h/", "http://h/", "h:80", "ws:///p", "ws://h/#f", "ws://h:0x/",
                                     "ws://h/a b"])
    def test_refused(self, url):
        with pytest.raises(ValueError):
            parse_url(url)

    def test_wss_says_why(self):
        with pytest.raises(ValueError, match="TLS"):
            parse_url("wss://h/")


class TestRequest:
    def test_minimal(self):
        req = upgrade_request(parse_url("ws://h:1/p?q"), KEY, OPTS)
        assert req == (b"GET /p?q HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                       b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def test_options(self):
        o = ClientOptions(origin="https://app", headers=[("X-A", "1")], subprotocols=["v1", "v2"])
        req = upgrade_request(parse_url("ws://u:p@h/"), KEY, o).decode()
        assert "\r\nOrigin: https://app\r\n" in req and "\r\nX-A: 1\r\n" in req
        assert "\r\nSec-WebSocket-Protocol: v1, v2\r\n" in req
        assert "\r\nAuthorization: Basic dTpw\r\n" in req

    def test_the_server_accepts_it(self):
        from fastrpc.handshake import HandshakePolicy, handle_request
        key = new_key()
        d = handle_request(upgrade_request(parse_url("ws://127.0.0.1:1/x"), key, OPTS), HandshakePolicy())
        assert d.upgrade
        proto, err = check_response(d.response, key, OPTS, "ws://x")
        assert err is None and proto is None

    def test_fresh_keys(self):
        keys = {new_key() for _ in range(100)}
        assert len(keys) == 100 and all(len(base64.b64decode(k)) == 16 for k in keys)

    @pytest.mark.parametrize("kw", [{"headers": [("Bad Name", "v")]}, {"headers": [("X", "a\r\nb")]},
                                    {"subprotocols": ["a b"]}, {"call_timeout": 0}, {"close_timeout": -1},
                                    {"max_message_size": 10}, {"subscription_buffer": 0}])
    def test_options_checked(self, kw):
        with pytest.raises(ValueError):
            ClientOptions(**kw)

    def test_headers_as_mapping(self):
        assert ClientOptions(headers={"A": "1"}).headers == (("A", "1"),)


class TestResponse:
    def check(self, head: bytes, opts: ClientOptions = OPTS):
        return check_response(head, KEY, opts, "ws://h/")

    def test_valid(self):
        assert self.check(resp(*GOOD)) == (None, None)
        # tokens are case-insensitive, Connection is a list; no reason phrase is fine
        ok = resp("upgrade: WebSocket", "connection: keep-alive, Upgrade", f"sec-websocket-accept: {ACCEPT}",
                  status="HTTP/1.1 101")
        assert self.check(ok) == (None, None)
        assert accept_key(KEY) == ACCEPT

    def test_subprotocol(self):
        opts = ClientOptions(subprotocols=["a", "b"])
        assert self.check(resp(*GOOD, "Sec-WebSocket-Protocol: b"), opts) == ("b", None)
        _, err = self.check(resp(*GOOD, "Sec-WebSocket-Protocol: c"), opts)
        assert isinstance(err, ConnectError) and "subprotocol" in err.reason

    @pytest.mark.parametrize("head, words", [
        (resp("Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Accept: x"), "Sec-WebSocket-Accept"),
        (resp("Upgrade: websocket", "Connection: Upgrade"), "Sec-WebSocket-Accept"),
        (resp("Connection: Upgrade", f"Sec-WebSocket-Accept: {ACCEPT}"), "Upgrade"),
        (resp("Upgrade: websocket, h2c", "Connection: Upgrade", f"Sec-WebSocket-Accept: {ACCEPT}"), "Upgrade"),
        (resp("Upgrade: websocket", f"Sec-WebSocket-Accept: {ACCEPT}"), "Connection"),
        (resp(*GOOD, "Sec-WebSocket-Extensions: permessage-deflate"), "extension"),
        (resp(*GOOD, status="HTTP/1.0 101 Switching Protocols"), "status line"),
        (resp(*GOOD, status="HTTP/1.1 1010 x"), "status line"),
        (resp("Upgrade websocket", status="HTTP/1.1 101 x"), "malformed header"),
    ])
    def test_invalid_101(self, head, words):
        proto, err = self.check(head)
        assert proto is None and isinstance(err, ConnectError) and words in err.reason

    def test_refusal_status(self):
        _, err = self.check(resp("Retry-After: 7", "Content-Length: 0", status="HTTP/1.1 503 Service Unavailable"))
        assert err is not None and err.status == 503 and err.retry_after == 7.0
        assert str(err) == "cannot connect to ws://h/: server answered HTTP 503 Service Unavailable"
        _, err = self.check(resp("Retry-After: Wed, 21 Oct 2015 07:28:00 GMT", status="HTTP/1.1 429 Too Many"))
        assert err is not None and err.status == 429 and err.retry_after is None
