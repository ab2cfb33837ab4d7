"""ConnectionLog (``fastrpc/connlog.py``): the line of each event, the token bucket,
the summary of suppressed lines. A fake clock makes the budget exact; no sockets."""
from __future__ import annotations

import logging

import pytest

from fastrpc import _core
from fastrpc.connlog import DEFAULT_BURST, DEFAULT_RATE, SUMMARY_INTERVAL, ConnectionLog, peer_text

R = {name: i for i, name in enumerate(_core.COUNTER_NAMES)}


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> list[str]:
        return [r.getMessage() for r in self.records]


@pytest.fixture
def setup():
    logger = logging.getLogger("fastrpc.connections.test")
    handler = Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    clock = Clock()

    def make(rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST) -> ConnectionLog:
        return ConnectionLog(rate, burst, logger=logger, clock=clock)

    yield make, handler, clock, logger
    logger.removeHandler(handler)


LINES = [
    # (on_event arguments, level, line)
    ((R["refused_http"], 400, ""), logging.INFO, "refused 400 malformed request line"),
    ((R["refused_http"], 503, ""), logging.INFO, "refused 503 too many connections"),
    ((R["refused_http"], 500, ""), logging.WARNING, "refused 500 internal error in on_handshake"),
    ((R["handshake_too_large"], 431, ""), logging.INFO, "refused 431 request head too large"),
    ((R["handshake_timeout"], 0, ""), logging.INFO, "refused handshake timeout"),
    ((R["pending_overflow"], 0, ""), logging.WARNING, "refused too many pending handshakes"),
    ((R["closed_eof"], 1006, ""), logging.INFO, "closed 1006 connection lost without a close frame"),
    ((R["closed_protocol"], 1002, "frame not masked"), logging.INFO, "closed 1002 frame not masked"),
    ((R["closed_protocol"], 1007, "invalid UTF-8"), logging.INFO, "closed 1007 invalid UTF-8"),
    ((R["closed_too_big"], 1009, "message too big"), logging.INFO, "closed 1009 message too big"),
    ((R["closed_nomem"], 1013, "server out of buffer memory"), logging.WARNING,
     "closed 1013 server out of buffer memory"),
    ((R["closed_nomem"], 1006, ""), logging.WARNING, "closed 1006 server out of buffer memory"),
    ((R["closed_pong_timeout"], 1006, ""), logging.INFO, "closed 1006 pong timeout"),
    ((R["closed_slow_reader"], 1006, ""), logging.INFO,
     "closed 1006 slow reader: pending output over max_pending_output"),
    ((R["closed_close_timeout"], 1006, ""), logging.INFO, "closed 1006 close timeout: no close frame back"),
    ((R["closed_handler_error"], 1011, ""), logging.WARNING, "closed 1011 handler error"),
    ((R["closed_peer"], 1000, ""), logging.DEBUG, "closed 1000 by the peer"),
    ((R["closed_idle"], 1001, ""), logging.DEBUG, "closed 1001 idle timeout"),
    ((R["closed_by_server"], 1001, ""), logging.DEBUG, "closed 1001 by the server"),
]


@pytest.mark.parametrize("args, level, line", LINES, ids=[x[2] for x in LINES])
def test_each_event_has_its_line_with_the_peer(setup, args, level, line):
    make, h, _, _ = setup
    log = make()
    log.on_event(*args, "203.0.113.9", 40123)
    log.on_event(*args, "2001:db8::7", 443)
    assert h.text == [f"{line} peer=203.0.113.9:40123", f"{line} peer=[2001:db8::7]:443"]
    assert [r.levelno for r in h.records] == [level, level]
    assert log.lines == 2 and log.suppressed == 0


def test_every_abnormal_core_reason_has_a_text_of_its_own(setup):
    """No abnormal reason falls back to its bare counter name."""
    make, h, _, _ = setup
    log = make(rate=1000, burst=1000)
    for i, name in enumerate(_core.COUNTER_NAMES):
        if _core.EVENTS_ABNORMAL >> i & 1:
            log.on_event(i, 0, "", "192.0.2.1", 1)
    assert len(h.text) == bin(_core.EVENTS_ABNORMAL).count("1")
    assert not any(name in line for line in h.text for name in _core.COUNTER_NAMES)


