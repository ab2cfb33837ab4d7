"""The services and limits every transcript runs against, and the transcript format.

Reusable by any runner: ``tests/unit/test_transcripts.py`` plays the transcripts against
a Dispatcher and a FakeTransport (``make_dispatcher``);
``tests/integration_rpc/test_transcripts_ws.py`` plays the same files over WebSocket
against a real server (``make_server``: the same services on a ``Server``'s registry).
The format is described in ``tests/transcripts/README.md``; this module is its only
parser.
"""
from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import orjson

from fastrpc.dispatch import Dispatcher
from fastrpc.errors import RPCError
from fastrpc.limits import KiB, Limits
from fastrpc.server import Server
from fastrpc.service import Context, Registry

TRANSCRIPT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "transcripts")

#: Tiny limits so every limit is reachable from a few lines of text.
LIMITS = Limits(
    max_batch_length=5,
    max_batch_response_size=1000,
    request_timeout=0.2,
    max_subscriptions=2,
    max_subscriber_queue=64 * KiB,
)

#: Namespaces served; ``hidden`` is registered but not exposed.
EXPOSED = ("test", "slow", "one", "flaky", "blocking", "sub")


# --- the test services -------------------------------------------------------------------


class BasicService:
    """namespace ``test``: synchronous handlers."""

    def __init__(self) -> None:
        self._ticks = 0

    def echo(self, value: Any) -> Any:
        return value

    def subtract(self, minuend: int, subtrahend: int) -> int:
        return minuend - subtrahend

    def sum(self, *numbers: Any) -> Any:
        return sum(numbers)

    def greet(self, name: str, greeting: str = "hello") -> str:
        return f"{greeting}, {name}"

    def optional(self, x: Optional[int] = None) -> Optional[int]:
        return x

    def types(self, flag: bool, ratio: float, items: list, obj: dict) -> str:
        return "ok"

    def fail(self) -> None:
        raise ValueError("secret detail that must never reach the client")

    def revert(self) -> None:
        raise RPCError(3, "execution reverted", {"reason": "0x08c379a0"})

    def badResult(self) -> Any:
        return {1, 2}  # a set is not JSON

    def big(self, n: int) -> str:
        return "x" * n

    def tick(self) -> int:
        self._ticks += 1
        return self._ticks

    def ticks(self) -> int:
        return self._ticks

    def hasContext(self, ctx: Context) -> bool:
        return isinstance(ctx, Context) and ctx.cid is not None and ctx.peer is not None

    def fragment(self) -> Any:
        return orjson.Fragment(b'{"pre":"encoded"}')


