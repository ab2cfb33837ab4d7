"""The HTTP/1.1 side of a connection: the RFC 6455 §4 opening handshake, ``/health`` and
the head of a JSON-RPC ``POST``.

Sans-I/O: no sockets, no event loop. The compiled core collects the request head (the
bytes up to and including the first ``\\r\\n\\r\\n``, at most ``Limits.max_handshake_size``)
and hands it over once; :func:`handle_request` returns a :class:`Decision` saying what to
write and what to do next:

* ``decision.upgrade`` is true: write ``decision.response`` (a 101) and switch the
  connection to WebSocket frames. The client may send frames as soon as it has read the
  101, so the frame reader must be in place before (or while) the response is written.
* ``decision.rpc`` is true (a JSON-RPC ``POST``, only with ``policy.max_http_body`` set):
  ``decision.response`` is empty. Read exactly ``decision.body_length`` bytes of body
  (possibly 0), hand them to the JSON-RPC dispatcher and write :func:`rpc_response`;
  then read the next request if ``decision.keep_alive``, else close.
* otherwise: write ``decision.response`` (it carries ``Connection: close``), then close
  the connection. Bytes the client sent after the head (a request body, pipelined
  requests) are never read.

Every malformed head gets a precise status; no exception escapes :func:`handle_request`
(an unexpected one becomes a 500 and its traceback goes to the ``fastrpc.handshake``
logger). Response bodies are fixed text and never echo request data.

Order of checks, first failure wins:

1. size and bytes: longer than ``policy.max_handshake_size`` → 431. The head must end
   with its first ``\\r\\n\\r\\n``; no bare CR or LF; no control character other than HTAB
   anywhere → 400.
2. request line ``METHOD SP request-target SP HTTP/x.y`` (target: visible ASCII): bad
   syntax → 400; a well-formed version other than ``HTTP/1.1`` → 505, except
   ``HTTP/1.0`` for a ``POST`` when JSON-RPC over HTTP is served (benchmark tools such as
   ``ab`` speak it; Host is then optional). A leading empty line is not tolerated (→ 400).
3. header lines ``name: value``: more than :data:`MAX_HEADERS` → 431. Name is a token
   (RFC 9110 tchar), no whitespace before the colon, no obs-fold (a line starting with
   SP/HTAB) → 400; values are stripped of surrounding SP/HTAB. Host missing or repeated
   → 400 (RFC 9112 §3.2); Origin, Content-Length, Content-Type, Sec-WebSocket-Key or
   Sec-WebSocket-Version repeated → 400.
4. method: a WebSocket attempt with a method other than GET → 405 ``Allow: GET``. A
   plain ``POST`` on an *RPC path* is a JSON-RPC request (below). An RPC path is any path
   an upgrade would be accepted on (``policy.paths``, query ignored; every path when it is
   None) except the health path, when ``policy.max_http_body`` is set. Any other plain
   request than GET/HEAD → 405 with ``Allow: GET, HEAD`` on the health path,
   ``Allow: GET, POST`` on an RPC path and ``Allow: GET`` elsewhere. Then the target must
   be in origin-form (starts with ``/``): absolute-form and ``*`` → 400.
5. a JSON-RPC ``POST`` ends here, with go-ethereum's checks (``rpc/http.go``) in its order
   where it has them: ``Transfer-Encoding`` with ``Content-Length`` → 400;
   ``Transfer-Encoding`` alone (chunked) or no ``Content-Length`` → 411 Length Required
   (bodies are framed by ``Content-Length`` only); a bad ``Content-Length`` → 400; Origin
   (403) and the auth hook (401/403/500) as for an upgrade; ``Content-Length`` over
   ``policy.max_http_body`` → 413, decided before any of the body is read; a
   ``Content-Type`` whose media type (parameters such as ``charset`` ignored) is not
   ``application/json`` or one of go-ethereum's aliases (``application/json-rpc``,
   ``application/jsonrequest``) → 415, a missing one included (curl's ``-d`` sends
   ``application/x-www-form-urlencoded``: refused, as go-ethereum refuses it); the
   ``admit_http`` callable (its own status). Accepted: the connection persists after the
   answer unless the client asked otherwise (HTTP/1.1: ``Connection: close``; HTTP/1.0:
   unless ``Connection: keep-alive``). Every error answer closes the connection: a body
   is never read after one.
6. body of every other request: ``Transfer-Encoding`` present, or a ``Content-Length``
   that is not all digits → 400 (a body we cannot frame is a request-smuggling signal);
   ``Content-Length`` > 0 → 413 (no request content is accepted there).
   ``Content-Length: 0`` is fine.
7. routing. A request is a *WebSocket attempt* when its ``Upgrade`` header lists
   ``websocket`` or it carries ``Sec-WebSocket-Key`` / ``Sec-WebSocket-Version``. Other
   ``Upgrade`` values (``h2c``...) are ignored as RFC 9110 §7.8 allows, so
   ``curl --http2 /health`` still works. Plain requests: ``policy.health_path`` with a
   ``health`` callable → 200 or what it reports (503 when draining or over the memory
   ceiling), JSON body; ``policy.metrics_path`` with a ``metrics`` callable → 200 with
   what it renders (the Prometheus page; 500 if it raises); anything else → 404.
8. WebSocket attempt (RFC 6455 §4.2.1): ``Upgrade`` lists ``websocket`` and
   ``Connection`` lists ``upgrade`` (case-insensitive comma lists) → else 400;
   ``Sec-WebSocket-Version`` is ``13`` → else (missing too) 426 with
   ``Sec-WebSocket-Version: 13``; ``Sec-WebSocket-Key`` is the canonical base64 of
   exactly 16 bytes → else 400. Any path is accepted unless ``policy.paths`` is set
   (path without query, else 404). Then Origin (403), the auth hook (401/403/500), the
   ``admit`` callable (its own status), and finally the 101.

The 101 negotiates no extension (permessage-deflate offers are ignored: per-connection
compression state costs far more memory than this server spends on a connection) and
echoes at most one subprotocol, the first of ``policy.subprotocols`` the client offered.
"""
from __future__ import annotations

