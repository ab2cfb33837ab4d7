"""Every exception fastrpc raises and every wire code it sends, as named constants.

One place maps failures to codes: the frame parser reports a WebSocket close code
(``ProtocolError.code``), the JSON-RPC layer a JSON-RPC error code (``RPCError.code``).
Anything not listed here becomes ``CLOSE_INTERNAL_ERROR`` / ``INTERNAL_ERROR`` with a
generic message; details go to the log only.
"""
from __future__ import annotations

from typing import Any

# --- WebSocket close codes (RFC 6455 §7.4.1, IANA registry) ---------------------------
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # server stopping, or connection idle past idle_timeout
CLOSE_PROTOCOL_ERROR = 1002  # malformed frame, bad opcode, RSV bit, unmasked client frame
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_NO_STATUS = 1005  # never sent: "close frame had no code"
CLOSE_ABNORMAL = 1006  # never sent: "connection dropped without a close frame"
CLOSE_INVALID_PAYLOAD = 1007  # text message or close reason that is not UTF-8
CLOSE_POLICY_VIOLATION = 1008  # subscriber over its queue cap, pong timeout
CLOSE_MESSAGE_TOO_BIG = 1009  # message over max_message_size, or too many fragments
CLOSE_MANDATORY_EXTENSION = 1010
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013  # buffer pool exhausted (memory ceiling reached)


class FastRPCError(Exception):
    """Base class of every fastrpc exception."""


class ProtocolError(FastRPCError):
    """The peer broke RFC 6455 (or a configured limit); ``code`` is the close code to send.

    ``reason`` is short, fixed text that is safe to put in the close frame.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code} {self.reason}"


class PoolExhausted(FastRPCError, MemoryError):
    """The buffer pool is at its byte ceiling: the caller refuses or closes (1013/1009)."""


class InvalidBlock(FastRPCError, ValueError):
    """A block handle released twice, or one the pool never handed out."""


class TableFull(FastRPCError):
    """The connection table has no free slot (``max_connections`` reached)."""


class PerIPLimitExceeded(FastRPCError):
    """The peer address already holds ``max_connections_per_ip`` connections."""


# --- JSON-RPC 2.0 error codes ----------------------------------------------------------
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class RPCError(FastRPCError):
    """An application error a handler raises; sent to the client as the JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.data = data
