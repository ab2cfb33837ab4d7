"""The one client-process driver of ``memory.py``, ``fanout.py`` and ``soak.py``:
``_harness.LineWorkers`` (lines in, JSON lines out, a worker that exits early named with
its log) and ``memory.Workers`` on it (connections shared out, another client script,
its arguments, CPUs and lifetime), driven here with a tiny stand-in worker script."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import memory  # noqa: E402
from _harness import LineWorkers, StageError, pinned, shares  # noqa: E402

# Reports its argv and CPUs, answers "ping" with "pong", "close" with "closed" and exits;
# "die" writes to stderr and exits without a word on stdout.
WORKER = """\
import json, os, sys
print(json.dumps({"event": "ready", "argv": sys.argv[1:],
                  "cpus": sorted(os.sched_getaffinity(0))}), flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "ping":
        print(json.dumps({"event": "pong"}), flush=True)
    elif cmd == "close":
        print(json.dumps({"event": "closed"}), flush=True)
        break
    elif cmd == "die":
        print("worker gave up on purpose", file=sys.stderr, flush=True)
        sys.exit(3)
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    p = tmp_path / "worker.py"
    p.write_text(WORKER)
    return p


def soon(seconds: float = 20.0) -> float:
    return time.monotonic() + seconds


def test_shares_spread_every_connection_once() -> None:
    assert shares(10, 4) == [(0, 3), (3, 3), (6, 2), (8, 2)]
    assert shares(3, 8) == [(0, 1), (1, 1), (2, 1)]  # never an empty worker
    assert shares(5, 0) == [(0, 5)]


def test_commands_go_to_every_worker_and_events_come_back_in_order(script: Path,
                                                                   tmp_path: Path) -> None:
    w = LineWorkers([[sys.executable, str(script), str(i)] for i in range(3)], tmp_path)
    try:
        ready = w.wait("ready", "start", soon())
        assert [r["argv"] for r in ready] == [["0"], ["1"], ["2"]]
        w.command("ping")
        assert w.wait("pong", "ping", soon()) == [{"event": "pong"}] * 3
    finally:
        w.close()
    assert [p.returncode for p in w.procs] == [0, 0, 0]


def test_a_worker_that_exits_early_is_a_stage_error_quoting_its_log(script: Path,
                                                                     tmp_path: Path) -> None:
    w = LineWorkers([[sys.executable, str(script)]], tmp_path)
    try:
        w.wait("ready", "start", soon())
        w.command("die")
        with pytest.raises(StageError) as e:
            w.wait("pong", "ping", soon())
        assert e.value.stage == "ping"
        assert "client worker 0 exited: worker gave up on purpose" in e.value.reason
        assert w.procs[0].wait(10) == 3
        w.command("ping")  # to a dead worker: skipped, the line left in its stdin buffer
    finally:
        w.reap()  # closing that stdin cannot flush it: reaping must not raise


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to pin to one")
def test_pin_runs_in_each_worker_before_exec(script: Path, tmp_path: Path) -> None:
    cpu = max(os.sched_getaffinity(0))
    (tmp_path / "pinned").mkdir()
    (tmp_path / "free").mkdir()
    w = LineWorkers([[sys.executable, str(script)]] * 2, tmp_path / "pinned", pin=pinned({cpu}))
    try:
        assert [r["cpus"] for r in w.wait("ready", "start", soon())] == [[cpu], [cpu]]
    finally:
        w.close()
    free = LineWorkers([[sys.executable, str(script)]], tmp_path / "free")
    try:
        assert free.wait("ready", "start", soon())[0]["cpus"] == sorted(os.sched_getaffinity(0))
    finally:
        free.close()


def options(**kw: object) -> argparse.Namespace:
    base = {"workers": 3, "concurrency": 64, "size": 200, "timeout": 30.0}
    return argparse.Namespace(**{**base, **kw})


def test_memory_workers_share_out_the_connections(script: Path, tmp_path: Path) -> None:
    w = memory.Workers(4321, 7, options(), tmp_path, client=script)
    try:
        argv = [r["argv"] for r in w.wait("ready", "start", soon())]
    finally:
        w.close()
    got = [dict(zip(a[::2], a[1::2])) for a in argv]
    assert [(g["--first"], g["--count"], g["--source"]) for g in got] == [
        ("0", "3", "127.0.0.2"), ("3", "2", "127.0.0.3"), ("5", "2", "127.0.0.4")]
    for g in got:
        assert g["--port"] == "4321" and g["--concurrency"] == "21"
        assert g["--size"] == "200"                       # memory_client's own option
        assert g["--phase-timeout"] == "10.0" and g["--lifetime"] == "90.0"  # timeout + 60


def test_memory_workers_take_fanouts_client_arguments_and_lifetime(script: Path,
                                                                    tmp_path: Path) -> None:
    w = memory.Workers(4321, 2, options(workers=4), tmp_path, client=script, client_args=(),
                       lifetime=14400.0)
    try:
        argv = [r["argv"] for r in w.wait("ready", "start", soon())]
    finally:
        w.close()
    assert len(argv) == 2  # no more workers than connections
    for a in argv:
        assert "--size" not in a
        assert a[a.index("--lifetime") + 1] == "14400.0"
