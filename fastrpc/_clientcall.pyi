"""Type stub for the compiled ``fastrpc._clientcall`` (see ``_clientcall.pyx``): the
client's hot call, request bytes, deadlines and the common reply."""
import asyncio
from typing import Any, Callable

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
    byte for byte (``rid`` >= 0; a tuple of params encodes as an array)."""

def norm_params(args: tuple[Any, ...], params: Any) -> Any:
    """The params member of ``call(method, *args, params=params)``: ``list(args)``, or
    ``params`` as a dict or list; ``TypeError`` for both or for another type."""

class Call:
    """A request waiting for its reply (one per id in ``Client._pending``)."""

    fut: asyncio.Future[Any] | None
    method: Any
    group: Any
    hook: Callable[[Any], Any] | None
    rid: int
    timeout: float
    deadline: float
    def __init__(self, fut: asyncio.Future[Any] | None, method: Any, group: Any = None,
                 hook: Callable[[Any], Any] | None = None) -> None: ...
    def settle(self, value: Any = None, exc: BaseException | None = None) -> None:
        """Resolve the future (if any, and not done yet) with ``value`` or ``exc``."""

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
    """The reactor's ``on_text``/``on_binary`` callback over a hub's ``{cid: Client}``."""

    def __init__(self, clients: dict[int, Any]) -> None: ...
    def __call__(self, cid: int, payload: bytes) -> None: ...
