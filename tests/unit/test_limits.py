"""Limits validation: what None and 0 mean for every timeout, and the bounds.

``handshake_timeout``, ``idle_timeout``, ``ping_interval``, ``pong_timeout`` and
``request_timeout``: None is off, 0 is refused (ambiguous). ``close_timeout`` and
``drain_timeout`` (the waits of ``Server.stop()``): None waits without limit, 0 does not
wait. Every timeout stays below ``MAX_TIMEOUT`` (24 days). A refusal names the field.
"""
from __future__ import annotations

import math

import pytest

from fastrpc.limits import MAX_TIMEOUT, Limits
from fastrpc.server import CLOSE_WAIT_FOREVER_MS, _close_ms, _ms

OFF_OR_POSITIVE = ("handshake_timeout", "idle_timeout", "ping_interval", "pong_timeout", "request_timeout")
WAITS = ("close_timeout", "drain_timeout")
ALL = OFF_OR_POSITIVE + WAITS


def test_every_float_field_of_limits_is_covered():
    timeouts = {n for n, f in Limits.__dataclass_fields__.items() if "float" in str(f.type) and n != "memory_soft_ratio"}
    assert timeouts == set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_none_accepted(name):
    assert getattr(Limits(**{name: None}), name) is None


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("value", [0.001, 1, 2.5, MAX_TIMEOUT - 1])
def test_positive_below_24_days_accepted(name, value):
    assert getattr(Limits(**{name: value}), name) == value


@pytest.mark.parametrize("name", OFF_OR_POSITIVE)
@pytest.mark.parametrize("zero", [0, 0.0])
def test_zero_refused_where_ambiguous(name, zero):
    with pytest.raises(ValueError, match=rf"^{name}=0(\.0)?: .*ambiguous.*None"):
        Limits(**{name: zero})


@pytest.mark.parametrize("name", WAITS)
def test_zero_means_dont_wait_for_the_waits(name):
    assert getattr(Limits(**{name: 0}), name) == 0


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("value", [-1, -0.001, MAX_TIMEOUT, MAX_TIMEOUT * 10, math.inf, math.nan])
def test_negative_too_large_or_nan_refused(name, value):
    with pytest.raises(ValueError, match=rf"^{name}="):
        Limits(**{name: value})


def test_replace_validates_too():
    with pytest.raises(ValueError, match="^idle_timeout=0"):
        Limits().replace(idle_timeout=0)


class TestSweepArguments:
    """What the reaper passes to ``Reactor.sweep`` (whose 0 means "check off" for every
    timeout but close_timeout, where 0 means "drop at once")."""

    def test_off_is_zero(self):
        assert _ms(None) == 0

    def test_positive_never_rounds_to_off(self):
        assert _ms(0.0001) == 1
        assert _ms(2.5) == 2500

    def test_close_timeout_none_waits_forever(self):
        assert _close_ms(None) == CLOSE_WAIT_FOREVER_MS
        assert MAX_TIMEOUT * 1000 < CLOSE_WAIT_FOREVER_MS < 2**32

    def test_close_timeout_zero_drops_at_the_next_sweep(self):
        assert _close_ms(0) == 0
        assert _close_ms(0.0) == 0
        assert _close_ms(0.0001) == 1
        assert _close_ms(5) == 5000
