"""Connection log: one line per refused or abnormally ended connection, rate-limited.

Lines go to the ``fastrpc.connections`` logger, each naming what happened, the code
and the peer::

    refused 429 too many connections from this address peer=192.0.2.7:51334
    refused 431 request head too large peer=192.0.2.7:51336
    closed 1009 message too big peer=[2001:db8::1]:40112
    closed 1006 connection lost without a close frame peer=192.0.2.9:60001

Two sources feed it. Refusals decided in Python (admission, the handshake's checks:
400, 403, 404, 405, 413, 429, 503, ...) are logged when the answer is decided
(``refused()``). Everything the compiled core decides alone (a request line that
cannot be HTTP, a head over the limit, the handshake timeout, the pending-handshake
cap, every abnormal close) arrives through ``Engine.on_event`` once the connection is
gone (``on_event()``); the core calls it only for those rare ends, never per message.

Abnormal, at INFO (WARNING where the server itself is short of something or failed):
refusals, handshake timeouts, EOF or reset on an open WebSocket without a close frame,
protocol errors (1002/1007), messages too big (1009), the pool at its ceiling (1013,
WARNING), pong timeouts, slow readers, close timeouts, handler errors (1011, WARNING),
sockets closed at accept because ``max_pending_handshakes`` were waiting (WARNING).
Normal, at DEBUG only (and reported by the core only when DEBUG is enabled for this
logger when the server starts): a clean close by the peer, idle reaping (also of a
kept-alive HTTP connection between requests), closes by the server (``close()``,
``stop()``). A plain HTTP exchange that ends after its answer, and EOF after a close
has begun, are not logged at all. Nothing is logged for a successful request.

The rate limit is a token bucket: ``rate`` lines per second sustained, ``burst`` at
once (defaults 20 and 100). A line over the budget is dropped and counted; one
summary line, ``suppressed N connection log lines in the last Ts``, follows at most
once a second (``flush()``, called by the server's reaper and by ``stop()``) at the
highest level of the lines it stands for. A flood of bad handshakes therefore costs
at most ``burst + rate * seconds`` lines plus one summary per second.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from . import _core

log = logging.getLogger("fastrpc.connections")

DEFAULT_RATE = 20.0
"""Lines per second the log sustains."""
DEFAULT_BURST = 100
"""Lines the log may write at once after a quiet period."""
SUMMARY_INTERVAL = 1.0
"""Seconds between two summaries of suppressed lines, at least."""

_NAMES = _core.COUNTER_NAMES
_WARN = {"closed_nomem", "closed_handler_error", "pending_overflow"}

#: What each core reason says when the core gives no detail.
_TEXT = {
    "refused_http": "",  # by status, below
    "handshake_too_large": "request head too large",
    "handshake_timeout": "handshake timeout",
    "pending_overflow": "too many pending handshakes",
    "closed_eof": "connection lost without a close frame",
    "closed_protocol": "protocol error",
    "closed_too_big": "message too big",
    "closed_nomem": "server out of buffer memory",
    "closed_pong_timeout": "pong timeout",
    "closed_slow_reader": "slow reader: pending output over max_pending_output",
    "closed_close_timeout": "close timeout: no close frame back",
    "closed_handler_error": "handler error",
    "closed_peer": "by the peer",
    "closed_idle": "idle timeout",
    "closed_by_server": "by the server",
}
#: Refusals the core writes itself (``refused_http``), by status.
_CORE_STATUS = {
    400: "malformed request line",
    500: "internal error in on_handshake",
    503: "too many connections",
}
_REFUSALS = {"refused_http", "handshake_too_large", "handshake_timeout", "pending_overflow"}


def peer_text(ip: str, port: int) -> str:
    """``1.2.3.4:5678``, ``[2001:db8::1]:5678``."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class ConnectionLog:
    """The rate-limited connection log of one server (see the module docstring).

    ``rate`` lines per second with bursts of ``burst``; ``rate=0`` writes nothing.
    ``clock`` returns seconds (monotonic); tests pass their own.
    """

    def __init__(self, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST, *,
                 logger: logging.Logger = log, clock: Callable[[], float] = time.monotonic) -> None:
        if rate < 0 or (rate > 0 and burst < 1):
            raise ValueError("log rate must be >= 0 and log burst >= 1")
        self.rate = float(rate)
        self.burst = int(burst)
        self.logger = logger
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.lines = 0
        """Lines written (summaries not included)."""
        self.suppressed = 0
        """Lines dropped by the rate limit, in total."""
        self._pending = 0  # dropped since the last summary
        self._pending_since = 0.0
        self._pending_level = logging.DEBUG

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def event_mask(self) -> int:
        """The core's ``event_mask`` for this log: the abnormal ends, and the normal
        ones too when this logger is enabled for DEBUG."""
        if not self.enabled:
            return 0
        mask = _core.EVENTS_ABNORMAL
        if self.logger.isEnabledFor(logging.DEBUG):
            mask |= _core.EVENTS_NORMAL
        return mask

    # --- the two sources -----------------------------------------------------------

    def refused(self, status: int, reason: str, ip: str, port: int) -> None:
        """An HTTP error answer decided in Python (admission, handshake checks)."""
        self._line(logging.WARNING if status == 500 else logging.INFO,
                   "refused %d %s peer=%s", (status, reason), ip, port)

    def on_event(self, reason: int, code: int, detail: str, ip: str, port: int) -> None:
        """``Engine.on_event``: a connection the core refused or ended (see _core.pyi)."""
        name = _NAMES[reason] if 0 <= reason < len(_NAMES) else f"reason {reason}"
        if name == "refused_http":
            text = _CORE_STATUS.get(code, "refused by the core")
        else:
            text = detail or _TEXT.get(name, name)
        if name in ("closed_peer", "closed_idle", "closed_by_server"):
            level = logging.DEBUG
        elif name in _WARN or code == 500:
            level = logging.WARNING
        else:
            level = logging.INFO
        verb = "refused" if name in _REFUSALS else "closed"
        if code:
            self._line(level, verb + " %d %s peer=%s", (code, text), ip, port)
        else:
            self._line(level, verb + " %s peer=%s", (text,), ip, port)

    # --- rate limit ------------------------------------------------------------------

    def _line(self, level: int, fmt: str, args: tuple[object, ...], ip: str, port: int) -> None:
        """Log ``fmt % (*args, peer)`` if the level is enabled and the bucket has a token."""
        if not self.enabled or not self.logger.isEnabledFor(level):
            return
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            if not self._pending:
                self._pending_since = now
            self._pending += 1
            self._pending_level = max(self._pending_level, level)
            return
        self._tokens -= 1.0
        self.lines += 1
        self.logger.log(level, fmt, *args, peer_text(ip, port))

    def flush(self, force: bool = False) -> None:
        """Write the summary of suppressed lines, if any and at least
        ``SUMMARY_INTERVAL`` seconds after the first of them (``force``: now)."""
        if not self._pending:
            return
        now = self._clock()
        span = now - self._pending_since
        if span < SUMMARY_INTERVAL and not force:
            return
        n, level = self._pending, self._pending_level
        self._pending = 0
        self._pending_level = logging.DEBUG
        self.logger.log(level, "suppressed %d connection log lines in the last %.1fs", n, max(span, 0.0))

    def metrics(self) -> dict[str, int]:
        return {"log_lines": self.lines, "log_suppressed": self.suppressed}
