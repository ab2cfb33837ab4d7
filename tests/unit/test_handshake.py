"""fastrpc.handshake: the HTTP/1.1 side, as plain function calls (no sockets, no loop).

Classes follow the RFC sections they check. Every response is also checked for framing
(status line, ``Content-Length`` equal to the body, ``Connection: close`` unless 101) by
``parse_response``; the interop class feeds our answers to websockets' own sans-I/O client.
"""
from __future__ import annotations

import base64
import logging

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.protocol import State
from websockets.uri import parse_uri

from fastrpc import handshake as hs
from fastrpc.handshake import (
    GUID,
    HTTP_BAD_REQUEST,
    HTTP_CONTENT_TOO_LARGE,
    HTTP_FORBIDDEN,
    HTTP_INTERNAL_SERVER_ERROR,
    HTTP_METHOD_NOT_ALLOWED,
    HTTP_NOT_FOUND,
    HTTP_OK,
    HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE,
    HTTP_SERVICE_UNAVAILABLE,
    HTTP_SWITCHING_PROTOCOLS,
    HTTP_TOO_MANY_REQUESTS,
    HTTP_UNAUTHORIZED,
    HTTP_UPGRADE_REQUIRED,
    HTTP_VERSION_NOT_SUPPORTED,
    MAX_HEADERS,
    Decision,
    HandshakePolicy,
    accept_key,
    handle_request,
    reject,
    too_large,
)

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
OPEN = HandshakePolicy()

BASE_FIELDS: list[tuple[str, str]] = [
    ("Host", "server.example.com"),
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", RFC_KEY),
    ("Sec-WebSocket-Version", "13"),
]


