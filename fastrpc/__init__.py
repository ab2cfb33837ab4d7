"""fastrpc: JSON-RPC 2.0 over WebSocket with the smallest memory per connection."""
from __future__ import annotations

# No pure-Python fallback: if the compiled core is missing, importing fastrpc fails
# loudly here instead of running slowly or without its limits.
from . import _core  # noqa: F401
from .errors import (
    FastRPCError,
    InvalidBlock,
    PerIPLimitExceeded,
    PoolExhausted,
    ProtocolError,
    RPCError,
    TableFull,
)

__version__ = "0.1.0"

__all__ = [
    "FastRPCError",
    "InvalidBlock",
    "PerIPLimitExceeded",
    "PoolExhausted",
    "ProtocolError",
    "RPCError",
    "TableFull",
    "__version__",
]
