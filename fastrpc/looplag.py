"""Event-loop lag: how late a periodic timer fires, because the loop was busy elsewhere.

The server's reaper already wakes up every sweep tick; it reports how late each wake-up
was (``observe``), so measuring the lag costs no extra timer and nothing on the request
path. A lag near 0 means the loop keeps up; a lag of a tenth of a second means every
connection of this process waited that long for its next read.
"""
from __future__ import annotations

from bisect import bisect_left

from .metrics_schema import LOOP_LAG_BUCKETS


class LoopLag:
    """A histogram of observed lags (``buckets`` non-cumulative over
    ``LOOP_LAG_BUCKETS``, the last one above the largest bound) and the latest value."""

    __slots__ = ("buckets", "sum", "count", "last")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LOOP_LAG_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0
        self.last = 0.0

    def observe(self, lag: float) -> None:
        """One wake-up ``lag`` seconds late (negative values, clock jitter, count as 0)."""
        if lag < 0.0:
            lag = 0.0
        self.buckets[bisect_left(LOOP_LAG_BUCKETS, lag)] += 1
        self.sum += lag
        self.count += 1
        self.last = lag


__all__ = ["LoopLag"]