import binascii
import logging
import re
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from hashlib import sha1
from typing import Callable, Collection, Iterable, Mapping, Sequence

import orjson

from .limits import Limits

__all__ = [
    "GUID",
    "MAX_HEADERS",
    "ORIGIN_NOT_ALLOWED",
    "WEBSOCKET_VERSION",
    "Decision",
    "HandshakePolicy",
    "accept_key",
    "handle_request",
    "reject",
    "rpc_response",
    "too_large",
    # statuses
    "HTTP_SWITCHING_PROTOCOLS",
    "HTTP_OK",
    "HTTP_BAD_REQUEST",
    "HTTP_UNAUTHORIZED",
    "HTTP_FORBIDDEN",
    "HTTP_NOT_FOUND",
    "HTTP_METHOD_NOT_ALLOWED",
    "HTTP_LENGTH_REQUIRED",
    "HTTP_CONTENT_TOO_LARGE",
    "HTTP_UNSUPPORTED_MEDIA_TYPE",
    "HTTP_UPGRADE_REQUIRED",
    "HTTP_TOO_MANY_REQUESTS",
    "HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE",
    "HTTP_INTERNAL_SERVER_ERROR",
    "HTTP_SERVICE_UNAVAILABLE",
    "HTTP_VERSION_NOT_SUPPORTED",
]

logger = logging.getLogger("fastrpc.handshake")

# --- protocol constants ----------------------------------------------------------------
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
"""RFC 6455 §1.3: appended to Sec-WebSocket-Key before hashing into Sec-WebSocket-Accept."""
WEBSOCKET_VERSION = "13"
"""The only Sec-WebSocket-Version spoken (RFC 6455 §4.1); anything else gets 426."""
MAX_HEADERS = 100
"""Header lines in one request head; past it: 431."""
DEFAULT_HEALTH_PATH = "/health"
DEFAULT_METRICS_PATH = "/metrics"
ORIGIN_NOT_ALLOWED = "origin not allowed"
"""``Decision.reason`` of the 403 for an Origin outside the allowlist (an upgrade or a
JSON-RPC POST); the server counts these apart from the auth hook's 403s."""
JSON_CONTENT_TYPES = frozenset(("application/json", "application/json-rpc", "application/jsonrequest"))
"""Media types a JSON-RPC POST may declare (go-ethereum's ``acceptedContentTypes``)."""

# --- HTTP statuses (every status this module or the server's admission sends) -------
HTTP_SWITCHING_PROTOCOLS = 101
HTTP_OK = 200
HTTP_BAD_REQUEST = 400  # malformed request line / headers / handshake fields
HTTP_UNAUTHORIZED = 401  # auth hook returned False or 401
HTTP_FORBIDDEN = 403  # Origin not allowed, or auth hook returned 403
HTTP_NOT_FOUND = 404  # plain GET on a path that is not the health path; upgrade off policy.paths
HTTP_METHOD_NOT_ALLOWED = 405  # method other than GET (upgrade), GET/HEAD (plain), POST (RPC path)
HTTP_LENGTH_REQUIRED = 411  # JSON-RPC POST without Content-Length (chunked included)
HTTP_CONTENT_TOO_LARGE = 413  # body over max_http_body (POST), or any body elsewhere
HTTP_UNSUPPORTED_MEDIA_TYPE = 415  # JSON-RPC POST whose Content-Type is not JSON
HTTP_UPGRADE_REQUIRED = 426  # Sec-WebSocket-Version missing or not 13
HTTP_TOO_MANY_REQUESTS = 429  # server admission: per-IP connection limit
HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE = 431  # head over the size limit or MAX_HEADERS
HTTP_INTERNAL_SERVER_ERROR = 500  # a hook raised or returned nonsense
HTTP_SERVICE_UNAVAILABLE = 503  # server admission: full / draining; unhealthy /health
HTTP_VERSION_NOT_SUPPORTED = 505  # anything but HTTP/1.1

_PHRASES: dict[int, str] = {
    HTTP_SWITCHING_PROTOCOLS: "Switching Protocols",
    HTTP_OK: "OK",
    HTTP_BAD_REQUEST: "Bad Request",
    HTTP_UNAUTHORIZED: "Unauthorized",
    HTTP_FORBIDDEN: "Forbidden",
    HTTP_NOT_FOUND: "Not Found",
    HTTP_METHOD_NOT_ALLOWED: "Method Not Allowed",
    HTTP_LENGTH_REQUIRED: "Length Required",
    HTTP_CONTENT_TOO_LARGE: "Content Too Large",
    HTTP_UNSUPPORTED_MEDIA_TYPE: "Unsupported Media Type",
    HTTP_UPGRADE_REQUIRED: "Upgrade Required",
    HTTP_TOO_MANY_REQUESTS: "Too Many Requests",
    HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE: "Request Header Fields Too Large",
    HTTP_INTERNAL_SERVER_ERROR: "Internal Server Error",
    HTTP_SERVICE_UNAVAILABLE: "Service Unavailable",
    HTTP_VERSION_NOT_SUPPORTED: "HTTP Version Not Supported",
}

