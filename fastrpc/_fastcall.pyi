"""Type stub for the compiled ``fastrpc._fastcall`` (see ``_fastcall.pyx``)."""
from typing import Any, Callable

#: ``fastrpc.service.SYNC`` as the compiled module sees it.
SYNC: int

#: Outcome names of the request counters, in the order of their indices.
OUTCOMES: tuple[str, str, str, str, str]
#: A result.
SUCCESS: int
#: The handler raised RPCError: an application error answer (-32602 included).
ERROR: int
#: An unexpected exception (-32603), or a forwarded call's upstream lost (-32007).
FAILURE: int
#: The namespace's timeout (-32001), or a forwarded call's pool timeout.
TIMEOUT: int
#: Breaker open, namespace busy or server busy: the handler never ran.
REFUSED: int
#: Returned by ``MethodCore.raised`` for a "method not found" answer: not counted
#: per method (the dispatcher counts it).
UNKNOWN: int
#: Upper bounds (seconds) of the call duration histogram; one more bucket counts
#: longer calls.
DURATION_BUCKETS: tuple[float, ...]
#: Upper bounds (entries) of the batch length histogram; one more bucket counts
#: longer batches.
BATCH_BUCKETS: tuple[int, ...]

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

    def done(self, outcome: int, start_ns: int) -> None:
        """Count a call that ran and ended with ``outcome`` (SUCCESS, ERROR, FAILURE or
        TIMEOUT) now; it started at ``start_ns`` (``time.monotonic_ns()``). ValueError
        for another outcome."""
    def refuse(self) -> None:
        """Count a call answered without running (breaker open, busy)."""
    def raised(self, e: BaseException, start_ns: int) -> int:
        """Count a call that ended by raising the RPCError ``e`` now, as its class's
        ``outcome``; returns the outcome's index (UNKNOWN: not counted here)."""
    def stats(self) -> dict[str, Any]:
        """``{"success", "error", "failure", "timeout", "refused": int, "buckets":
        list[int] (len(DURATION_BUCKETS) + 1, non-cumulative), "sum": float seconds}``."""

class FastCall:
    """The compiled ``Dispatcher.on_message``."""

    #: Messages that were not JSON (-32700), answered here.
    parse_errors: int
    #: JSON neither an object nor an array (-32600), answered here.
    invalid_requests: int
    #: Calls whose handler raised an RPCError with outcome "unknown" (-32601).
    unknown_methods: int

    def counters(self) -> dict[str, Any]:
        """What this entry point counted itself: ``parse_errors``, ``invalid_requests``,
        ``unknown_methods``, ``batches``, ``batch_sum``, ``batch_buckets``."""
    def __init__(self, dispatcher: Any) -> None: ...
    def on_message(self, cid: int, data: bytes) -> bytes | None: ...
    def call_entry(self, cid: int, msg: dict[str, Any], b: Any, idx: int) -> Any:
        """``Dispatcher._call`` for one decoded request object (a batch entry)."""
