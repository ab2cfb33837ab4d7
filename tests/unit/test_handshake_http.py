"""fastrpc.handshake: the head of a JSON-RPC ``POST`` and its 200, as plain function calls.

The decisions of issue 9 (JSON-RPC over HTTP on the WebSocket port), against go-ethereum's
``rpc/http.go`` where it has an answer: 411 for a body without ``Content-Length``
(chunked included), 413 past ``max_http_body`` decided from the header, 415 for a
non-JSON ``Content-Type``, Origin and auth as for an upgrade, keep-alive by HTTP version
and ``Connection``. Classes follow the RFC sections they check; no sockets, no loop.
"""
from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastrpc.handshake import (
    HTTP_BAD_REQUEST,
    HTTP_CONTENT_TOO_LARGE,
    HTTP_FORBIDDEN,
    HTTP_INTERNAL_SERVER_ERROR,
    HTTP_LENGTH_REQUIRED,
    HTTP_METHOD_NOT_ALLOWED,
    HTTP_NOT_FOUND,
    HTTP_OK,
    HTTP_SERVICE_UNAVAILABLE,
    HTTP_UNAUTHORIZED,
    HTTP_UNSUPPORTED_MEDIA_TYPE,
    HTTP_VERSION_NOT_SUPPORTED,
    JSON_CONTENT_TYPES,
    Decision,
    HandshakePolicy,
    handle_request,
    rpc_response,
)
from fastrpc.limits import KiB, MiB, Limits

LIMIT = 1000
RPC = HandshakePolicy(max_http_body=LIMIT)
JSON = "Content-Type: application/json\r\n"


def post(
    extra: str = JSON,
    *,
    length: int | str | None = 10,
    target: str = "/",
    version: str = "HTTP/1.1",
    method: str = "POST",
    host: bool = True,
) -> bytes:
    lines = [f"{method} {target} {version}"]
    if host:
        lines.append("Host: node.example")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode("latin-1")


def parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Split one response and check its framing; header names lowercased."""
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    lines = head.decode("ascii").split("\r\n")
    version, status, phrase = lines[0].split(" ", 2)
    assert version == "HTTP/1.1" and phrase
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(": ")
        assert sep and name.lower() not in headers, line
        headers[name.lower()] = value
    assert "date" in headers
    assert int(headers["content-length"]) == len(body)
    return int(status), headers, body


def decide(head: bytes, policy: HandshakePolicy = RPC, **kw) -> Decision:
    d = handle_request(head, policy, **kw)
    if d.rpc:
        assert d.status == HTTP_OK and d.response == b"" and not d.upgrade
    else:
        status, headers, _ = parse(d.response)
        assert status == d.status and headers["connection"] == "close"  # an error closes
    return d


def status_of(head: bytes, policy: HandshakePolicy = RPC, **kw) -> int:
    return decide(head, policy, **kw).status


# --- RFC 9110 §9.3.3 POST on an RPC path ---------------------------------------------------
class TestRouting:
    def test_accepted(self):
        d = decide(post(length=42, extra=JSON + "X-Trace: 7\r\n"))
        assert d.rpc and d.body_length == 42 and d.keep_alive and not d.http10
        assert ("X-Trace", "7") in d.headers and d.path == "/"

    def test_empty_body(self):
        d = decide(post(length=0))
        assert d.rpc and d.body_length == 0

    @pytest.mark.parametrize("target", ["/", "/rpc", "/a/b?c=d"])
    def test_any_path_by_default(self, target):
        assert decide(post(target=target)).rpc

    def test_paths_policy(self):
        policy = HandshakePolicy(max_http_body=LIMIT, paths=["/ws"])
        assert decide(post(target="/ws?token=1"), policy).rpc
        d = decide(post(target="/other"), policy)
        assert d.status == HTTP_METHOD_NOT_ALLOWED and parse(d.response)[1]["allow"] == "GET"

    def test_health_path_is_not_rpc(self):
        d = decide(post(target="/health"))
        assert d.status == HTTP_METHOD_NOT_ALLOWED and parse(d.response)[1]["allow"] == "GET, HEAD"

    def test_not_served_without_max_http_body(self):
        d = decide(post(), HandshakePolicy())
        assert d.status == HTTP_METHOD_NOT_ALLOWED and parse(d.response)[1]["allow"] == "GET"

    @pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
    def test_405_allows_get_and_post(self, method):
        d = decide(post(method=method))
        assert d.status == HTTP_METHOD_NOT_ALLOWED and parse(d.response)[1]["allow"] == "GET, POST"

    def test_get_unchanged(self):
        assert status_of(post(method="GET", length=None, extra="")) == HTTP_NOT_FOUND

    def test_websocket_post_still_405_get(self):
        extra = JSON + "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        d = decide(post(extra=extra))
        assert d.status == HTTP_METHOD_NOT_ALLOWED and parse(d.response)[1]["allow"] == "GET"

    def test_target_must_be_a_path(self):
        assert status_of(post(target="http://node.example/")) == HTTP_BAD_REQUEST


# --- RFC 9112 §6: message body length --------------------------------------------------
class TestFraming:
    def test_chunked_is_411(self):
        assert status_of(post(length=None, extra=JSON + "Transfer-Encoding: chunked\r\n")) == HTTP_LENGTH_REQUIRED

    def test_no_content_length_is_411(self):
        assert status_of(post(length=None)) == HTTP_LENGTH_REQUIRED

    def test_both_framings_is_400(self):
        # RFC 9112 §6.1: a request smuggling signal.
        assert status_of(post(extra=JSON + "Transfer-Encoding: chunked\r\n")) == HTTP_BAD_REQUEST

    @pytest.mark.parametrize("value", ["-1", "1, 1", "0x10", "", "1e3", " +5"])
    def test_invalid_content_length(self, value):
        assert status_of(post(length=value)) == HTTP_BAD_REQUEST

    def test_duplicate_content_length(self):
        assert status_of(post(extra=JSON + "Content-Length: 10\r\n")) == HTTP_BAD_REQUEST

    def test_leading_zeros(self):
        assert decide(post(length="0007")).body_length == 7


# --- RFC 9110 §15.5.14: 413, from Content-Length alone -----------------------------------
class TestBodyLimit:
    def test_at_limit(self):
        assert decide(post(length=LIMIT)).body_length == LIMIT

    def test_past_limit(self):
        d = decide(post(length=LIMIT + 1))
        assert d.status == HTTP_CONTENT_TOO_LARGE
        assert parse(d.response)[2] == f"request body over {LIMIT} bytes\n".encode()

    def test_huge_value_is_413_not_500(self):
        # int() refuses strings over 4300 digits: the length saturates instead.
        assert status_of(post(length="9" * 5000)) == HTTP_CONTENT_TOO_LARGE
        assert status_of(post(length="0" * 5000 + "5")) == HTTP_OK

    def test_zero_limit(self):
        policy = HandshakePolicy(max_http_body=0)
        assert decide(post(length=0), policy).rpc
        assert status_of(post(length=1), policy) == HTTP_CONTENT_TOO_LARGE

    def test_before_content_type(self):
        # go-ethereum's validateRequest order: 413 before 415.
        assert status_of(post(length=LIMIT + 1, extra="")) == HTTP_CONTENT_TOO_LARGE


# --- RFC 9110 §8.3 / §15.5.16: Content-Type → 415 ----------------------------------------
class TestContentType:
    @pytest.mark.parametrize(
        "value",
        ["application/json", "Application/JSON", "application/json; charset=utf-8",
         "application/json ; charset=UTF-8", "application/json-rpc", "application/jsonrequest"],
    )
    def test_json_accepted(self, value):
        assert decide(post(extra=f"Content-Type: {value}\r\n")).rpc

    @pytest.mark.parametrize(
        "value", ["application/x-www-form-urlencoded", "text/plain", "application/jsonx",
                  "json", "", "application/json+x", "multipart/form-data; boundary=x"],
    )
    def test_other_415(self, value):
        d = decide(post(extra=f"Content-Type: {value}\r\n"))
        assert d.status == HTTP_UNSUPPORTED_MEDIA_TYPE
        assert b"only application/json" in parse(d.response)[2]

    def test_missing_415(self):
        # What curl -d sends without -H 'Content-Type: ...' is checked above; no header at all too.
        assert status_of(post(extra="")) == HTTP_UNSUPPORTED_MEDIA_TYPE

    def test_duplicate_400(self):
        assert status_of(post(extra=JSON + JSON)) == HTTP_BAD_REQUEST

    def test_go_ethereum_list(self):
        assert JSON_CONTENT_TYPES == {"application/json", "application/json-rpc", "application/jsonrequest"}


# --- the upgrade's Origin policy and auth hook, for POST too -----------------------------
class TestOriginAndAuth:
    POLICY = HandshakePolicy(max_http_body=LIMIT, allowed_origins=["https://app.example"])

    def test_origin_allowed(self):
        assert decide(post(extra=JSON + "Origin: https://APP.example\r\n"), self.POLICY).rpc

    def test_origin_refused(self):
        assert status_of(post(extra=JSON + "Origin: https://evil.example\r\n"), self.POLICY) == HTTP_FORBIDDEN

    def test_missing_origin_refused_unless_none_listed(self):
        assert status_of(post(), self.POLICY) == HTTP_FORBIDDEN
        assert decide(post(), HandshakePolicy(max_http_body=LIMIT, allowed_origins=["https://a.b", None])).rpc

    def test_auth_401_403(self):
        seen = []

        def auth(path, headers):
            seen.append((path, headers))
            return dict(headers).get("Authorization") == "Bearer ok" or (403 if "/admin" in path else False)

        policy = HandshakePolicy(max_http_body=LIMIT, auth=auth)
        assert decide(post(extra=JSON + "Authorization: Bearer ok\r\n"), policy).rpc
        d = decide(post(), policy)
        assert d.status == HTTP_UNAUTHORIZED and parse(d.response)[1]["www-authenticate"] == "Bearer"
        assert status_of(post(target="/admin"), policy) == HTTP_FORBIDDEN
        assert seen[0][0] == "/" and ("Content-Type", "application/json") in seen[0][1]

    def test_auth_before_size_and_type(self):
        # Unauthenticated clients learn nothing about what the server would accept.
        policy = HandshakePolicy(max_http_body=LIMIT, auth=lambda p, h: False)
        assert status_of(post(length=LIMIT + 1, extra=""), policy) == HTTP_UNAUTHORIZED
        assert status_of(post(length=LIMIT + 1, extra="Origin: https://evil.example\r\n"),
                         self.POLICY) == HTTP_FORBIDDEN

    def test_auth_not_called_for_unframed_body(self):
        calls = []
        policy = HandshakePolicy(max_http_body=LIMIT, auth=lambda p, h: calls.append(p) or True)
        assert status_of(post(length=None), policy) == HTTP_LENGTH_REQUIRED
        assert calls == []

    def test_auth_raises_500(self, caplog):
        def auth(path, headers):
            raise RuntimeError("boom")

        with caplog.at_level(logging.ERROR, logger="fastrpc.handshake"):
            d = decide(post(), HandshakePolicy(max_http_body=LIMIT, auth=auth))
        assert d.status == HTTP_INTERNAL_SERVER_ERROR and b"boom" not in d.response


class TestAdmitHttp:
    def test_refusal(self):
        d = decide(post(), admit_http=lambda: (503, "server over its memory limit", [("Retry-After", "5")]))
        assert d.status == HTTP_SERVICE_UNAVAILABLE and parse(d.response)[1]["retry-after"] == "5"

    def test_called_last_and_upgrade_admit_never(self):
        calls = []
        upgrade_admit = lambda: calls.append("admit")  # noqa: E731
        admit_http = lambda: calls.append("admit_http")  # noqa: E731
        assert status_of(post(extra=""), admit=upgrade_admit, admit_http=admit_http) == HTTP_UNSUPPORTED_MEDIA_TYPE
        assert calls == []
        assert decide(post(), admit=upgrade_admit, admit_http=admit_http).rpc
        assert calls == ["admit_http"]

    @pytest.mark.parametrize("answer", [lambda: 1 / 0, lambda: (200, "ok", []), lambda: "no"])
    def test_bad_hook_500(self, answer, caplog):
        with caplog.at_level(logging.ERROR, logger="fastrpc.handshake"):
            assert status_of(post(), admit_http=answer) == HTTP_INTERNAL_SERVER_ERROR


# --- RFC 9112 §9.3: persistence ------------------------------------------------------------
class TestKeepAlive:
    @pytest.mark.parametrize(
        "connection,keep",
        [(None, True), ("keep-alive", True), ("close", False), ("Close", False),
         ("keep-alive, close", False), ("TE, close", False), ("upgrade", True)],
    )
    def test_http11(self, connection, keep):
        extra = JSON + (f"Connection: {connection}\r\n" if connection else "")
        d = decide(post(extra=extra))
        assert d.rpc and d.keep_alive is keep and not d.http10

    @pytest.mark.parametrize("connection,keep", [(None, False), ("keep-alive", True), ("Keep-Alive", True), ("close", False)])
    def test_http10(self, connection, keep):
        extra = JSON + (f"Connection: {connection}\r\n" if connection else "")
        d = decide(post(extra=extra, version="HTTP/1.0"))
        assert d.rpc and d.keep_alive is keep and d.http10

    def test_http10_needs_no_host(self):
        assert decide(post(version="HTTP/1.0", host=False)).rpc
        assert status_of(post(host=False)) == HTTP_BAD_REQUEST  # HTTP/1.1 does

    def test_http10_only_for_rpc_post(self):
        assert status_of(post(version="HTTP/1.0"), HandshakePolicy()) == HTTP_VERSION_NOT_SUPPORTED
        assert status_of(post(method="GET", length=None, extra="", version="HTTP/1.0")) == HTTP_VERSION_NOT_SUPPORTED
        assert status_of(post(version="HTTP/2.0")) == HTTP_VERSION_NOT_SUPPORTED


# --- the 200 ---------------------------------------------------------------------------
class TestRpcResponse:
    BODY = b'{"jsonrpc":"2.0","id":1,"result":"0x1"}'

    def test_keep_alive(self):
        status, headers, body = parse(rpc_response(self.BODY, True, keep_alive_timeout=10))
        assert (status, body) == (200, self.BODY)
        assert headers["content-type"] == "application/json"
        assert "connection" not in headers and headers["keep-alive"] == "timeout=10"

    def test_close(self):
        _, headers, _ = parse(rpc_response(self.BODY, False, keep_alive_timeout=10))
        assert headers["connection"] == "close" and "keep-alive" not in headers

    def test_http10_keep_alive_says_so(self):
        _, headers, _ = parse(rpc_response(self.BODY, True, http10=True))
        assert headers["connection"] == "keep-alive" and "keep-alive" not in headers

    def test_empty_body(self):
        status, headers, body = parse(rpc_response(b"", True))
        assert (status, body, headers["content-length"]) == (200, b"", "0")


# --- Limits.max_http_body ----------------------------------------------------------------
class TestMaxHttpBody:
    def test_default_is_max_message_size(self):
        assert Limits().max_http_body is None and Limits().http_body_limit == 1 * MiB
        assert Limits(max_message_size=64 * KiB, pool_size_classes=(64 * KiB,)).http_body_limit == 64 * KiB

    def test_set(self):
        assert Limits(max_http_body=5 * MiB, pool_size_classes=(1 * KiB, 8 * MiB)).http_body_limit == 5 * MiB
        assert Limits(max_http_body=0).http_body_limit == 0

    @pytest.mark.parametrize("value", [-1, 1 * MiB + 1, 5 * MiB])
    def test_must_fit_the_largest_pool_block(self, value):
        with pytest.raises(ValueError, match="max_http_body"):
            Limits(max_http_body=value)


# --- robustness: nothing escapes ----------------------------------------------------------
VALID = post(extra=JSON + "Origin: https://app.example\r\nConnection: keep-alive\r\n")
FUZZ_POLICY = HandshakePolicy(
    max_http_body=LIMIT, allowed_origins=["https://app.example", None], auth=lambda p, h: "deny" not in p
)
BITS = st.sampled_from(
    ["", " ", "0", "10", str(LIMIT + 1), "chunked", "close", "keep-alive", "application/json",
     "text/plain", ";", "https://app.example", "https://evil.example", "\xe9", "x" * 30]
)


@st.composite
def line_mutated(draw):
    lines = VALID.decode("latin-1").split("\r\n")[:-2]
    request_line, fields = lines[0], [line.split(": ", 1) for line in lines[1:]]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "dup", "value", "add", "line"]))
        i = draw(st.integers(0, max(len(fields) - 1, 0)))
        if op == "drop" and fields:
            del fields[i]
        elif op == "dup" and fields:
            fields.insert(i, list(fields[i]))
        elif op == "value" and fields:
            fields[i][1] = "".join(draw(st.lists(BITS, max_size=3)))
        elif op == "add":
            name = draw(st.sampled_from(["Content-Length", "Transfer-Encoding", "Content-Type", "Connection",
                                         "Origin", "Host", "Upgrade"]))
            fields.insert(i, [name, draw(BITS)])
        elif op == "line":
            method = draw(st.sampled_from(["POST", "GET", "PUT"]))
            target = draw(st.sampled_from(["/", "/health", "/deny", "*"]))
            request_line = f"{method} {target} {draw(st.sampled_from(['HTTP/1.1', 'HTTP/1.0']))}"
    text = "\r\n".join([request_line] + [f"{n}: {v}" for n, v in fields]) + "\r\n\r\n"
    return text.encode("latin-1")


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(line_mutated())
def test_mutated_posts_never_raise(head):
    d = handle_request(head, FUZZ_POLICY, admit_http=lambda: None)
    if d.rpc:
        assert d.status == 200 and d.response == b"" and 0 <= d.body_length <= LIMIT
        assert head.startswith(b"POST ")
    else:
        assert d.response.startswith(b"HTTP/1.1 ")
        assert d.status != 200 or not head.startswith(b"POST ")