def test_refusals_decided_in_python(setup):
    make, h, _, _ = setup
    log = make()
    log.refused(429, "too many connections from this address", "1.2.3.4", 5678)
    log.refused(500, "internal error", "1.2.3.4", 5679)
    assert h.text == ["refused 429 too many connections from this address peer=1.2.3.4:5678",
                      "refused 500 internal error peer=1.2.3.4:5679"]
    assert [r.levelno for r in h.records] == [logging.INFO, logging.WARNING]


def test_the_budget_then_one_summary(setup):
    """A burst of 5,000 at one instant: `burst` lines, the rest counted; the summary
    comes once SUMMARY_INTERVAL has passed since the first line dropped."""
    make, h, clock, _ = setup
    log = make()
    for i in range(5000):
        log.on_event(R["refused_http"], 400, "", "192.0.2.1", i)
    assert log.lines == DEFAULT_BURST and log.suppressed == 5000 - DEFAULT_BURST
    log.flush()  # too soon: nothing
    assert len(h.records) == DEFAULT_BURST
    clock.t += SUMMARY_INTERVAL
    log.flush()
    assert h.text[-1] == f"suppressed {5000 - DEFAULT_BURST} connection log lines in the last 1.0s"
    assert h.records[-1].levelno == logging.INFO
    log.flush()
    clock.t += 10
    log.flush()  # nothing new: no more summaries
    assert len(h.records) == DEFAULT_BURST + 1


def test_sustained_rate(setup):
    """A steady flood of 200 events/s for 10 s: about `rate` lines a second after the
    burst; with a summary per second, every event is a line or in a summary."""
    make, h, clock, _ = setup
    log = make(rate=20, burst=100)
    for step in range(2000):
        clock.t += 0.005
        log.on_event(R["closed_eof"], 1006, "", "192.0.2.1", step)
        if step % 200 == 199:
            log.flush()
    log.flush(force=True)
    lines = [t for t in h.text if not t.startswith("suppressed ")]
    summaries = [t for t in h.text if t.startswith("suppressed ")]
    assert len(lines) == log.lines <= 100 + 20 * 10 + 1
    assert len(lines) >= 100 + 20 * 10 - 1
    assert len(summaries) <= 11
    assert len(lines) + sum(int(s.split()[1]) for s in summaries) == 2000


def test_summary_takes_the_highest_level_dropped(setup):
    make, h, clock, _ = setup
    log = make(rate=1, burst=1)
    log.on_event(R["closed_eof"], 1006, "", "192.0.2.1", 1)
    log.on_event(R["closed_eof"], 1006, "", "192.0.2.1", 2)
    log.on_event(R["closed_handler_error"], 1011, "", "192.0.2.1", 3)
    log.flush(force=True)
    assert h.text[-1] == "suppressed 2 connection log lines in the last 0.0s"
    assert h.records[-1].levelno == logging.WARNING


def test_disabled_levels_spend_no_budget(setup):
    make, h, _, logger = setup
    log = make(rate=1, burst=1)
    logger.setLevel(logging.INFO)
    for _ in range(10):
        log.on_event(R["closed_peer"], 1000, "", "192.0.2.1", 1)  # DEBUG
    assert h.records == [] and log.suppressed == 0
    log.on_event(R["closed_eof"], 1006, "", "192.0.2.1", 1)
    assert len(h.records) == 1


def test_event_mask_follows_the_logger(setup):
    make, _, _, logger = setup
    logger.setLevel(logging.INFO)
    assert make().event_mask() == _core.EVENTS_ABNORMAL
    logger.setLevel(logging.DEBUG)
    assert make().event_mask() == _core.EVENTS_ABNORMAL | _core.EVENTS_NORMAL
    assert make(rate=0).event_mask() == 0


def test_rate_zero_writes_nothing(setup):
    make, h, _, _ = setup
    log = make(rate=0)
    assert not log.enabled
    log.refused(404, "not found", "192.0.2.1", 1)
    log.on_event(R["closed_eof"], 1006, "", "192.0.2.1", 1)
    log.flush(force=True)
    assert h.records == [] and log.metrics() == {"log_lines": 0, "log_suppressed": 0}


@pytest.mark.parametrize("rate, burst", [(-1, 10), (5, 0)])
def test_bad_budget(rate, burst):
    with pytest.raises(ValueError):
        ConnectionLog(rate, burst)


def test_peer_text():
    assert peer_text("10.1.2.3", 80) == "10.1.2.3:80"
    assert peer_text("::1", 0) == "[::1]:0"