class SlowService:
    """namespace ``slow``: async handlers (timeout LIMITS.request_timeout)."""

    async def echo(self, value: Any) -> Any:
        await asyncio.sleep(0)
        return value

    async def sleep(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    async def hang(self) -> None:
        await asyncio.sleep(3600)

    async def fail(self) -> None:
        await asyncio.sleep(0)
        raise KeyError("hidden")


class OneService:
    """namespace ``one``: one call at a time."""

    async def hang(self) -> None:
        await asyncio.sleep(3600)


class FlakyService:
    """namespace ``flaky``: always fails; its breaker opens after 3 failures."""

    def fail(self) -> None:
        raise ConnectionError("backend down")

    def ok(self) -> str:
        return "ok"


class BlockingService:
    """namespace ``blocking``: threaded, may block."""

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def make_registry(holder: dict[str, Dispatcher]) -> Registry:
    """A fresh registry (breakers and counters start clean), with ``rpc_modules`` as a
    JSON-RPC ``Server`` has it. ``holder["d"]`` must be set to the dispatcher before
    ``sub_emit`` is called."""
    reg = Registry(namespaces=EXPOSED)
    reg.add_rpc_modules()
    return register_services(reg, holder)


def register_services(reg: Registry, holder: dict[str, Any]) -> Registry:
    """Register every transcript service and topic on ``reg`` (a fresh Registry, or a
    JSON-RPC ``Server``'s own ``server.registry``); returns ``reg``. ``holder["d"]``
    must hold the dispatcher serving ``reg`` before ``sub_emit`` is called."""
    reg.register("test", BasicService())
    reg.register("slow", SlowService())
    reg.register("one", OneService(), max_concurrency=1)
    reg.register("flaky", FlakyService(), failure_threshold=3, cooldown=3600)
    reg.register("blocking", BlockingService(), threaded=True, max_concurrency=2)
    reg.add("hidden_secret", lambda: "must not be reachable")
    reg.topic("sub", "ticks")

    def pair_key(base: str) -> str:
        return base.upper()

    reg.topic("sub", "pairs", params=pair_key)

    @reg.method("sub_emit")
    def emit(topic: str, payload: Any, key: Optional[str] = None) -> int:
        return holder["d"].publish(f"sub.{topic}", payload, key)

    return reg


def make_dispatcher(transport: Any, *, loop: asyncio.AbstractEventLoop | None = None) -> Dispatcher:
    """The Dispatcher every transcript runs against (fresh state each call)."""
    holder: dict[str, Dispatcher] = {}
    d = Dispatcher(transport, LIMITS, loop=loop, registry=make_registry(holder))
    holder["d"] = d
    return d


def make_server(limits: Limits | None = None, **server_kw: Any) -> Server:
    """A JSON-RPC ``Server`` (not started) serving the same services, namespaces and
    tiny limits as ``make_dispatcher``, for runners that play transcripts over real
    sockets. ``limits`` replaces ``LIMITS`` (keep its JSON-RPC limits)."""
    server = Server(limits=limits or LIMITS, namespaces=list(EXPOSED), **server_kw)
    register_services(server.registry, {"d": server.dispatcher})
    return server


# --- the transcript format ---------------------------------------------------------------


class TranscriptError(ValueError):
    """A transcript file is malformed."""


@dataclass
class Exchange:
    request: str  #: the raw text after "-->", sent as one message exactly as written
    replies: list[Any] = field(default_factory=list)  #: decoded "<--" lines (may hold "*" and "$var")
    line: int = 0  #: line number of the "-->" line


def parse_transcript(text: str, name: str = "<transcript>") -> list[Exchange]:
    """Parse transcript text into exchanges: one request and the replies it expects."""
    exchanges: list[Exchange] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("//"):
            continue
        if line.startswith("-->"):
            exchanges.append(Exchange(request=line[3:].strip(), line=number))
        elif line.startswith("<--"):
            if not exchanges:
                raise TranscriptError(f"{name}:{number}: '<--' before any '-->'")
            try:
                exchanges[-1].replies.append(orjson.loads(line[3:].strip()))
            except orjson.JSONDecodeError as exc:
                raise TranscriptError(f"{name}:{number}: expected reply is not JSON: {exc}") from None
        else:
            raise TranscriptError(f"{name}:{number}: a line must start with '-->', '<--' or '//'")
    if not exchanges:
        raise TranscriptError(f"{name}: no '-->' line")
    return exchanges


def load_transcript(path: str) -> list[Exchange]:
    with open(path, encoding="utf-8") as f:
        return parse_transcript(f.read(), os.path.basename(path))


def transcript_files(directory: str = TRANSCRIPT_DIR) -> list[str]:
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".txt"))


_VAR = re.compile(r'"\$([A-Za-z_][A-Za-z0-9_]*)"')


def substitute(request: str, bindings: dict[str, Any]) -> bytes:
    """The bytes to send for a request line: each ``"$name"`` replaced by its bound value."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in bindings:
            raise TranscriptError(f"${name} used before a reply bound it")
        return orjson.dumps(bindings[name]).decode()

    return _VAR.sub(value, request).encode()


def match(expected: Any, actual: Any, bindings: dict[str, Any]) -> bool:
    """JSON equality where ``"*"`` matches any value and ``"$name"`` binds on first use
    and must be equal after. Updates ``bindings`` only on success."""
    trial = dict(bindings)
    if _match(expected, actual, trial):
        bindings.update(trial)
        return True
    return False


def _match(expected: Any, actual: Any, bindings: dict[str, Any]) -> bool:
    if type(expected) is str:
        if expected == "*":
            return True
        if len(expected) > 1 and expected[0] == "$" and _VAR.fullmatch(f'"{expected}"'):
            name = expected[1:]
            if name in bindings:
                return bool(bindings[name] == actual)
            bindings[name] = actual
            return True
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(_match(v, actual[k], bindings) for k, v in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(_match(e, a, bindings) for e, a in zip(expected, actual))
        )
    if type(expected) is bool or type(actual) is bool:
        return type(expected) is type(actual) and expected == actual
    return bool(expected == actual)


def match_replies(expected: list[Any], actual: list[bytes], bindings: dict[str, Any]) -> str | None:
    """Match the replies one request produced against its ``<--`` lines, in any order
    (a server may interleave a notification and a reply). None if they match, else a
    description of the difference. Top-level batch answers are matched in order."""
    try:
        decoded = [orjson.loads(a) for a in actual]
    except orjson.JSONDecodeError as exc:
        return f"a reply is not JSON: {exc}: {actual!r}"
    if len(decoded) != len(expected):
        return f"expected {len(expected)} replies, got {len(decoded)}: {decoded!r}"

    def assign(i: int, free: list[int], b: dict[str, Any]) -> dict[str, Any] | None:
        if i == len(expected):
            return b
        for j in free:
            trial = dict(b)
            if match(expected[i], decoded[j], trial):
                done = assign(i + 1, [k for k in free if k != j], trial)
                if done is not None:
                    return done
        return None

    result = assign(0, list(range(len(decoded))), bindings)
    if result is None:
        return f"replies do not match\n  expected: {expected!r}\n  got:      {decoded!r}"
    bindings.update(result)
    return None
