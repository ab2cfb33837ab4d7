"""fastrpc: JSON-RPC 2.0 over WebSocket with the smallest memory per connection."""
from __future__ import annotations

# No pure-Python fallback: if the compiled core is missing, importing fastrpc fails
# loudly here instead of running slowly or without its limits.
from . import _core  # noqa: F401
from .dispatch import Dispatcher, Transport
from .errors import (
    FastRPCError,
    InvalidBlock,
    InvalidParams,
    PerIPLimitExceeded,
    PoolExhausted,
    ProtocolError,
    RPCError,
    TableFull,
)
from .limits import Limits
from .server import MessageHandler, Server
from .service import Context, Registry, Topic, camel_case

__version__ = "0.1.0"

__all__ = [
    "Context",
    "Dispatcher",
    "FastRPCError",
    "InvalidBlock",
    "InvalidParams",
    "Limits",
    "MessageHandler",
    "PerIPLimitExceeded",
    "PoolExhausted",
    "ProtocolError",
    "RPCError",
    "Registry",
    "Server",
    "TableFull",
    "Topic",
    "Transport",
    "__version__",
    "camel_case",
]
