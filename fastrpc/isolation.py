"""Per-namespace bulkheads: one failing, hanging or flooded service cannot take the others down.

Every namespace (``eth``, ``debug``, ...) has one ``Bulkhead``, shared by all its methods
and by every Dispatcher serving the registry. It enforces, in this order:

1. **Circuit breaker.** After ``failure_threshold`` *consecutive* failures the breaker
   opens and every call to the namespace is answered at once with -32002 "service
   unavailable" (the handler is not run) for ``cooldown`` seconds. Then it is
   half-open: ``half_open_probes`` calls are let through as probes while the others
   still fail fast. A probe that succeeds closes the breaker; one that fails opens it
   for another cool-down.
   A *failure* is a call that ended in -32603 (the handler raised something other than
   ``RPCError``, or returned something that is not JSON) or in -32001 (timeout). Any
   other outcome, including an ``RPCError`` the handler raised on purpose, shows the
   service is answering and counts as a success.
2. **Concurrency limit.** At most ``max_concurrency`` async or threaded calls of the
   namespace run at once; one more is answered at once with -32003 "service busy"
   (nothing queues). Synchronous handlers on the loop run to completion before the
   next message is read, so they never hold a slot and are never refused as busy.
3. **Timeout.** An async or threaded call running longer than ``timeout`` seconds is
   answered with -32001 "request timed out"; an async handler is cancelled. A thread
   cannot be interrupted: it keeps its slot until it really returns, so a namespace
   whose handlers hang fills its own bulkhead and then answers -32003, while the others
   are untouched. Synchronous handlers on the loop cannot be timed out at all: mark a
   service whose handlers may block ``threaded=True``.

``threaded=True`` runs the namespace's *synchronous* handlers in the namespace's own
thread pool of ``max_concurrency`` threads (default ``DEFAULT_THREADS``), created on
first use, so a blocking handler neither freezes the loop nor takes threads from
another namespace. Async handlers of a threaded namespace still run on the loop.

All state changes happen on the event loop thread (threads hand their completion back
with ``call_soon_threadsafe``), so no lock is needed. The closed state costs the hot path
one attribute test (``bulkhead.state``).
"""
from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ._fastcall import BreakerCore
from .errors import SERVICE_BUSY, SERVICE_UNAVAILABLE

# Breaker states. CLOSED must stay 0: the hot path tests ``if bulkhead.state:``.
CLOSED = 0
OPEN = 1
HALF_OPEN = 2
STATE_NAMES = {CLOSED: "closed", OPEN: "open", HALF_OPEN: "half-open"}

#: Consecutive failures that open the breaker.
DEFAULT_FAILURE_THRESHOLD = 5
#: Seconds the breaker stays open before letting probes through.
DEFAULT_COOLDOWN = 10.0
#: Calls let through while half-open.
DEFAULT_HALF_OPEN_PROBES = 1
#: Threads of a threaded namespace when max_concurrency is not given (the
#: ThreadPoolExecutor default).
DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)


class _Default:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFAULT"


#: ``timeout=DEFAULT`` means "use Limits.request_timeout"; ``timeout=None`` means none.
DEFAULT: Any = _Default()