# --- precompiled matchers (module level: nothing is compiled per call) -----------------
_TCHAR = r"!#$%&'*+\-.^_`|~0-9A-Za-z"
_token = re.compile(f"[{_TCHAR}]+").fullmatch
# METHOD SP origin-or-other-target SP HTTP-version. The target is any run of visible
# ASCII here; its form is checked later so that a version error wins over a form error.
_request_line = re.compile(f"([{_TCHAR}]+) ([\\x21-\\x7e]+) (HTTP/[0-9]\\.[0-9])").fullmatch
# Control characters a head may never hold (HTAB, CR, LF are handled separately).
_bad_ctl = re.compile("[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f]").search
# uri-host [ ":" port ], liberal: reg-name / IPv4 / IP-literal characters.
_host = re.compile(
    r"(?:[A-Za-z0-9._~!$&'()*+,;=%\-]*|\[[0-9A-Za-z.:%_~\-]+\])(?::[0-9]*)?"
).fullmatch
_digits = re.compile("[0-9]+").fullmatch
# The whole grammar of an acceptable head in one pattern (linear: no nested ambiguity):
# request line, then field lines (token ":" field-value chars), then the blank line.
# Field-value chars are HTAB, SP, VCHAR and obs-text (RFC 9110 §5.5) — no CTL, no CR/LF.
_valid_head = re.compile(
    f"([{_TCHAR}]+) ([\\x21-\\x7e]+) HTTP/1\\.([01])\r\n"
    f"((?:[{_TCHAR}]+:[\t\x20-\x7e\x80-\xff]*\r\n)*)\r\n"
).fullmatch
# Split the validated field block into (name, value + trailing OWS) pairs in one C call.
# The value group is greedy up to CR, so it is linear; trailing OWS is stripped in Python
# (a lazy "(.*?)[ \t]*" would be quadratic on long whitespace runs: a cheap DoS).
_fields = re.compile(f"([{_TCHAR}]+):[ \t]*([^\r]*)\r\n").findall
_origin_entry = re.compile(
    r"([A-Za-z][A-Za-z0-9+.\-]*)://([A-Za-z0-9.\-*]+|\[[0-9A-Fa-f:.]+\])(?::([0-9]+))?"
).fullmatch

# Request fields that matter here. SINGLE: a repeat is a 400. LIST: repeats are joined
# with "," as RFC 9110 §5.3 allows for list-valued fields.
_SINGLE = 0
_LIST = 1
_FIELDS: dict[str, int] = {
    "host": _SINGLE,
    "origin": _SINGLE,
    "content-length": _SINGLE,
    "content-type": _SINGLE,
    "sec-websocket-key": _SINGLE,
    "sec-websocket-version": _SINGLE,
    "upgrade": _LIST,
    "connection": _LIST,
    "transfer-encoding": _LIST,
    "sec-websocket-protocol": _LIST,
}

_GUID_BYTES = GUID.encode("ascii")
_101_HEAD = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)

AuthHook = Callable[[str, "list[tuple[str, str]]"], "bool | int | None"]
HealthHook = Callable[[], "tuple[int, Mapping[str, object]]"]
MetricsHook = Callable[[list[tuple[str, str]]], "tuple[bytes, str]"]
"""``metrics(headers)`` → ``(body, content_type)`` for a GET on ``policy.metrics_path``."""
AdmitHook = Callable[[], "tuple[int, str, Sequence[tuple[str, str]]] | None"]


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (RFC 6455 §4.2.2 item 5.4).

    >>> accept_key("dGhlIHNhbXBsZSBub25jZQ==")
    's3pPLMBiTxaQ9kYGzzhZRbK+xOo='
    """
    return _accept(key).decode("ascii")


def _accept(key: str) -> bytes:
    return binascii.b2a_base64(sha1(key.encode("ascii") + _GUID_BYTES).digest(), newline=False)


def _valid_key(key: str) -> bool:
    """True when ``key`` is the canonical base64 encoding of exactly 16 bytes."""
    # 16 bytes encode to 22 significant characters plus "==". The lenient decoder skips
    # stray characters and ignores non-zero pad bits ("...Q==" vs "...R=="), so the
    # decoded bytes must re-encode to exactly the key: that leaves only the canonical form.
    if len(key) != 24 or key[22:] != "==":
        return False
    try:
        raw = binascii.a2b_base64(key)
    except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
        return False
    return len(raw) == 16 and binascii.b2a_base64(raw, newline=False).decode("ascii") == key


# --- Date header, cached per second ------------------------------------------------------
_date_second = -1
_date_line = b""


def _date() -> bytes:
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        # Two threads racing here both write a correct value: no lock needed.
        _date_line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode("ascii")
        _date_second = now
    return _date_line


def _check_header(name: str, value: str) -> None:
    if _token(name) is None:
        raise ValueError(f"invalid header name {name!r}")
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"invalid header value for {name!r}")


def _response(
    status: int,
    content_type: bytes,
    body: bytes,
    extra_headers: Iterable[tuple[str, str]] = (),
    head_only: bool = False,
    connection: bytes = b"Connection: close\r\n",
) -> bytes:
    phrase = _PHRASES.get(status)
    if phrase is None:
        raise ValueError(f"unsupported HTTP status {status}")
    parts = [
        f"HTTP/1.1 {status} {phrase}\r\n".encode("ascii"),
        _date(),
        connection,
        b"Content-Type: ",
        content_type,
        f"\r\nContent-Length: {len(body)}\r\n".encode("ascii"),
    ]
    for name, value in extra_headers:
        _check_header(name, value)
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    parts.append(b"\r\n")
    if not head_only:  # a response to HEAD announces the length but carries no body
        parts.append(body)
    return b"".join(parts)


def reject(status: int, reason: str, extra_headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A complete HTTP/1.1 error response; write it, then close the connection.

    ``Connection: close``, ``Content-Type: text/plain; charset=utf-8``, ``Content-Length``,
    ``Date``, then ``extra_headers`` (e.g. ``[("Retry-After", "5")]`` on a 503); the body is
    ``reason + "\\n"``. Raises ``ValueError`` for a status that is not one of the 4xx/5xx
    statuses named in this module, or a header name/value that could split the response
    (CR, LF, NUL).
    """
    if status < 400:
        raise ValueError(f"reject() builds error responses, not {status}")
    return _response(status, b"text/plain; charset=utf-8", (reason + "\n").encode("utf-8"), extra_headers)


