"""Type stub for the compiled ``fastrpc._clientcall`` (see ``_clientcall.pyx``): the
client's hot call, request bytes, deadlines and the common reply."""
import asyncio
import contextvars
from typing import Any, Callable, Generator

#: ``fastrpc.client._OPEN`` as the compiled module sees it (a unit test checks).
STATE_OPEN: int
#: A call with timeout ``t`` fails with ``CallTimeout`` no earlier than ``t`` and no
#: later than ``t + min(SLACK_FRACTION * t, SLACK_MAX)`` seconds after it was sent
#: (plus however long the event loop is busy elsewhere).
SLACK_FRACTION: float
SLACK_MAX: float

def now() -> float:
    """The clock deadlines are kept in (CLOCK_MONOTONIC seconds)."""

def request_bytes(rid: int, method: Any, params: Any) -> bytes:
    """``orjson.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})``,
    byte for byte (``rid`` >= 0; a tuple of params encodes as an array; a short array
    of plain strings, ints, booleans and None is written without orjson)."""

def _scalar_json(data: bytes) -> tuple[bool, Any]:
    """The compiled reply path's own decoder of common results (tests): ``(True,
    value)`` when it decodes ``data`` (exactly as ``orjson.loads``), else ``(False,
    None)`` (orjson decides)."""

def norm_params(args: tuple[Any, ...], params: Any) -> Any:
    """The params member of ``call(method, *args, params=params)``: ``list(args)``, or
    ``params`` as a dict or list; ``TypeError`` for both or for another type."""

class Wakeups:
    """The calls of one event loop settled since its last turn: one loop callback
    runs their waiters (in settle order, each in its context), with the reactor's
    sends held meanwhile (``hold_sends``/``release_sends``)."""

    loop: asyncio.AbstractEventLoop
    def __init__(self, loop: asyncio.AbstractEventLoop, reactor: Any = None) -> None: ...
    def __call__(self) -> None:
        """The loop callback (scheduled by a settled call; not called by hand)."""

class Call:
    """A request waiting for its reply (one per id in ``Client._pending``).

    Its waiter is ``fut`` (an asyncio future: batches, ``_request``) or, for
    ``ClientCore.call``, the call itself (``own``): it then implements the part of the
    asyncio Future protocol a Task uses, and is what the call's task awaits."""

    fut: asyncio.Future[Any] | None
    method: Any
    group: Any
    hook: Callable[[Any], Any] | None
    rid: int
    timeout: float
    deadline: float
    own: bool
    _asyncio_future_blocking: bool
    def __init__(self, fut: asyncio.Future[Any] | None, method: Any, group: Any = None,
                 hook: Callable[[Any], Any] | None = None) -> None: ...
    def settle(self, value: Any = None, exc: BaseException | None = None) -> None:
        """Resolve the waiter (its future, or the call itself) with ``value`` or ``exc``
        (nothing when resolved or cancelled already, or when nobody waits)."""
    def __await__(self) -> Generator[Any, None, Any]:
        """(own calls) Wait for the reply: its result, or its error raised."""
    def __iter__(self) -> Generator[Any, None, Any]: ...
    def __next__(self) -> Any: ...
    def get_loop(self) -> asyncio.AbstractEventLoop: ...
    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def result(self) -> Any:
        """The result; raises the error, ``CancelledError``, or ``InvalidStateError``
        while pending."""
    def exception(self) -> BaseException | None: ...
    def cancel(self, msg: Any = None) -> bool:
        """Stop waiting (the awaiting task was cancelled); False once done."""
    def add_done_callback(self, fn: Callable[["Call"], Any], *,
                          context: contextvars.Context | None = None) -> None:
        """Run ``fn(call)`` once it is done, on a later loop turn, in ``context``."""
    def remove_done_callback(self, fn: Callable[["Call"], Any]) -> int: ...

class ClientCore:
    """Base of ``fastrpc.client.Client``: the fields a call touches, and ``call``."""

    _send: Callable[..., bool] | None
    _cid: int
    _state: int
    _ids: int
    _pending: dict[int, Call]
    counters: dict[str, int]
    _loop: asyncio.AbstractEventLoop | None
    _new_future: Callable[[], asyncio.Future[Any]] | None
    _default_timeout: float
    _wakeups: Wakeups | None
    _calls: int
    _replies: int
    counters: dict[str, int]
    async def call(self, method: str, *args: Any, params: Any = None, timeout: float | None = None) -> Any:
        """Call ``method`` and return its result (see ``fastrpc.client.Client``)."""
    def _request(self, method: str, params: Any, timeout: float | None,
                 hook: Callable[[Any], Any] | None = None, wait: bool = True
                 ) -> tuple[int, asyncio.Future[Any] | None]:
        """Send one call; its id and the future of its result (None with ``wait=False``)."""
    def _check_deadlines(self) -> None:
        """Expire the calls past their deadline; re-arm the check for the next one."""
    def _cancel_deadlines(self) -> None:
        """Disarm the deadline check."""
    def _fast_reply(self, data: bytes) -> bool:
        """The compiled reply path alone (tests): True when it settled ``data``'s call."""

class Router:
    """The reactor's ``on_text``/``on_binary`` callback over a hub's ``{cid: Client}``:
    ``Router(clients).deliver``."""

    def __init__(self, clients: dict[int, Any]) -> None: ...
    def deliver(self, cid: int, payload: bytes) -> None: ...
