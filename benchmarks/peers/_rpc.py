"""The JSON-RPC 2.0 part every peer server shares, so only the WebSocket library differs.

Each ``rpc_<library>.py`` next to this file is the transport glue, written the way that
library's documentation recommends for speed; all of them call :func:`handle` on every
whole message and send back what it returns. Keeping one dispatcher means a difference
in server CPU per request between the peers is the library's, not the dispatcher's.

The dispatcher is a dict of synchronous methods and orjson, with the per-request path
kept short: no signature inspection, no per-call allocation beyond the reply itself.

* ``echo(x) -> x``, ``add(a, b) -> a + b``, ``eth_blockNumber() -> "0x10d4f"``.
* Positional (list) or named (object) params; a wrong argument count or name is
  -32602. Unknown method -32601, malformed JSON -32700, a message that is not a
  request object -32600; an exception inside a method -32603 with a generic message.
* Notifications (no ``id``) get no reply. Batches are answered with an array (an empty
  batch is -32600; a batch of only notifications gets no reply).

The command line and lifetime are ``_cli.run``'s, shared with the echo peers.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

import orjson

import _cli

__all__ = ["METHODS", "handle", "run"]


def echo(x: Any) -> Any:
    return x


def add(a: Any, b: Any) -> Any:
    return a + b


def eth_blockNumber() -> str:
    return "0x10d4f"


METHODS: dict[str, Callable[..., Any]] = {
    "echo": echo,
    "add": add,
    "eth_blockNumber": eth_blockNumber,
}

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

_MESSAGES = {
    PARSE_ERROR: "Parse error",
    INVALID_REQUEST: "Invalid Request",
    METHOD_NOT_FOUND: "Method not found",
    INVALID_PARAMS: "Invalid params",
    INTERNAL_ERROR: "Internal error",
}
_NO_ID = object()  # a notification: the "id" member is absent
_ID_TYPES = (str, int, float, type(None))

_loads = orjson.loads
_dumps = orjson.dumps


def _error(rid: Any, code: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "error": {"code": code, "message": _MESSAGES[code]}, "id": rid}


def _call(req: Any) -> dict[str, Any] | None:
    """Answer one request object; ``None`` for a notification."""
    if type(req) is not dict or req.get("jsonrpc") != "2.0":
        return _error(None, INVALID_REQUEST)
    rid = req.get("id", _NO_ID)
    method = req.get("method")
    if (rid is not _NO_ID and not isinstance(rid, _ID_TYPES)) or type(method) is not str:
        return _error(None if rid is _NO_ID or not isinstance(rid, _ID_TYPES) else rid,
                      INVALID_REQUEST)
    fn = METHODS.get(method)
    if fn is None:
        return None if rid is _NO_ID else _error(rid, METHOD_NOT_FOUND)
    params = req.get("params", ())
    try:
        if type(params) is list or type(params) is tuple:
            result = fn(*params)
        elif type(params) is dict:
            result = fn(**params)
        else:
            return None if rid is _NO_ID else _error(rid, INVALID_REQUEST)
    except TypeError:
        # A wrong argument count or name. (A TypeError raised *inside* a method is
        # reported the same way: acceptable for these three methods.)
        return None if rid is _NO_ID else _error(rid, INVALID_PARAMS)
    except Exception:
        return None if rid is _NO_ID else _error(rid, INTERNAL_ERROR)
    if rid is _NO_ID:
        return None
    return {"jsonrpc": "2.0", "result": result, "id": rid}


def handle(message: bytes | bytearray | memoryview | str) -> bytes | None:
    """Answer one WebSocket message: the reply to send as a text message, or ``None``."""
    try:
        req = _loads(message)
    except orjson.JSONDecodeError:
        return _dumps(_error(None, PARSE_ERROR))
    if type(req) is list:
        if not req:
            return _dumps(_error(None, INVALID_REQUEST))
        replies = [r for r in map(_call, req) if r is not None]
        return _dumps(replies) if replies else None
    reply = _call(req)
    return None if reply is None else _dumps(reply)


def run(serve: Callable[[str, int], Awaitable[Callable[[], Awaitable[None]]]],
        description: str) -> None:
    """The peers' common command line (``_cli.run``) around ``serve(host, port)``."""
    _cli.run(lambda args: serve(args.host, args.port), description, port=9001)
