"""ClientPool's reconnect delays (no sockets): exponential, capped, jittered down."""
from __future__ import annotations

import pytest

from fastrpc import ClientPool


def test_backoff_without_jitter():
    p = ClientPool("ws://127.0.0.1:1/", backoff_initial=0.1, backoff_max=1.0, backoff_jitter=0)
    assert [p.backoff(n) for n in range(7)] == [0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert p.backoff(10_000) == 1.0


def test_backoff_jitter_stays_in_range():
    p = ClientPool("ws://127.0.0.1:1/", backoff_initial=0.2, backoff_max=5.0, backoff_jitter=0.5)
    for n, full in ((1, 0.2), (3, 0.8), (20, 5.0)):
        delays = [p.backoff(n) for _ in range(500)]
        assert all(full * 0.5 <= d <= full for d in delays)
        assert max(delays) - min(delays) > full * 0.3  # spread out, not in step


@pytest.mark.parametrize("kw", [{"size": 0}, {"backoff_initial": 0}, {"backoff_initial": 2, "backoff_max": 1},
                                {"backoff_jitter": 1.5}, {"max_retries": -1}, {"acquire_timeout": 0}])
def test_settings_checked(kw):
    with pytest.raises(ValueError):
        ClientPool("ws://127.0.0.1:1/", **kw)


def test_urls():
    with pytest.raises(ValueError):
        ClientPool([])
    with pytest.raises(ValueError, match="TLS"):
        ClientPool(["ws://127.0.0.1:1/", "wss://127.0.0.1:2/"])
    p = ClientPool(["ws://127.0.0.1:1/", "ws://127.0.0.1:1/"], idempotent=lambda m: m.startswith("eth_"))
    assert list(p.stats()) == ["ws://127.0.0.1:1/"]  # duplicates merged
    assert p._idempotent("eth_blockNumber") and not p._idempotent("personal_sign")
    assert not ClientPool("ws://127.0.0.1:1/")._idempotent("eth_blockNumber")  # nothing by default
