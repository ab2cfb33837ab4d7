"""JSON-RPC 2.0 messages (jsonrpc.org/specification), sans-I/O.

This module knows the wire format and nothing else: which parsed values are valid
Request objects, and how every reply is written. It never calls a handler and never
touches a transport. ``fastrpc.dispatch`` composes it.

Decoding
    A message is decoded with one ``orjson.loads``. Single call or batch is decided by
    the first non-space byte: ``{`` is a single call, ``[`` a batch, anything else is
    answered with one -32600. (For valid JSON this is the same as the type of the
    decoded value, which is how the dispatcher tests it: ``type(v) is dict`` / ``list``.)
    orjson decodes integers past 64 bits as floats: handlers wanting exact big
    quantities take them as hex strings, as the Ethereum API does.

Validation (``invalid_reason``) follows the specification exactly:
    ``jsonrpc`` must be the string ``"2.0"``; ``method`` a string; ``id``, when present,
    a string, a number or null (never a boolean, object or array); ``params``, when
    present, an array or an object (``"params": null`` is invalid). Extra members are
    ignored. A request without ``id`` is a notification and is never answered, except
    when it is not a valid Request object: then it is answered with -32600, as the
    specification's examples show. The -32600 answer carries the request's id when that
    id is itself valid, else null.

Encoding
    A reply is one ``orjson.dumps`` of a dict (measured faster than concatenating
    pre-encoded fragments with ``dumps(id)`` and ``dumps(result)``: one C call instead of
    two plus the joins). Answers that never vary (parse error, empty batch, ...) are
    pre-encoded bytes. A handler may return ``orjson.Fragment(b"...")`` to put already
    encoded JSON in a reply without re-encoding it; ``publish`` accepts it too.
"""
from __future__ import annotations

from typing import Any

import orjson

from .errors import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    MESSAGES,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RESPONSE_TOO_LARGE,
)

decode = orjson.loads
encode = orjson.dumps
DecodeError = orjson.JSONDecodeError
EncodeError = orjson.JSONEncodeError
Fragment = orjson.Fragment


class _NoId:
    """Type of ``NO_ID``: the ``id`` member is absent (the request is a notification)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_ID"


class _NoParams:
    """Type of ``NO_PARAMS``: the ``params`` member is absent."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_PARAMS"


NO_ID: Any = _NoId()
NO_PARAMS: Any = _NoParams()

#: ``type(request.get("id", NO_ID)) in ID_TYPES`` is the whole id check: bool is its own
#: type, so ``true`` is refused while 1 and 1.5 are accepted.
ID_TYPES = frozenset((str, int, float, type(None), _NoId))
#: Same for ``request.get("params", NO_PARAMS)``.
PARAMS_TYPES = frozenset((list, dict, _NoParams))

# --- answers that never vary, encoded once -------------------------------------------
PARSE_ERROR_REPLY = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}'
EMPTY_BATCH_REPLY = b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"empty batch"}}'
BATCH_TOO_LARGE_REPLY = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"batch too large"}}'
)
NOT_AN_OBJECT_REPLY = (
    b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"request must be an object"}}'
)

# Reasons for -32600, in the order they are checked.
REASON_VERSION = 'jsonrpc must be "2.0"'
REASON_METHOD = "method must be a string"
REASON_ID = "id must be a string, number or null"
REASON_PARAMS = "params must be an array or an object"


def invalid_reason(msg: dict[str, Any]) -> str | None:
    """Why the decoded object ``msg`` is not a valid Request object, or None if it is."""
    if msg.get("jsonrpc") != "2.0":
        return REASON_VERSION
    if type(msg.get("method")) is not str:
        return REASON_METHOD
    if type(msg.get("id", NO_ID)) not in ID_TYPES:
        return REASON_ID
    if type(msg.get("params", NO_PARAMS)) not in PARAMS_TYPES:
        return REASON_PARAMS
    return None


def reply_id(msg: Any) -> Any:
    """The id to answer ``msg`` with when it is invalid: its own when valid, else None."""
    if type(msg) is dict:
        rid = msg.get("id")
        if type(rid) in ID_TYPES:
            return rid
    return None


def invalid_request(msg: dict[str, Any], reason: str | None = None) -> bytes:
    """The -32600 answer to ``msg`` (always sent, even when ``msg`` has no id)."""
    if reason is None:
        reason = invalid_reason(msg) or MESSAGES[INVALID_REQUEST]
    return encode(
        {"jsonrpc": "2.0", "id": reply_id(msg), "error": {"code": INVALID_REQUEST, "message": reason}}
    )


def result(rid: Any, value: Any) -> bytes:
    """The success answer. Raises ``EncodeError`` (a TypeError) if ``value`` is not JSON."""
    return encode({"jsonrpc": "2.0", "id": rid, "result": value})


def error(rid: Any, code: int, message: str, data: Any = None) -> bytes:
    """An error answer; ``data`` is left out when None. If ``data`` cannot be encoded it
    is dropped (the code and message still reach the client)."""
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    try:
        return encode({"jsonrpc": "2.0", "id": rid, "error": err})
    except EncodeError:
        del err["data"]
        return encode({"jsonrpc": "2.0", "id": rid, "error": err})


def fixed_error(rid: Any, code: int) -> bytes:
    """An error answer with one of fastrpc's fixed codes and its fixed message."""
    return encode({"jsonrpc": "2.0", "id": rid, "error": {"code": code, "message": MESSAGES[code]}})


def method_not_found(rid: Any) -> bytes:
    return fixed_error(rid, METHOD_NOT_FOUND)


def internal_error(rid: Any) -> bytes:
    """The only answer an unexpected exception produces: no detail ever leaves the server."""
    return fixed_error(rid, INTERNAL_ERROR)


def response_too_large(rid: Any) -> bytes:
    return fixed_error(rid, RESPONSE_TOO_LARGE)


def batch(parts: list[bytes]) -> bytes:
    """Join encoded answers into one batch answer (``parts`` must not be empty)."""
    return b"[" + b",".join(parts) + b"]"


def notification(method: str, params: Any) -> bytes:
    """A server-to-client notification (no id)."""
    return encode({"jsonrpc": "2.0", "method": method, "params": params})


def subscription_result(method: str, sub_id: str, payload: Any) -> bytes:
    """``{"jsonrpc":"2.0","method":M,"params":{"subscription":ID,"result":payload}}``."""
    return encode(
        {"jsonrpc": "2.0", "method": method, "params": {"subscription": sub_id, "result": payload}}
    )


def subscription_error(method: str, sub_id: str, code: int) -> bytes:
    """The notification ending a subscription with a fixed error code."""
    return encode(
        {
            "jsonrpc": "2.0",
            "method": method,
            "params": {"subscription": sub_id, "error": {"code": code, "message": MESSAGES[code]}},
        }
    )


__all__ = [
    "BATCH_TOO_LARGE_REPLY",
    "EMPTY_BATCH_REPLY",
    "ID_TYPES",
    "NOT_AN_OBJECT_REPLY",
    "NO_ID",
    "NO_PARAMS",
    "PARAMS_TYPES",
    "PARSE_ERROR",
    "PARSE_ERROR_REPLY",
    "DecodeError",
    "EncodeError",
    "Fragment",
    "batch",
    "decode",
    "encode",
    "error",
    "fixed_error",
    "internal_error",
    "invalid_reason",
    "invalid_request",
    "method_not_found",
    "notification",
    "reply_id",
    "response_too_large",
    "result",
    "subscription_error",
    "subscription_result",
]