class Bulkhead(BreakerCore):
    """Isolation state of one namespace. See the module docstring for the rules.

    ``state`` and ``failures`` are C ints of the compiled base
    (``fastrpc._fastcall.BreakerCore``), which the dispatcher's fast path tests."""

    __slots__ = (
        "name",
        "max_concurrency",
        "timeout",
        "threaded",
        "failure_threshold",
        "cooldown",
        "half_open_probes",
        "clock",
        "opened_at",
        "active",
        "probes",
        "busy_count",
        "unavailable_count",
        "timeout_count",
        "failure_count",
        "_executor",
    )

    def __init__(
        self,
        name: str,
        *,
        max_concurrency: int | None = None,
        timeout: float | None | _Default = DEFAULT,
        threaded: bool = False,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        cooldown: float = DEFAULT_COOLDOWN,
        half_open_probes: int = DEFAULT_HALF_OPEN_PROBES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        #: Concurrent async/threaded calls; None: unlimited (threaded: DEFAULT_THREADS).
        self._executor: ThreadPoolExecutor | None = None  #: created on first threaded call
        self.max_concurrency: int | None = None
        #: Seconds per call; DEFAULT: Limits.request_timeout; None: no timeout.
        self.timeout: float | None | _Default = DEFAULT
        #: Run synchronous handlers in this namespace's thread pool.
        self.threaded = False
        #: Consecutive failures that open the breaker (>= 1).
        self.failure_threshold = DEFAULT_FAILURE_THRESHOLD
        #: Seconds the breaker stays open.
        self.cooldown = DEFAULT_COOLDOWN
        #: Probes let through while half-open (>= 1).
        self.half_open_probes = DEFAULT_HALF_OPEN_PROBES
        #: Monotonic clock in seconds (tests inject a fake one).
        self.clock = clock
        self.state = CLOSED  #: CLOSED, OPEN or HALF_OPEN
        self.failures = 0  #: consecutive failures counted while closed
        self.opened_at = 0.0  #: clock() when the breaker last opened
        self.active = 0  #: async/threaded calls holding a slot (threads until they return)
        self.probes = 0  #: probes let through in this half-open period
        # Monotonic counters, for metrics.
        self.busy_count = 0
        self.unavailable_count = 0
        self.timeout_count = 0
        self.failure_count = 0
        self.configure(
            max_concurrency=max_concurrency,
            timeout=timeout,
            threaded=threaded,
            failure_threshold=failure_threshold,
            cooldown=cooldown,
            half_open_probes=half_open_probes,
        )

    def configure(
        self,
        *,
        max_concurrency: int | None | _Default = DEFAULT,
        timeout: float | None | _Default = DEFAULT,
        threaded: bool | None = None,
        failure_threshold: int | None = None,
        cooldown: float | None = None,
        half_open_probes: int | None = None,
    ) -> None:
        """Change settings; an argument left out keeps its value. (``timeout=DEFAULT``
        here means "unchanged": go back to Limits.request_timeout with ``reset_timeout``.)"""
        if max_concurrency is not DEFAULT:
            if max_concurrency is not None and max_concurrency < 1:
                raise ValueError("max_concurrency must be None or >= 1")
            if max_concurrency != self.max_concurrency and self._executor is not None:
                self.shutdown()  # the next threaded call makes a pool of the new size
            self.max_concurrency = max_concurrency  # type: ignore[assignment]
        if timeout is not DEFAULT:
            if timeout is not None and not timeout > 0:
                raise ValueError("timeout must be None or > 0")
            self.timeout = timeout
        if threaded is not None:
            self.threaded = bool(threaded)
        if failure_threshold is not None:
            if failure_threshold < 1:
                raise ValueError("failure_threshold must be >= 1")
            self.failure_threshold = failure_threshold
        if cooldown is not None:
            if cooldown < 0:
                raise ValueError("cooldown must be >= 0")
            self.cooldown = cooldown
        if half_open_probes is not None:
            if half_open_probes < 1:
                raise ValueError("half_open_probes must be >= 1")
            self.half_open_probes = half_open_probes

    def reset_timeout(self) -> None:
        """Go back to Limits.request_timeout."""
        self.timeout = DEFAULT

    @property
    def limit(self) -> int | None:
        """The effective concurrency limit (threaded namespaces always have one)."""
        if self.max_concurrency is None and self.threaded:
            return DEFAULT_THREADS
        return self.max_concurrency

    # --- the breaker ------------------------------------------------------------------

    def check(self) -> int:
        """Breaker test for one call: 0 to run it, else the error code to answer with.
        Only called when ``state`` is not CLOSED (the caller tests that first)."""
        if self.state == OPEN:
            if self.clock() - self.opened_at < self.cooldown:
                self.unavailable_count += 1
                return SERVICE_UNAVAILABLE
            self.state = HALF_OPEN
            self.probes = 0
        # HALF_OPEN
        if self.probes < self.half_open_probes:
            self.probes += 1
            return 0
        self.unavailable_count += 1
        return SERVICE_UNAVAILABLE

    def acquire(self) -> int:
        """Breaker and concurrency test for an async or threaded call: 0 means it may
        run and now holds a slot (give it back with ``release``); else the error code."""
        if self.state:
            code = self.check()
            if code:
                return code
        limit = self.limit
        if limit is not None and self.active >= limit:
            if self.state == HALF_OPEN:
                self.probes -= 1  # the probe did not run
            self.busy_count += 1
            return SERVICE_BUSY
        self.active += 1
        return 0

    def release(self) -> None:
        self.active -= 1

    def success(self) -> None:
        """A call answered (result or RPCError). Closes a half-open breaker."""
        self.failures = 0
        if self.state == HALF_OPEN:
            self.state = CLOSED
            self.probes = 0

    def failure(self, timed_out: bool = False) -> None:
        """A call ended in -32603 or -32001."""
        self.failure_count += 1
        if timed_out:
            self.timeout_count += 1
        if self.state == HALF_OPEN:
            self._open()
        elif self.state == CLOSED:
            self.failures += 1
            if self.failures >= self.failure_threshold:
                self._open()
        # OPEN: a call started before the breaker opened; nothing more to learn.

    def cancelled(self) -> None:
        """A call was cancelled (shutdown): no verdict, but a probe slot is given back."""
        if self.state == HALF_OPEN and self.probes > 0:
            self.probes -= 1

    def _open(self) -> None:
        self.state = OPEN
        self.opened_at = self.clock()
        self.failures = 0
        self.probes = 0

    def reset(self) -> None:
        """Close the breaker now (an operator's override)."""
        self.state = CLOSED
        self.failures = 0
        self.probes = 0

    # --- threads ----------------------------------------------------------------------

    def executor(self) -> ThreadPoolExecutor:
        """This namespace's own thread pool, created on first use."""
        ex = self._executor
        if ex is None:
            ex = self._executor = ThreadPoolExecutor(
                max_workers=self.limit or DEFAULT_THREADS, thread_name_prefix=f"fastrpc-{self.name}"
            )
        return ex

    def shutdown(self, wait: bool = False) -> None:
        """Stop the thread pool (queued calls are cancelled; running ones finish)."""
        ex, self._executor = self._executor, None
        if ex is not None:
            ex.shutdown(wait=wait, cancel_futures=True)

    def stats(self) -> dict[str, Any]:
        return {
            "state": STATE_NAMES[self.state],
            "active": self.active,
            "consecutive_failures": self.failures,
            "busy": self.busy_count,
            "unavailable": self.unavailable_count,
            "timeouts": self.timeout_count,
            "failures": self.failure_count,
        }

    def __repr__(self) -> str:
        return f"<Bulkhead {self.name} {STATE_NAMES[self.state]} active={self.active}>"


__all__ = [
    "CLOSED",
    "DEFAULT",
    "DEFAULT_COOLDOWN",
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_HALF_OPEN_PROBES",
    "DEFAULT_THREADS",
    "HALF_OPEN",
    "OPEN",
    "Bulkhead",
]
