"""fastrpc: JSON-RPC 2.0 over WebSocket with the smallest memory per connection."""
from __future__ import annotations

# No pure-Python fallback: if the compiled core is missing, importing fastrpc fails
# loudly here instead of running slowly or without its limits.
from . import _core  # noqa: F401
from .client import Batch, Client, ClientOptions, Subscription, connect
from .dispatch import Dispatcher, Transport
from .errors import (
    CallTimeout,
    ConnectError,
    ConnectionLost,
    FastRPCError,
    InvalidBlock,
    InvalidParams,
    InvalidReply,
    NoHealthyEndpoint,
    PerIPLimitExceeded,
    PoolExhausted,
    ProtocolError,
    RPCError,
    SubscriptionOverflow,
    TableFull,
)
from .limits import Limits
from .pool import ClientPool, Gap, PoolSubscription
from .server import MessageHandler, Server
from .service import Context, Registry, Topic, camel_case

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "CallTimeout",
    "Client",
    "ClientOptions",
    "ClientPool",
    "ConnectError",
    "ConnectionLost",
    "Context",
    "Dispatcher",
    "FastRPCError",
    "Gap",
    "InvalidBlock",
    "InvalidParams",
    "InvalidReply",
    "Limits",
    "MessageHandler",
    "NoHealthyEndpoint",
    "PerIPLimitExceeded",
    "PoolExhausted",
    "PoolSubscription",
    "ProtocolError",
    "RPCError",
    "Registry",
    "Server",
    "Subscription",
    "SubscriptionOverflow",
    "TableFull",
    "Topic",
    "Transport",
    "__version__",
    "camel_case",
    "connect",
]
