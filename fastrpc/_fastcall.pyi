"""Type stub for the compiled ``fastrpc._fastcall`` (see ``_fastcall.pyx``)."""
from typing import Any, Callable

#: ``fastrpc.service.SYNC`` as the compiled module sees it.
SYNC: int

def result_reply(rid: Any, value: Any) -> bytes:
    """``orjson.dumps({"jsonrpc": "2.0", "id": rid, "result": value})``, byte for byte."""

class BreakerCore:
    """Base of ``fastrpc.isolation.Bulkhead``: the breaker fields the fast path tests."""

    state: int
    failures: int

class MethodCore:
    """Base of ``fastrpc.service.Method``: the fields the fast path reads."""

    fn: Callable[..., Any]
    kind: int
    lo: int
    hi: int
    checks: tuple[tuple[int, frozenset[type]], ...]
    bulkhead: Any
    invoke: Callable[[Any, Any, int], Any]

class FastCall:
    """The compiled ``Dispatcher.on_message``."""

    def __init__(self, dispatcher: Any) -> None: ...
    def on_message(self, cid: int, data: bytes) -> bytes | None: ...
    def call_entry(self, cid: int, msg: dict[str, Any], b: Any, idx: int) -> Any:
        """``Dispatcher._call`` for one decoded request object (a batch entry)."""