def build(
    fields: list[tuple[str, str]] | None = None,
    *,
    request_line: str = "GET / HTTP/1.1",
    drop: tuple[str, ...] = (),
    set_: dict[str, str] | None = None,
    add: list[tuple[str, str]] | None = None,
) -> bytes:
    """A request head: ``fields`` (default: a valid upgrade) with names dropped/replaced/added."""
    fields = list(BASE_FIELDS if fields is None else fields)
    dropped = {d.lower() for d in drop}
    fields = [(n, v) for n, v in fields if n.lower() not in dropped]
    for name, value in (set_ or {}).items():
        fields = [(n, value if n.lower() == name.lower() else v) for n, v in fields]
        if not any(n.lower() == name.lower() for n, _ in fields):
            fields.append((name, value))
    fields += add or []
    lines = [request_line] + [f"{n}: {v}" for n, v in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def plain(target: str = "/", method: str = "GET", extra: str = "") -> bytes:
    return f"{method} {target} HTTP/1.1\r\nHost: example.com\r\n{extra}\r\n".encode("latin-1")


def parse_response(data: bytes, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Split and check one HTTP/1.1 response; header names are lowercased."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    lines = head.decode("ascii").split("\r\n")
    version, status, phrase = lines[0].split(" ", 2)
    assert version == "HTTP/1.1" and phrase and status.isdigit()
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(": ")
        assert sep and name.lower() not in headers, line
        headers[name.lower()] = value
    if int(status) == HTTP_SWITCHING_PROTOCOLS:
        assert body == b"" and "content-length" not in headers
    else:
        assert headers["connection"] == "close"
        assert "date" in headers
        if head_only:
            assert body == b""
        else:
            assert int(headers["content-length"]) == len(body)
    return int(status), headers, body


def answer(head: bytes, policy: HandshakePolicy = OPEN, **kw) -> Decision:
    d = handle_request(head, policy, **kw)
    assert isinstance(d.response, bytes)
    status, _, _ = parse_response(d.response, head_only=bytes(head).startswith(b"HEAD ") and d.path != "")
    assert status == d.status
    assert d.upgrade is (status == HTTP_SWITCHING_PROTOCOLS)
    return d


def status_of(head: bytes, policy: HandshakePolicy = OPEN, **kw) -> int:
    return answer(head, policy, **kw).status


def client(**kw) -> tuple[ClientProtocol, bytes]:
    protocol = ClientProtocol(parse_uri(kw.pop("uri", "ws://localhost:8000/")), **kw)
    protocol.send_request(protocol.connect())
    return protocol, b"".join(protocol.data_to_send())


# --- RFC 6455 §1.3 / §4.2.2: Sec-WebSocket-Accept ---------------------------------------
class TestAcceptKey:
    def test_rfc_example(self):
        assert accept_key(RFC_KEY) == RFC_ACCEPT

    def test_guid(self):
        assert GUID == "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def test_101_for_rfc_example(self):
        d = answer(build())
        assert d.upgrade and d.status == 101
        assert d.response == (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n\r\n"
        )
        assert d.subprotocol is None and d.reason == ""

    @pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
    def test_buffer_types(self, kind):
        assert answer(kind(build())).status == 101


# --- interop: websockets' sans-I/O client ------------------------------------------------
class TestInteropWebsocketsClient:
    def test_client_accepts_101(self):
        protocol, data = client(uri="ws://localhost:8000/rpc?x=1")
        d = answer(data)
        assert d.upgrade and d.path == "/rpc?x=1"
        protocol.receive_data(d.response)
        assert protocol.handshake_exc is None
        assert protocol.state is State.OPEN

    def test_permessage_deflate_offer_ignored(self):
        protocol, data = client(extensions=[ClientPerMessageDeflateFactory()])
        assert b"permessage-deflate" in data
        d = answer(data)
        assert b"Sec-WebSocket-Extensions" not in d.response
        protocol.receive_data(d.response)
        assert protocol.state is State.OPEN and protocol.extensions == []

    def test_subprotocol_server_preference(self):
        protocol, data = client(subprotocols=["a", "b"])
        d = answer(data, HandshakePolicy(subprotocols=["c", "b", "a"]))
        assert d.subprotocol == "b"
        protocol.receive_data(d.response)
        assert protocol.state is State.OPEN and protocol.subprotocol == "b"

    def test_subprotocol_no_match_omits_header(self):
        protocol, data = client(subprotocols=["x"])
        d = answer(data, HandshakePolicy(subprotocols=["a"]))
        assert d.upgrade and d.subprotocol is None
        assert b"Sec-WebSocket-Protocol" not in d.response

    def test_origin_allowed(self):
        protocol, data = client(origin="https://app.example.com")
        d = answer(data, HandshakePolicy(allowed_origins=["https://*.example.com"]))
        protocol.receive_data(d.response)
        assert protocol.state is State.OPEN

    @pytest.mark.parametrize(
        "response",
        [
            reject(HTTP_SERVICE_UNAVAILABLE, "server full", [("Retry-After", "5")]),
            reject(HTTP_TOO_MANY_REQUESTS, "too many connections from this address"),
            too_large(),
        ],
    )
    def test_client_reads_error_responses(self, response):
        protocol, _ = client()
        protocol.receive_data(response)
        assert isinstance(protocol.handshake_exc, InvalidStatus)
        got = protocol.handshake_exc.response
        status, headers, body = parse_response(response)
        assert got.status_code == status and bytes(got.body) == body

    def test_client_reads_403(self):
        protocol, data = client(origin="https://evil.test")
        d = answer(data, HandshakePolicy(allowed_origins=["https://good.test"]))
        protocol.receive_data(d.response)
        assert protocol.handshake_exc.response.status_code == HTTP_FORBIDDEN


# --- RFC 9112 §3: request line ------------------------------------------------------------
class TestRequestLine:
    @pytest.mark.parametrize(
        "line,status",
        [
            ("GET / HTTP/1.1", 101),
            ("GET / HTTP/1.0", HTTP_VERSION_NOT_SUPPORTED),
            ("GET / HTTP/2.0", HTTP_VERSION_NOT_SUPPORTED),
            ("GET / HTTP/0.9", HTTP_VERSION_NOT_SUPPORTED),
            ("GET / http/1.1", HTTP_BAD_REQUEST),
            ("GET / HTTP/1.10", HTTP_BAD_REQUEST),
            ("GET / HTTP/1", HTTP_BAD_REQUEST),
            ("GET /", HTTP_BAD_REQUEST),
            ("GET", HTTP_BAD_REQUEST),
            ("", HTTP_BAD_REQUEST),
            ("GET  / HTTP/1.1", HTTP_BAD_REQUEST),
            ("GET / HTTP/1.1 ", HTTP_BAD_REQUEST),
            (" GET / HTTP/1.1", HTTP_BAD_REQUEST),
            ("GET\t/ HTTP/1.1", HTTP_BAD_REQUEST),
            ("G(T / HTTP/1.1", HTTP_BAD_REQUEST),
            ("GET /a b HTTP/1.1", HTTP_BAD_REQUEST),
            ("GET /\xe9 HTTP/1.1", HTTP_BAD_REQUEST),
            ("GET * HTTP/1.1", HTTP_BAD_REQUEST),
            ("GET http://server.example.com/ HTTP/1.1", HTTP_BAD_REQUEST),
            ("get / HTTP/1.1", HTTP_METHOD_NOT_ALLOWED),  # methods are case-sensitive
            ("POST / HTTP/1.1", HTTP_METHOD_NOT_ALLOWED),
        ],
    )
    def test_request_line(self, line, status):
        assert status_of(build(request_line=line)) == status

    def test_505_to_head_has_no_body(self):
        d = answer(b"HEAD /health HTTP/1.0\r\n\r\n")
        assert d.status == HTTP_VERSION_NOT_SUPPORTED and d.path == "/health"
        assert d.response.endswith(b"\r\n\r\n")

    def test_version_checked_before_headers(self):
        assert status_of(b"GET / HTTP/1.0\r\n\r\n") == HTTP_VERSION_NOT_SUPPORTED

    def test_leading_empty_line(self):
        assert status_of(b"\r\n" + build()) == HTTP_BAD_REQUEST

    def test_path_keeps_query(self):
        assert answer(build(request_line="GET /ws?token=abc HTTP/1.1")).path == "/ws?token=abc"


# --- RFC 9112 §2 and §5: framing and header fields -------------------------------------
class TestHeaderFields:
    def test_not_terminated(self):
        assert status_of(build()[:-2]) == HTTP_BAD_REQUEST
        assert status_of(b"") == HTTP_BAD_REQUEST

    def test_bytes_after_head(self):
        assert status_of(build() + b"\x81\x80") == HTTP_BAD_REQUEST

    def test_bare_lf_line_ending(self):
        head = build().replace(b"\r\nUpgrade", b"\nUpgrade")
        assert status_of(head) == HTTP_BAD_REQUEST

    def test_bare_cr(self):
        assert status_of(build(set_={"X-A": "a\rb"})) == HTTP_BAD_REQUEST

    def test_lf_in_value(self):
        assert status_of(build(set_={"X-A": "a\nb"})) == HTTP_BAD_REQUEST

    @pytest.mark.parametrize("char", ["\x00", "\x01", "\x1f", "\x7f", "\x0b"])
    def test_control_in_value(self, char):
        assert status_of(build(set_={"X-A": f"a{char}b"})) == HTTP_BAD_REQUEST

    def test_htab_and_obs_text_in_value_allowed(self):
        d = answer(build(add=[("X-A", "a\tb\xe9")]))
        assert d.status == 101 and ("X-A", "a\tb\xe9") in d.headers

    def test_obs_fold(self):
        head = build().replace(b"\r\n\r\n", b"\r\n continued\r\n\r\n")
        assert status_of(head) == HTTP_BAD_REQUEST
        head = build().replace(b"\r\n\r\n", b"\r\n\tcontinued\r\n\r\n")
        assert status_of(head) == HTTP_BAD_REQUEST

    def test_whitespace_before_colon(self):
        head = build().replace(b"Upgrade: websocket", b"Upgrade : websocket")
        assert status_of(head) == HTTP_BAD_REQUEST

    @pytest.mark.parametrize("line", ["NoColon", ": empty-name", "Bad(Name): v", "Na me: v", "\xe9: v"])
    def test_malformed_field_line(self, line):
        head = build().replace(b"\r\n\r\n", b"\r\n" + line.encode("latin-1") + b"\r\n\r\n")
        d = answer(head)
        assert d.status == HTTP_BAD_REQUEST and d.headers == []

    def test_missing_host(self):
        assert status_of(build(drop=("Host",))) == HTTP_BAD_REQUEST

    def test_duplicate_host(self):
        assert status_of(build(add=[("host", "other.example.com")])) == HTTP_BAD_REQUEST

    @pytest.mark.parametrize("host", ["a b", "a/b", "a@b", "[::1", "x:80a"])
    def test_invalid_host(self, host):
        assert status_of(build(set_={"Host": host})) == HTTP_BAD_REQUEST

    @pytest.mark.parametrize("host", ["localhost", "localhost:8000", "127.0.0.1:1", "[::1]:8000", "[::1]", ""])
    def test_valid_host(self, host):
        assert status_of(build(set_={"Host": host})) == 101

    @pytest.mark.parametrize(
        "name,value",
        [("Origin", "https://a.test"), ("Content-Length", "0"), ("Sec-WebSocket-Key", RFC_KEY),
         ("Sec-WebSocket-Version", "13")],
    )
    def test_duplicate_single_fields(self, name, value):
        # Even an identical repeat is refused: these fields are not lists.
        head = build(set_={name: value}, add=[(name.upper(), value)])
        d = answer(head)
        assert d.status == HTTP_BAD_REQUEST and d.headers == []

    def test_header_count_limit(self):
        filler = [(f"X-{i}", "v") for i in range(MAX_HEADERS - len(BASE_FIELDS))]
        assert status_of(build(add=filler)) == 101
        assert status_of(build(add=filler + [("X-over", "v")])) == HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE

    def test_size_limit(self):
        head = build(add=[("X-Pad", "a" * 9000)])
        assert status_of(head) == HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE
        assert status_of(head, HandshakePolicy(max_handshake_size=16_384)) == 101

    def test_names_case_insensitive(self):
        fields = [(n.upper(), v) for n, v in BASE_FIELDS]
        assert status_of(build(fields)) == 101
        fields = [(n.lower(), v) for n, v in BASE_FIELDS]
        d = answer(build(fields))
        assert d.status == 101 and d.headers == fields  # names kept as received

    def test_values_trimmed(self):
        head = build().replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version:  \t13 \t")
        d = answer(head)
        assert d.status == 101 and ("Sec-WebSocket-Version", "13") in d.headers

    def test_list_fields_may_repeat(self):
        head = build(set_={"Connection": "keep-alive"}, add=[("Connection", "Upgrade")])
        assert status_of(head) == 101


# --- RFC 6455 §4.2.1: the client's opening handshake ----------------------------------
class TestOpeningHandshake:
    @pytest.mark.parametrize(
        "value,status",
        [
            ("websocket", 101),
            ("WebSocket", 101),
            ("WEBSOCKET", 101),
            ("h2c, websocket", 101),
            ("websocket ,foo", 101),
            ("websocket/13", HTTP_BAD_REQUEST),
            ("websockets", HTTP_BAD_REQUEST),
            ("h2c", HTTP_BAD_REQUEST),  # still a WebSocket attempt: it carries the key
            ("", HTTP_BAD_REQUEST),
        ],
    )
    def test_upgrade_field(self, value, status):
        assert status_of(build(set_={"Upgrade": value})) == status

    def test_upgrade_missing(self):
        assert status_of(build(drop=("Upgrade",))) == HTTP_BAD_REQUEST

    @pytest.mark.parametrize(
        "value,status",
        [
            ("Upgrade", 101),
            ("upgrade", 101),
            ("keep-alive, Upgrade", 101),
            ("Upgrade,keep-alive", 101),
            ("keep-alive", HTTP_BAD_REQUEST),
            ("upgraded", HTTP_BAD_REQUEST),
            ("close", HTTP_BAD_REQUEST),
        ],
    )
    def test_connection_field(self, value, status):
        assert status_of(build(set_={"Connection": value})) == status

    def test_connection_missing(self):
        assert status_of(build(drop=("Connection",))) == HTTP_BAD_REQUEST

    @pytest.mark.parametrize("value", ["8", "12", "14", "13, 8", "", "013"])
    def test_version_not_13(self, value):
        d = answer(build(set_={"Sec-WebSocket-Version": value}))
        assert d.status == HTTP_UPGRADE_REQUIRED
        _, headers, _ = parse_response(d.response)
        assert headers["sec-websocket-version"] == "13"

    def test_version_missing(self):
        d = answer(build(drop=("Sec-WebSocket-Version",)))
        assert d.status == HTTP_UPGRADE_REQUIRED
        assert b"\r\nSec-WebSocket-Version: 13\r\n" in d.response

    @pytest.mark.parametrize(
        "key",
        [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",  # no padding
            "dGhlIHNhbXBsZSBub25jZQ=",  # short padding
            "dGhlIHNhbXBsZSBub25jZR==",  # non-canonical: pad bits set
            "dGhlIHNhbXBsZSBub25jZQ===",
            base64.b64encode(b"x" * 15).decode(),
            base64.b64encode(b"x" * 17).decode(),
            "dGhlIHNhbXBsZS!ub25jZQ==",
            "dGhlIHNhbXBsZSBub25j ZQ=",
            "dGhlIHNhbXBsZSBub25jZQ==dGhl",
            "\xe9" * 22 + "==",
        ],
    )
    def test_invalid_key(self, key):
        assert status_of(build(set_={"Sec-WebSocket-Key": key})) == HTTP_BAD_REQUEST

    def test_key_missing(self):
        assert status_of(build(drop=("Sec-WebSocket-Key",))) == HTTP_BAD_REQUEST

    def test_valid_keys(self):
        for raw in (bytes(16), b"\xff" * 16, bytes(range(16))):
            key = base64.b64encode(raw).decode()
            d = answer(build(set_={"Sec-WebSocket-Key": key}))
            assert d.status == 101
            assert f"Sec-WebSocket-Accept: {accept_key(key)}\r\n".encode() in d.response

    @pytest.mark.parametrize("method", ["POST", "HEAD", "PUT", "OPTIONS"])
    def test_upgrade_needs_get(self, method):
        d = answer(build(request_line=f"{method} / HTTP/1.1"))
        assert d.status == HTTP_METHOD_NOT_ALLOWED
        assert parse_response(d.response, head_only=method == "HEAD")[1]["allow"] == "GET"

    def test_upgrade_with_body(self):
        assert status_of(build(add=[("Content-Length", "5")])) == HTTP_CONTENT_TOO_LARGE
        assert status_of(build(add=[("Content-Length", "0")])) == 101

    def test_any_path_by_default(self):
        assert status_of(build(request_line="GET /anything/at/all?q HTTP/1.1")) == 101

    def test_paths_policy(self):
        policy = HandshakePolicy(paths=["/rpc"])
        assert status_of(build(request_line="GET /rpc HTTP/1.1"), policy) == 101
        assert status_of(build(request_line="GET /rpc?token=1 HTTP/1.1"), policy) == 101
        assert status_of(build(request_line="GET / HTTP/1.1"), policy) == HTTP_NOT_FOUND

    def test_extensions_never_negotiated(self):
        d = answer(build(add=[("Sec-WebSocket-Extensions", "permessage-deflate; client_max_window_bits")]))
        assert d.status == 101 and b"Extensions" not in d.response

    def test_subprotocol_repeated_fields(self):
        head = build(add=[("Sec-WebSocket-Protocol", "a"), ("Sec-WebSocket-Protocol", "b, c")])
        d = answer(head, HandshakePolicy(subprotocols=["c", "a"]))
        assert d.subprotocol == "c"
        assert d.response.endswith(b"\r\nSec-WebSocket-Protocol: c\r\n\r\n")

    def test_subprotocol_case_sensitive(self):
        d = answer(build(add=[("Sec-WebSocket-Protocol", "JSONRPC")]), HandshakePolicy(subprotocols=["jsonrpc"]))
        assert d.status == 101 and d.subprotocol is None

    def test_subprotocol_offered_but_none_configured(self):
        d = answer(build(add=[("Sec-WebSocket-Protocol", "chat")]))
        assert d.status == 101 and b"Sec-WebSocket-Protocol" not in d.response


# --- RFC 6455 §10.2 / RFC 6454: Origin ---------------------------------------------------
class TestOrigin:
    @pytest.mark.parametrize("origin", [None, "https://anything.test", "null", "garbage"])
    def test_none_allows_all(self, origin):
        add = [] if origin is None else [("Origin", origin)]
        assert status_of(build(add=add)) == 101

    @pytest.mark.parametrize(
        "origin,ok",
        [
            ("https://app.example.com", True),
            ("HTTPS://APP.EXAMPLE.COM", True),
            ("https://a.b.example.com", True),
            ("https://example.com", True),  # exact entry
            ("https://example.com:8443", False),
            ("http://app.example.com", False),
            ("https://app.example.com:443", False),  # ports are compared as written
            ("https://evilexample.com", False),
            ("https://example.com.evil.test", False),
            ("https://app.example.com.evil.test", False),
            ("https://evil.test/.example.com", False),
            ("https://.example.com", False),
            ("http://localhost:3000", True),
            ("http://localhost:3001", False),
            ("https://dev-1.staging.example.org:8080", True),
            ("https://dev-1.staging.example.org", False),
            ("null", False),
        ],
    )
    def test_allowlist(self, origin, ok):
        policy = HandshakePolicy(
            allowed_origins=[
                "https://*.example.com",
                "https://example.com",
                "http://localhost:3000",
                "https://dev-*.staging.example.org:8080",
            ]
        )
        assert policy.origin_allowed(origin) is ok
        assert status_of(build(add=[("Origin", origin)]), policy) == (101 if ok else HTTP_FORBIDDEN)

    def test_missing_origin(self):
        strict = HandshakePolicy(allowed_origins=["https://a.test"])
        assert status_of(build(), strict) == HTTP_FORBIDDEN
        lenient = HandshakePolicy(allowed_origins=["https://a.test", None])
        assert status_of(build(), lenient) == 101

    def test_null_origin(self):
        policy = HandshakePolicy(allowed_origins=["null"])
        assert status_of(build(add=[("Origin", "null")]), policy) == 101
        assert status_of(build(add=[("Origin", "https://a.test")]), policy) == HTTP_FORBIDDEN

    def test_empty_list_refuses_everything(self):
        policy = HandshakePolicy(allowed_origins=[])
        assert status_of(build(), policy) == HTTP_FORBIDDEN
        assert status_of(build(add=[("Origin", "https://a.test")]), policy) == HTTP_FORBIDDEN

    @pytest.mark.parametrize(
        "entry", ["*", "https://a.test/", "https://a.test/path", "a.test", "http*://a.test", "https://a.test:port"]
    )
    def test_invalid_entries(self, entry):
        with pytest.raises(ValueError):
            HandshakePolicy(allowed_origins=[entry])

    def test_str_instead_of_list(self):
        with pytest.raises(TypeError):
            HandshakePolicy(allowed_origins="https://a.test")


# --- auth hook and admission ----------------------------------------------------------
class TestAuth:
    @pytest.mark.parametrize("verdict", [True, None])
    def test_accept(self, verdict):
        assert status_of(build(), HandshakePolicy(auth=lambda p, h: verdict)) == 101

    def test_false_is_401_with_challenge(self):
        d = answer(build(), HandshakePolicy(auth=lambda p, h: False))
        assert d.status == HTTP_UNAUTHORIZED
        assert parse_response(d.response)[1]["www-authenticate"] == "Bearer"

    def test_401_and_403(self):
        assert status_of(build(), HandshakePolicy(auth=lambda p, h: 401)) == HTTP_UNAUTHORIZED
        assert status_of(build(), HandshakePolicy(auth=lambda p, h: 403)) == HTTP_FORBIDDEN

    def test_receives_path_and_headers(self):
        seen = []
        policy = HandshakePolicy(auth=lambda p, h: seen.append((p, h)) or True)
        head = build(request_line="GET /rpc?token=t0k HTTP/1.1", add=[("Authorization", "Bearer abc")])
        d = answer(head, policy)
        assert seen == [("/rpc?token=t0k", d.headers)]
        assert ("Authorization", "Bearer abc") in d.headers

    def test_raise_is_500_without_leak(self, caplog):
        def auth(path, headers):
            raise RuntimeError("db password hunter2")

        with caplog.at_level(logging.ERROR, logger="fastrpc.handshake"):
            d = answer(build(), HandshakePolicy(auth=auth))
        assert d.status == HTTP_INTERNAL_SERVER_ERROR
        assert b"hunter2" not in d.response and b"RuntimeError" not in d.response
        assert "hunter2" in caplog.text

    @pytest.mark.parametrize("verdict", [200, 404, "yes", 1, 0, 401.0])
    def test_invalid_verdict_is_500(self, verdict, caplog):
        with caplog.at_level(logging.ERROR, logger="fastrpc.handshake"):
            assert status_of(build(), HandshakePolicy(auth=lambda p, h: verdict)) == HTTP_INTERNAL_SERVER_ERROR
        assert "auth hook returned" in caplog.text

    def test_async_hook_is_500_without_warning(self, caplog):
        async def auth(path, headers):
            return True

        with caplog.at_level(logging.ERROR, logger="fastrpc.handshake"):
            assert status_of(build(), HandshakePolicy(auth=auth)) == HTTP_INTERNAL_SERVER_ERROR
        assert "synchronous" in caplog.text  # and filterwarnings=error saw no RuntimeWarning

    def test_not_called_for_bad_origin_or_handshake(self):
        calls = []
        policy = HandshakePolicy(allowed_origins=["https://a.test"], auth=lambda p, h: calls.append(p))
        assert status_of(build(add=[("Origin", "https://b.test")]), policy) == HTTP_FORBIDDEN
        assert status_of(build(drop=("Sec-WebSocket-Key",)), policy) == HTTP_BAD_REQUEST
        assert calls == []


class TestAdmit:
    def test_admitted(self):
        assert status_of(build(), admit=lambda: None) == 101

    def test_refused_503_retry_after(self):
        d = answer(build(), admit=lambda: (HTTP_SERVICE_UNAVAILABLE, "server full", [("Retry-After", "5")]))
        status, headers, body = parse_response(d.response)
        assert (status, headers["retry-after"], body) == (503, "5", b"server full\n")
        assert not d.upgrade and d.reason == "server full"

    def test_refused_429(self):
        assert status_of(build(), admit=lambda: (HTTP_TOO_MANY_REQUESTS, "per-IP limit", ())) == 429

    def test_called_last(self):
        calls = []

        def admit():
            calls.append(1)

        policy = HandshakePolicy(allowed_origins=["https://a.test"], auth=lambda p, h: False)
        answer(build(add=[("Origin", "https://b.test")]), policy, admit=admit)
        answer(build(add=[("Origin", "https://a.test")]), policy, admit=admit)
        answer(build(drop=("Host",)), admit=admit)
        answer(plain("/health"), health=lambda: (200, {}), admit=admit)
        assert calls == []
        answer(build(), admit=admit)
        assert calls == [1]

    def test_bad_admit_answer_is_500(self, caplog):
        with caplog.at_level(logging.ERROR, logger="fastrpc.handshake"):
            assert status_of(build(), admit=lambda: (299, "odd", ())) == HTTP_INTERNAL_SERVER_ERROR
            assert status_of(build(), admit=lambda: (200, "ok?", ())) == HTTP_INTERNAL_SERVER_ERROR
            assert status_of(build(), admit=lambda: (503, "x")) == HTTP_INTERNAL_SERVER_ERROR
            assert status_of(build(), admit=lambda: (503, "x", [("Bad\r\nName", "v")])) == 500
            assert status_of(build(), admit=lambda: 1 / 0) == HTTP_INTERNAL_SERVER_ERROR


# --- plain HTTP on the same port -----------------------------------------------------------
def healthy():
    return 200, {"status": "ok", "connections": 3}


def draining():
    return 503, {"status": "draining"}


class TestPlainHTTP:
    def test_health_200(self):
        d = answer(plain("/health"), health=healthy)
        status, headers, body = parse_response(d.response)
        assert status == HTTP_OK and not d.upgrade
        assert headers["content-type"] == "application/json"
        assert headers["cache-control"] == "no-store"
        assert orjson.loads(body) == {"status": "ok", "connections": 3}

    def test_health_503(self):
        status, _, body = parse_response(answer(plain("/health"), health=draining).response)
        assert status == HTTP_SERVICE_UNAVAILABLE and orjson.loads(body) == {"status": "draining"}

    def test_health_head_has_no_body(self):
        d = answer(plain("/health", "HEAD"), health=healthy)
        status, headers, body = parse_response(d.response, head_only=True)
        assert status == 200 and body == b""
        assert int(headers["content-length"]) == len(orjson.dumps(healthy()[1]))

    def test_health_query_ignored(self):
        assert status_of(plain("/health?verbose=1"), health=healthy) == 200

    def test_health_path_policy(self):
        policy = HandshakePolicy(health_path="/-/ready")
        assert status_of(plain("/-/ready"), policy, health=healthy) == 200
        assert status_of(plain("/health"), policy, health=healthy) == HTTP_NOT_FOUND

    def test_no_health_callable_is_404(self):
        assert status_of(plain("/health")) == HTTP_NOT_FOUND

    @pytest.mark.parametrize(
        "hook", [lambda: 1 / 0, lambda: (200, {"x": object()}), lambda: (101, {}), lambda: "ok"]
    )
    def test_health_failure_is_500(self, hook, caplog):
        with caplog.at_level(logging.ERROR, logger="fastrpc.handshake"):
            d = answer(plain("/health"), health=hook)
        assert d.status == HTTP_INTERNAL_SERVER_ERROR and b"Traceback" not in d.response

    def test_metrics_200_with_the_hooks_content_type(self):
        seen = []

        def metrics(headers):
            seen.append(headers)
            return b"fastrpc_connections_open 1.0\n", "text/plain; version=0.0.4; charset=utf-8"

        d = answer(plain("/metrics", extra="Accept: text/plain\r\n"), metrics=metrics)
        status, headers, body = parse_response(d.response)
        assert (status, body) == (HTTP_OK, b"fastrpc_connections_open 1.0\n") and not d.upgrade
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert headers["cache-control"] == "no-store"
        assert ("Accept", "text/plain") in seen[0]
        head = answer(plain("/metrics", "HEAD"), metrics=metrics)
        status, headers, body = parse_response(head.response, head_only=True)
        assert status == 200 and body == b"" and int(headers["content-length"]) == 29

    def test_metrics_path_policy(self):
        hook = lambda h: (b"", "text/plain")  # noqa: E731
        assert status_of(plain("/metrics")) == HTTP_NOT_FOUND  # no hook: like any path
        assert status_of(plain("/prom"), HandshakePolicy(metrics_path="/prom"), metrics=hook) == 200
        assert status_of(plain("/metrics"), HandshakePolicy(metrics_path=None), metrics=hook) == 404
        for bad in ("metrics", "/health"):
            with pytest.raises(ValueError):
                HandshakePolicy(metrics_path=bad)

    @pytest.mark.parametrize("hook", [lambda h: 1 / 0, lambda h: (b"x", "caf\u00e9\u20ac"), lambda h: None])
    def test_metrics_failure_is_500(self, hook, caplog):
        with caplog.at_level(logging.ERROR, logger="fastrpc.handshake"):
            d = answer(plain("/metrics"), metrics=hook)
        assert d.status == HTTP_INTERNAL_SERVER_ERROR and b"Traceback" not in d.response

    def test_h2c_upgrade_ignored(self):
        extra = "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
        assert status_of(plain("/health", extra=extra), health=healthy) == 200

    @pytest.mark.parametrize("target", ["/", "/index.html", "/healthz", "/health/x"])
    @pytest.mark.parametrize("method", ["GET", "HEAD"])
    def test_404(self, target, method):
        assert status_of(plain(target, method)) == HTTP_NOT_FOUND

    @pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE"])
    def test_405(self, method):
        status, headers, _ = parse_response(answer(plain("/", method)).response)
        assert (status, headers["allow"]) == (HTTP_METHOD_NOT_ALLOWED, "GET")
        status, headers, _ = parse_response(answer(plain("/health", method), health=healthy).response)
        assert (status, headers["allow"]) == (HTTP_METHOD_NOT_ALLOWED, "GET, HEAD")

    def test_options_asterisk(self):
        assert status_of(plain("*", "OPTIONS")) == HTTP_METHOD_NOT_ALLOWED

    @pytest.mark.parametrize(
        "extra,status",
        [
            ("Content-Length: 0\r\n", 200),
            ("Content-Length: 00\r\n", 200),
            ("Content-Length: 1\r\n", HTTP_CONTENT_TOO_LARGE),
            ("Content-Length: 99999999999999999999999\r\n", HTTP_CONTENT_TOO_LARGE),
            ("Content-Length: -1\r\n", HTTP_BAD_REQUEST),
            ("Content-Length: 1, 1\r\n", HTTP_BAD_REQUEST),
            ("Content-Length: \r\n", HTTP_BAD_REQUEST),
            ("Content-Length: 0x10\r\n", HTTP_BAD_REQUEST),
            ("Content-Length: 0\r\nContent-Length: 0\r\n", HTTP_BAD_REQUEST),
            ("Transfer-Encoding: chunked\r\n", HTTP_BAD_REQUEST),
            ("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", HTTP_BAD_REQUEST),
        ],
    )
    def test_body(self, extra, status):
        assert status_of(plain("/health", extra=extra), health=healthy) == status

    def test_head_error_responses_have_no_body(self):
        d = answer(plain("/nope", "HEAD"))
        _, headers, body = parse_response(d.response, head_only=True)
        assert body == b"" and int(headers["content-length"]) > 0


# --- response builders -----------------------------------------------------------------
class TestReject:
    def test_shape(self):
        status, headers, body = parse_response(reject(503, "server full", [("Retry-After", "5")]))
        assert status == 503 and body == b"server full\n"
        assert headers["content-type"] == "text/plain; charset=utf-8"
        assert headers["retry-after"] == "5"
        assert reject(503, "x").startswith(b"HTTP/1.1 503 Service Unavailable\r\n")

    def test_utf8_reason(self):
        status, headers, body = parse_response(reject(400, "é"))
        assert body == "é\n".encode() and headers["content-length"] == "3"

    def test_too_large(self):
        data = too_large()
        assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        assert parse_response(data)[0] == HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE

    @pytest.mark.parametrize("header", [("X", "a\r\nSet-Cookie: x"), ("X\r\nY", "v"), ("X Y", "v"), ("X", "\x00")])
    def test_header_injection_refused(self, header):
        with pytest.raises(ValueError):
            reject(503, "x", [header])

    @pytest.mark.parametrize("status", [101, 200, 299, 418, 600, 999])
    def test_not_an_error_status(self, status):
        with pytest.raises(ValueError):
            reject(status, "x")

    def test_statuses_named(self):
        for name in hs.__all__:
            if name.startswith("HTTP_"):
                assert getattr(hs, name) in hs._PHRASES


class TestPolicy:
    def test_invalid_subprotocol(self):
        with pytest.raises(ValueError):
            HandshakePolicy(subprotocols=["a b"])
        with pytest.raises(TypeError):
            HandshakePolicy(subprotocols="jsonrpc")

    def test_hashable_and_normalised(self):
        policy = HandshakePolicy(subprotocols=["a"], paths=["/x"], allowed_origins=["https://a.test"])
        assert policy.subprotocols == ("a",) and policy.paths == frozenset({"/x"})
        hash(policy)


# --- robustness: nothing escapes, every answer is a framed HTTP/1.1 response -----------
VALID = build(add=[("Origin", "https://app.example.com"), ("Sec-WebSocket-Protocol", "a, b")])
FUZZ_POLICY = HandshakePolicy(
    allowed_origins=["https://*.example.com", None], subprotocols=["b"], auth=lambda p, h: "deny" not in p
)


def check_never_raises(head: bytes) -> None:
    d = handle_request(head, FUZZ_POLICY, health=healthy, admit=lambda: None)
    assert d.response.startswith(b"HTTP/1.1 ")
    # Once the request line parsed (path known), a HEAD answer never has a body.
    status, _, _ = parse_response(d.response, head_only=head.startswith(b"HEAD ") and d.path != "")
    assert status == d.status
    assert d.upgrade is (status == 101)


@st.composite
def mutated(draw):
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 8))):
        op = draw(st.sampled_from(["replace", "insert", "delete", "truncate", "dup"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        byte = draw(st.sampled_from([0, 9, 10, 13, 32, 58, 44, 61, 0x7F, 0xE9, 0xFF]) | st.integers(0, 255))
        if op == "replace" and data:
            data[pos] = byte
        elif op == "insert":
            data.insert(pos, byte)
        elif op == "delete" and data:
            del data[pos]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup":
            end = draw(st.integers(pos, len(data)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


VALUE_BITS = st.sampled_from(
    ["", " ", "\t", "websocket", "Upgrade", "13", "8", RFC_KEY, "null", "https://a.example.com", "0", "7",
     "chunked", ",", "a, b", "b", "/deny", "\xe9", "x" * 40]
)


@st.composite
def line_mutated(draw):
    """Whole-line edits of the valid request: reach the semantic checks, not just syntax."""
    lines = VALID.decode("latin-1").split("\r\n")[:-2]
    request_line, fields = lines[0], [line.split(": ", 1) for line in lines[1:]]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "dup", "value", "name-case", "add", "line"]))
        i = draw(st.integers(0, max(len(fields) - 1, 0)))
        if op == "drop" and fields:
            del fields[i]
        elif op == "dup" and fields:
            fields.insert(i, list(fields[i]))
        elif op == "value" and fields:
            fields[i][1] = "".join(draw(st.lists(VALUE_BITS, max_size=3)))
        elif op == "name-case" and fields:
            fields[i][0] = fields[i][0].swapcase()
        elif op == "add":
            name = draw(st.sampled_from(["Content-Length", "Transfer-Encoding", "Origin", "Host", "X-A"]))
            fields.insert(i, [name, draw(VALUE_BITS)])
        elif op == "line":
            method = draw(st.sampled_from(["GET", "HEAD", "POST"]))
            target = draw(st.sampled_from(["/", "/health", "/deny", "*", "/x?y"]))
            request_line = f"{method} {target} {draw(st.sampled_from(['HTTP/1.1', 'HTTP/1.0']))}"
    text = "\r\n".join([request_line] + [f"{n}: {v}" for n, v in fields]) + "\r\n\r\n"
    return text.encode("latin-1")


class TestRobustness:
    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(line_mutated())
    def test_line_mutations_of_valid_request(self, head):
        check_never_raises(head)

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=512))
    def test_random_bytes(self, head):
        check_never_raises(head)

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.binary(max_size=256))
    def test_random_bytes_terminated(self, data):
        check_never_raises(data + b"\r\n\r\n")

    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated())
    def test_mutations_of_valid_request(self, head):
        check_never_raises(head)

    @settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(mutated() | st.binary(max_size=256).map(lambda b: b + b"\r\n\r\n"))
    def test_fast_grammar_agrees_with_diagnosis(self, head):
        # Differential check of the one-regex grammar against the rule-by-rule diagnosis:
        # a head the fast path refuses always gets a specific reason, and vice versa.
        text = head.decode("latin-1")
        fast = hs._valid_head(text) is not None
        slow = hs._diagnose(text)
        if fast:
            assert slow is None or slow.status == HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE
        else:
            assert slow is not None and slow.status in (400, 431, 505)

    def test_valid_fuzz_seed(self):
        d = handle_request(VALID, FUZZ_POLICY, admit=lambda: None)
        assert d.upgrade and d.subprotocol == "b"

    def test_every_truncation(self):
        for i in range(len(VALID)):
            check_never_raises(VALID[:i])

    def test_non_bytes_input_is_500(self, caplog):
        with caplog.at_level(logging.ERROR, logger="fastrpc.handshake"):
            d = handle_request("GET / HTTP/1.1\r\n\r\n", OPEN)  # type: ignore[arg-type]
        assert d.status == HTTP_INTERNAL_SERVER_ERROR

    def test_whitespace_run_is_linear(self):
        # A value made of a long whitespace run must not trigger regex backtracking.
        head = build(add=[("X-A", "a" + " \t" * 3900 + "b")])
        import time

        start = time.perf_counter()
        assert status_of(head) == 101
        assert time.perf_counter() - start < 0.05