def rpc_response(body: bytes, keep_alive: bool, *, http10: bool = False, keep_alive_timeout: int | None = None) -> bytes:
    """The 200 answering a JSON-RPC ``POST``: ``Content-Type: application/json`` and
    ``body`` (a reply, a batch reply, or empty when every request was a notification).

    JSON-RPC errors travel in the body of a 200, as go-ethereum sends them. With
    ``keep_alive`` the connection persists (HTTP/1.1's default; an HTTP/1.0 client is told
    ``Connection: keep-alive``) and ``keep_alive_timeout`` seconds, when given, are
    announced in ``Keep-Alive: timeout=N`` so clients stop reusing a connection before the
    server drops it; otherwise ``Connection: close``: close after writing it.
    """
    if keep_alive:
        connection = b"Connection: keep-alive\r\n" if http10 else b""
        if keep_alive_timeout is not None:
            connection += b"Keep-Alive: timeout=%d\r\n" % keep_alive_timeout
    else:
        connection = b"Connection: close\r\n"
    return _response(HTTP_OK, b"application/json", body, (), False, connection)


def too_large() -> bytes:
    """The 431 the core writes when a head outgrows ``max_handshake_size``; close after."""
    return reject(HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")


def _compile_origins(
    entries: Iterable[str | None],
) -> tuple[frozenset[str], Callable[[str], object] | None, bool]:
    """(exact lowercased origins, matcher for wildcard entries or None, missing allowed)."""
    exact: set[str] = set()
    patterns: list[str] = []
    allow_missing = False
    for entry in entries:
        if entry is None:
            allow_missing = True
            continue
        if not isinstance(entry, str):
            raise TypeError(f"allowed_origins entries must be str or None, not {type(entry).__name__}")
        if entry.lower() == "null":  # the opaque origin (file:, sandboxed iframes)
            exact.add("null")
            continue
        m = _origin_entry(entry)
        if m is None:
            raise ValueError(
                f"invalid allowed origin {entry!r}: expected 'scheme://host[:port]' (no path, "
                "no trailing slash), 'null', or None; use allowed_origins=None to allow all"
            )
        scheme, host, port = m.groups()
        if "*" not in host:
            exact.add(entry.lower())
            continue
        if "*" in scheme or host.startswith("["):
            raise ValueError(f"invalid allowed origin {entry!r}: '*' is only allowed in a host name")
        # '*' spans one or more host-name characters (dots included) but never ':' or '/',
        # so it cannot reach into the port or past the authority.
        host_re = "[a-z0-9.\\-]+".join(re.escape(part) for part in host.lower().split("*"))
        pattern = f"{re.escape(scheme.lower())}://{host_re}"
        if port is not None:
            pattern += f":{port}"
        patterns.append(pattern)
    matcher = re.compile("|".join(f"(?:{p})" for p in patterns)).fullmatch if patterns else None
    return frozenset(exact), matcher, allow_missing


@dataclass(frozen=True, slots=True)
class HandshakePolicy:
    """What the server accepts; built once per server, shared by every handshake.

    Construction validates and precompiles everything (origin patterns, subprotocol
    tokens), so :func:`handle_request` does no compilation per call.
    """

    allowed_origins: Sequence[str | None] | None = None
    """``None`` allows every Origin (and none). Otherwise a list of ``"scheme://host[:port]"``
    (scheme and host compared case-insensitively, ``*`` in the host matches one or more
    host-name characters, dots included, e.g. ``"https://*.example.com"``), ``"null"`` for
    the opaque origin, and ``None`` to admit a request without an Origin header (non-browser
    clients). Mismatch → 403."""
    auth: AuthHook | None = None
    """``auth(path, headers)``, called after the Origin check with the request target and the
    request headers as received. ``True``/``None`` accept; ``False`` → 401; ``401`` or ``403``
    → that status. Must be synchronous and fast (it runs on the event loop). Raising, or
    returning anything else, → 500; the traceback is logged, never sent."""
    subprotocols: Sequence[str] = ()
    """Subprotocols in server preference order; the first one the client offered is echoed."""
    paths: Collection[str] | None = None
    """Paths (query ignored) that accept upgrades; ``None`` accepts any path → else 404."""
    health_path: str = DEFAULT_HEALTH_PATH
    """Plain GET/HEAD on this path calls ``health()``."""
    metrics_path: str | None = DEFAULT_METRICS_PATH
    """Plain GET/HEAD on this path calls ``metrics(headers)`` (``None``: no such path)."""
    www_authenticate: str = "Bearer"
    """Challenge sent in ``WWW-Authenticate`` with a 401 (RFC 9110 §15.5.2 requires one)."""
    max_handshake_size: int = Limits.max_handshake_size
    """Defensive repeat of the core's limit: a longer head → 431."""
    max_http_body: int | None = None
    """Bytes a JSON-RPC ``POST`` body may have (``Limits.http_body_limit``; → 413).
    ``None``: JSON-RPC over HTTP is not served (a ``POST`` is a 405 like any other method)."""

    _exact_origins: frozenset[str] = field(init=False, repr=False, compare=False)
    _origin_match: Callable[[str], object] | None = field(init=False, repr=False, compare=False)
    _allow_missing_origin: bool = field(init=False, repr=False, compare=False)
    _paths: frozenset[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        setattr_ = object.__setattr__
        if isinstance(self.subprotocols, str):
            raise TypeError("subprotocols must be a sequence of str, not a str")
        subprotocols = tuple(self.subprotocols)
        for proto in subprotocols:
            if not isinstance(proto, str) or _token(proto) is None:
                raise ValueError(f"invalid subprotocol {proto!r}: must be an RFC 9110 token")
        setattr_(self, "subprotocols", subprotocols)
        _check_header("WWW-Authenticate", self.www_authenticate)
        if not self.health_path.startswith("/"):
            raise ValueError("health_path must start with '/'")
        if self.metrics_path is not None and (
            not self.metrics_path.startswith("/") or self.metrics_path == self.health_path
        ):
            raise ValueError("metrics_path must start with '/' and differ from health_path")
        if self.allowed_origins is None:
            setattr_(self, "_exact_origins", frozenset())
            setattr_(self, "_origin_match", None)
            setattr_(self, "_allow_missing_origin", True)
        else:
            if isinstance(self.allowed_origins, str):
                raise TypeError("allowed_origins must be a list of origins, not a str")
            origins = tuple(self.allowed_origins)
            setattr_(self, "allowed_origins", origins)
            exact, match, allow_missing = _compile_origins(origins)
            setattr_(self, "_exact_origins", exact)
            setattr_(self, "_origin_match", match)
            setattr_(self, "_allow_missing_origin", allow_missing)
        if self.paths is not None:
            if isinstance(self.paths, str):
                raise TypeError("paths must be a collection of paths, not a str")
            paths = frozenset(self.paths)
            setattr_(self, "paths", paths)
        else:
            paths = None
        setattr_(self, "_paths", paths)

    def origin_allowed(self, origin: str | None) -> bool:
        """Whether an ``Origin`` header value (``None``: header absent) passes the allowlist."""
        if self.allowed_origins is None:
            return True
        if origin is None:
            return self._allow_missing_origin
        origin = origin.lower()
        if origin in self._exact_origins:
            return True
        return self._origin_match is not None and self._origin_match(origin) is not None


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to one request head.

    Write ``response`` to the transport, then: if ``upgrade``, switch the connection to
    WebSocket frames; otherwise close the connection (the response says
    ``Connection: close``).
    """

    upgrade: bool
    """True only for a 101: the connection now speaks RFC 6455 frames."""
    status: int
    """The HTTP status in ``response`` (for metrics and logs)."""
    response: bytes
    """The complete HTTP response, status line to body."""
    headers: list[tuple[str, str]]
    """Request headers as received (names in their original case, values without
    surrounding whitespace). Empty when the head did not parse. Do not mutate."""
    path: str
    """The request target (path and query) as received; ``""`` when the request line did
    not parse (then a response to a would-be HEAD carries a body: the method is unknown)."""
    reason: str = ""
    """Short fixed text naming the failed check (the body of an error response);
    ``""`` for a 101 and for health answers."""
    subprotocol: str | None = None
    """The subprotocol echoed in the 101, if any."""
    rpc: bool = False
    """A JSON-RPC ``POST`` accepted: ``response`` is empty; read ``body_length`` bytes,
    dispatch them and answer with :func:`rpc_response`."""
    body_length: int = 0
    """Bytes of request body to read (``Content-Length``) when ``rpc``."""
    keep_alive: bool = False
    """When ``rpc``: read the next request after answering this one (else close)."""
    http10: bool = False
    """When ``rpc``: the request said ``HTTP/1.0`` (a kept-alive answer must say so)."""


def _fail(
    status: int,
    reason: str,
    headers: list[tuple[str, str]] | None = None,
    path: str = "",
    extra: Iterable[tuple[str, str]] = (),
    head_only: bool = False,
) -> Decision:
    body = (reason + "\n").encode("utf-8")
    response = _response(status, b"text/plain; charset=utf-8", body, extra, head_only)
    return Decision(False, status, response, [] if headers is None else headers, path, reason)


def _has_token(value: str | None, token: str) -> bool:
    """Whether a comma-separated list header contains ``token`` (lowercase), ignoring case."""
    if value is None:
        return False
    value = value.lower()
    if value == token:  # the common single-token case, no split
        return True
    for item in value.split(","):
        if item.strip(" \t") == token:
            return True
    return False


def handle_request(
    head: bytes | bytearray | memoryview,
    policy: HandshakePolicy,
    *,
    health: HealthHook | None = None,
    admit: AdmitHook | None = None,
    admit_http: AdmitHook | None = None,
    on_headers: Callable[[list[tuple[str, str]]], object] | None = None,
    metrics: MetricsHook | None = None,
) -> Decision:
    """Decide the answer to one HTTP/1.1 request head.

    ``head`` is the request line and headers up to and including the first blank line
    (``\\r\\n\\r\\n``), nothing after it. ``health()`` returns ``(status, body_dict)`` for a
    plain GET/HEAD on ``policy.health_path`` (``None``: that path is a 404 like any other).
    ``metrics(headers)`` returns ``(body, content_type)`` for a plain GET/HEAD on
    ``policy.metrics_path`` (``None``: a 404 too).
    ``admit()`` is called only for a valid upgrade that passed the Origin and auth checks,
    right before the 101; returning ``(status, reason, extra_headers)`` (e.g.
    ``(503, "server full", [("Retry-After", "5")])``) answers that error instead, ``None``
    admits the connection. ``admit_http()`` is its counterpart for a JSON-RPC ``POST`` that
    passed every other check. ``on_headers(headers)`` is called once the header fields
    parsed (Host included), before any other hook: the server takes the real client
    address from a trusted proxy's ``X-Forwarded-For`` there (``fastrpc.proxies``).

    Never raises. After it: if ``decision.rpc``, read the body and answer it (see the
    module docstring); otherwise write ``decision.response`` and, if ``decision.upgrade``,
    switch the connection to WebSocket frames, else close it once the response is written.
    """
    try:
        return _handle(head, policy, health, admit, admit_http, on_headers, metrics)
    except Exception:  # a bug here or a hook's bad return value: never leaks
        logger.exception("handshake: unexpected error")
        return _fail(HTTP_INTERNAL_SERVER_ERROR, "internal error")


def _handle(
    head: bytes | bytearray | memoryview,
    policy: HandshakePolicy,
    health: HealthHook | None,
    admit: AdmitHook | None,
    admit_http: AdmitHook | None,
    on_headers: Callable[[list[tuple[str, str]]], object] | None = None,
    metrics: MetricsHook | None = None,
) -> Decision:
    # --- 1-3. framing, request line, header fields --------------------------------
    if len(head) > policy.max_handshake_size:
        return _fail(HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
    text = str(head, "latin-1")  # every byte maps to one char; obs-text survives as-is
    m = _valid_head(text)  # one C pass validates the whole grammar of a good head
    if m is None:
        # Rare path: find out which rule broke, for a precise status.
        return _diagnose(text) or _fail(HTTP_BAD_REQUEST, "malformed request head")
    method, target, minor, block = m.groups()
    head_only = method == "HEAD"
    http10 = minor == "0"
    if http10 and (method != "POST" or policy.max_http_body is None):
        return _fail(HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.1 is supported", None, target,
                     head_only=head_only)
    pairs = _fields(block)
    if len(pairs) > MAX_HEADERS:
        return _fail(HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields", None, target,
                     head_only=head_only)
    headers: list[tuple[str, str]] = []
    fields: dict[str, str] = {}
    fields_kind = _FIELDS
    for name, value in pairs:
        value = value.rstrip(" \t")  # leading OWS is outside the captured group
        headers.append((name, value))
        lname = name.lower()
        kind = fields_kind.get(lname)
        if kind is None:
            continue
        previous = fields.get(lname)
        if previous is None:
            fields[lname] = value
        elif kind == _SINGLE:
            return _fail(HTTP_BAD_REQUEST, f"duplicate {lname} header", None, target, head_only=head_only)
        else:
            fields[lname] = f"{previous},{value}"
    host = fields.get("host")
    if host is None:
        if not http10:  # HTTP/1.0 predates Host (RFC 9112 §3.2 binds HTTP/1.1 clients)
            return _fail(HTTP_BAD_REQUEST, "missing Host header", headers, target, head_only=head_only)
    elif _host(host) is None:
        return _fail(HTTP_BAD_REQUEST, "invalid Host header", headers, target, head_only=head_only)
    if on_headers is not None:
        on_headers(headers)

    # --- 4. method ------------------------------------------------------------------
    upgrade_hdr = fields.get("upgrade")
    websocket = (
        _has_token(upgrade_hdr, "websocket")
        or "sec-websocket-key" in fields
        or "sec-websocket-version" in fields
    )
    path = target.partition("?")[0]
    rpc_path = (
        policy.max_http_body is not None
        and path != policy.health_path
        and path != policy.metrics_path
        and (policy._paths is None or path in policy._paths)
    )
    if websocket:
        if method != "GET":
            return _fail(HTTP_METHOD_NOT_ALLOWED, "WebSocket upgrade requires GET", headers, target,
                         (("Allow", "GET"),), head_only)
    elif method != "GET" and method != "HEAD" and not (method == "POST" and rpc_path):
        plain = path == policy.health_path or path == policy.metrics_path
        allow = "GET, HEAD" if plain else "GET, POST" if rpc_path else "GET"
        return _fail(HTTP_METHOD_NOT_ALLOWED, "method not allowed", headers, target, (("Allow", allow),))
    # origin-form only: absolute-form and "*" are legal HTTP but no WebSocket or health
    # client sends them to an origin server.
    if target[0] != "/":
        return _fail(HTTP_BAD_REQUEST, "request target must be a path", headers, target,
                     head_only=head_only)
    # --- 5. JSON-RPC POST -----------------------------------------------------------
    if method == "POST":  # an RPC path: any other POST was answered 405 above
        return _rpc_request(policy, fields, headers, target, http10, admit_http)

    # --- 6. body --------------------------------------------------------------------
    if "transfer-encoding" in fields:
        return _fail(HTTP_BAD_REQUEST, "request body not accepted", headers, target, head_only=head_only)
    length = fields.get("content-length")
    if length is not None:
        if _digits(length) is None:
            return _fail(HTTP_BAD_REQUEST, "invalid Content-Length", headers, target, head_only=head_only)
        if _length(length) != 0:
            return _fail(HTTP_CONTENT_TOO_LARGE, "request body not accepted", headers, target,
                         head_only=head_only)

    # --- 7. plain HTTP --------------------------------------------------------------
    if not websocket:
        if health is not None and path == policy.health_path:
            return _health(health, headers, target, head_only)
        if metrics is not None and path == policy.metrics_path:
            return _metrics(metrics, headers, target, head_only)
        return _fail(HTTP_NOT_FOUND, "not found", headers, target, head_only=head_only)

    # --- 8. WebSocket opening handshake (RFC 6455 §4.2.1) ---------------------------
    if not _has_token(upgrade_hdr, "websocket"):
        return _fail(HTTP_BAD_REQUEST, "Upgrade header must list websocket", headers, target)
    if not _has_token(fields.get("connection"), "upgrade"):
        return _fail(HTTP_BAD_REQUEST, "Connection header must list upgrade", headers, target)
    if fields.get("sec-websocket-version") != WEBSOCKET_VERSION:
        return _fail(HTTP_UPGRADE_REQUIRED, "unsupported WebSocket version", headers, target,
                     (("Sec-WebSocket-Version", WEBSOCKET_VERSION),))
    key = fields.get("sec-websocket-key")
    if key is None or not _valid_key(key):
        return _fail(HTTP_BAD_REQUEST, "invalid Sec-WebSocket-Key", headers, target)
    if policy._paths is not None and path not in policy._paths:
        return _fail(HTTP_NOT_FOUND, "not found", headers, target)
    if policy.allowed_origins is not None and not policy.origin_allowed(fields.get("origin")):
        return _fail(HTTP_FORBIDDEN, ORIGIN_NOT_ALLOWED, headers, target)

    if policy.auth is not None:
        denied = _run_auth(policy, target, headers)
        if denied is not None:
            return denied

    if admit is not None:
        refused = _run_admit(admit, "admit", headers, target)
        if refused is not None:
            return refused

    subprotocol = None
    if policy.subprotocols:
        offered = fields.get("sec-websocket-protocol")
        if offered is not None:
            subprotocol = _pick_subprotocol(policy.subprotocols, offered)

    accept = _accept(key)
    if subprotocol is None:
        response = _101_HEAD + accept + b"\r\n\r\n"
    else:
        response = b"".join(
            (_101_HEAD, accept, b"\r\nSec-WebSocket-Protocol: ", subprotocol.encode("ascii"), b"\r\n\r\n")
        )
    return Decision(True, HTTP_SWITCHING_PROTOCOLS, response, headers, target, "", subprotocol)


def _rpc_request(
    policy: HandshakePolicy,
    fields: dict[str, str],
    headers: list[tuple[str, str]],
    target: str,
    http10: bool,
    admit_http: AdmitHook | None,
) -> Decision:
    """The checks of a JSON-RPC ``POST`` head (step 5 of the module docstring)."""
    length = fields.get("content-length")
    if "transfer-encoding" in fields:
        if length is not None:  # RFC 9112 §6.1: framed two ways, a smuggling signal
            return _fail(HTTP_BAD_REQUEST, "both Transfer-Encoding and Content-Length", headers, target)
        return _fail(HTTP_LENGTH_REQUIRED, "chunked request bodies are not supported: send Content-Length",
                     headers, target)
    if length is None:
        return _fail(HTTP_LENGTH_REQUIRED, "Content-Length required", headers, target)
    if _digits(length) is None:
        return _fail(HTTP_BAD_REQUEST, "invalid Content-Length", headers, target)
    if policy.allowed_origins is not None and not policy.origin_allowed(fields.get("origin")):
        return _fail(HTTP_FORBIDDEN, ORIGIN_NOT_ALLOWED, headers, target)
    if policy.auth is not None:
        denied = _run_auth(policy, target, headers)
        if denied is not None:
            return denied
    limit = policy.max_http_body
    assert limit is not None  # only called for an RPC path
    size = _length(length)
    if size > limit:
        return _fail(HTTP_CONTENT_TOO_LARGE, f"request body over {limit} bytes", headers, target)
    media = fields.get("content-type", "").partition(";")[0].strip(" \t").lower()
    if media not in JSON_CONTENT_TYPES:
        return _fail(HTTP_UNSUPPORTED_MEDIA_TYPE, "invalid content type, only application/json is supported",
                     headers, target)
    if admit_http is not None:
        refused = _run_admit(admit_http, "admit_http", headers, target)
        if refused is not None:
            return refused
    connection = fields.get("connection")
    keep_alive = _has_token(connection, "keep-alive") if http10 else not _has_token(connection, "close")
    return Decision(False, HTTP_OK, b"", headers, target, rpc=True, body_length=size,
                    keep_alive=keep_alive, http10=http10)


def _length(digits: str) -> int:
    """A Content-Length's value; huge ones saturate (``int()`` refuses over 4300 digits)."""
    digits = digits.lstrip("0")
    if not digits:
        return 0
    return int(digits) if len(digits) <= 18 else 1 << 62


def _diagnose(text: str) -> Decision | None:
    """The precise error of a head ``_valid_head`` refused, checking rule by rule.

    Returns ``None`` when every rule holds: it accepts exactly what ``_valid_head`` accepts
    (tests check the two against each other), so ``None`` here means a bug in one of them.
    """
    end = text.find("\r\n\r\n")
    if end < 0 or end + 4 != len(text):
        return _fail(HTTP_BAD_REQUEST, "malformed request head")
    crlf = text.count("\r\n")
    if text.count("\r") != crlf or text.count("\n") != crlf:
        return _fail(HTTP_BAD_REQUEST, "bare CR or LF in request head")
    if _bad_ctl(text) is not None:
        return _fail(HTTP_BAD_REQUEST, "control character in request head")
    lines = text[:end].split("\r\n")
    m = _request_line(lines[0])
    if m is None:
        return _fail(HTTP_BAD_REQUEST, "malformed request line")
    method, target, version = m.groups()
    head_only = method == "HEAD"
    # HTTP/1.0 parses (the fast grammar accepts it too); _handle decides where it is served.
    if version != "HTTP/1.1" and version != "HTTP/1.0":
        return _fail(HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.1 is supported", None, target,
                     head_only=head_only)
    if len(lines) - 1 > MAX_HEADERS:
        return _fail(HTTP_REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields", None, target,
                     head_only=head_only)
    for i in range(1, len(lines)):
        name, sep, _ = lines[i].partition(":")
        if not sep or _token(name) is None:
            # obs-fold (leading SP/HTAB), whitespace before ':', empty or non-token names.
            return _fail(HTTP_BAD_REQUEST, "malformed header field", None, target, head_only=head_only)
    return None


def _pick_subprotocol(preferred: tuple[str, ...], offered: str) -> str | None:
    # Subprotocol tokens are case-sensitive (RFC 6455 §4.1 item 10 → RFC 9110 token).
    offers = {item.strip(" \t") for item in offered.split(",")}
    for proto in preferred:
        if proto in offers:
            return proto
    return None


def _run_admit(admit: Callable[[], tuple[int, str, list[tuple[str, str]]] | None], name: str,
               headers: list[tuple[str, str]], target: str) -> Decision | None:
    """An admission callable's refusal as a Decision (None: admitted). It must refuse
    with an error status; one that raises, or refuses with a non-error, is a 500."""
    try:
        refusal = admit()
        if refusal is None:
            return None
        status, reason, extra = refusal
        if status < 400:
            raise ValueError(f"{name}() refused with non-error status {status!r}")
        return _fail(status, reason, headers, target, extra)
    except Exception:
        logger.exception("%s callable failed; answering 500", name)
        return _fail(HTTP_INTERNAL_SERVER_ERROR, "internal error", headers, target)


def _run_auth(policy: HandshakePolicy, target: str, headers: list[tuple[str, str]]) -> Decision | None:
    """None to go on, or the error Decision the auth hook asked for."""
    try:
        verdict = policy.auth(target, headers)  # type: ignore[misc]
    except Exception:
        logger.exception("auth hook raised; answering 500")
        return _fail(HTTP_INTERNAL_SERVER_ERROR, "internal error", headers, target)
    if verdict is True or verdict is None:
        return None
    if verdict is False or (type(verdict) is int and verdict == HTTP_UNAUTHORIZED):
        return _fail(HTTP_UNAUTHORIZED, "unauthorized", headers, target,
                     (("WWW-Authenticate", policy.www_authenticate),))
    if type(verdict) is int and verdict == HTTP_FORBIDDEN:
        return _fail(HTTP_FORBIDDEN, "forbidden", headers, target)
    if hasattr(verdict, "__await__"):
        close = getattr(verdict, "close", None)
        if close is not None:
            close()  # no "coroutine was never awaited" warning
        logger.error("auth hook returned an awaitable; it must be synchronous. Answering 500")
    else:
        logger.error("auth hook returned %r; expected True, False, None, 401 or 403. Answering 500",
                     type(verdict).__name__)
    return _fail(HTTP_INTERNAL_SERVER_ERROR, "internal error", headers, target)


def _metrics(metrics: MetricsHook, headers: list[tuple[str, str]], target: str, head_only: bool) -> Decision:
    try:
        body, content_type = metrics(headers)
        ctype = content_type.encode("latin-1")
    except Exception:
        logger.exception("metrics callable failed; answering 500")
        return _fail(HTTP_INTERNAL_SERVER_ERROR, "internal error", headers, target, head_only=head_only)
    response = _response(HTTP_OK, ctype, body, (("Cache-Control", "no-store"),), head_only)
    return Decision(False, HTTP_OK, response, headers, target)


def _health(health: HealthHook, headers: list[tuple[str, str]], target: str, head_only: bool) -> Decision:
    try:
        status, body = health()
        if status not in _PHRASES or status < 200:
            raise ValueError(f"health() returned unsupported status {status!r}")
        payload = orjson.dumps(body)
    except Exception:
        logger.exception("health callable failed; answering 500")
        return _fail(HTTP_INTERNAL_SERVER_ERROR, "internal error", headers, target, head_only=head_only)
    response = _response(status, b"application/json", payload, (("Cache-Control", "no-store"),), head_only)
    return Decision(False, status, response, headers, target)
