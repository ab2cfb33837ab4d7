"""``fastrpc.errors``: a named constant for every WebSocket close code of the IANA
registry (RFC 6455 §7.4.1 and §11.7), unused ones included: they are the documented
public set a user compares ``on_close`` codes against."""
from __future__ import annotations

from fastrpc import errors

#: IANA "WebSocket Close Code Number Registry", 1000-1015 (1004 is reserved, unnamed).
REGISTRY = {
    1000: "CLOSE_NORMAL",
    1001: "CLOSE_GOING_AWAY",
    1002: "CLOSE_PROTOCOL_ERROR",
    1003: "CLOSE_UNSUPPORTED_DATA",
    1005: "CLOSE_NO_STATUS",
    1006: "CLOSE_ABNORMAL",
    1007: "CLOSE_INVALID_PAYLOAD",
    1008: "CLOSE_POLICY_VIOLATION",
    1009: "CLOSE_MESSAGE_TOO_BIG",
    1010: "CLOSE_MANDATORY_EXTENSION",
    1011: "CLOSE_INTERNAL_ERROR",
    1012: "CLOSE_SERVICE_RESTART",
    1013: "CLOSE_TRY_AGAIN_LATER",
    1014: "CLOSE_BAD_GATEWAY",
    1015: "CLOSE_TLS_HANDSHAKE",
}


def test_every_registered_close_code_is_named():
    named = {v: k for k, v in vars(errors).items() if k.startswith("CLOSE_")}
    assert named == REGISTRY
