"""``server.stats()`` memory accounting against the process's real RSS (README
"Memory accounting"), at 0, 1,000 and 10,000 idle WebSocket connections.

The server runs alone in a fresh interpreter (``memory_child.py``: JSON-RPC, one
method, no timers touching idle connections); the connections come from
``benchmarks/memory_client.py`` workers in other processes (their memory is theirs),
one 127.0.0.x source address each. At every step the test waits until the server has
settled (its reaper trimmed the pool back to no reserved arena, RSS steady over a
second) and reads ``stats()`` from the child.

Tolerances, decided from measurements on this project's 2-core machine (three runs per
loop): RSS grew 139,264-147,456 B at 1,000 connections and 794,624-802,816 B at
10,000, where ``memory.accounted`` grew 72,000 and 720,000 B. About 70 KiB is touched
once by the first connections (interpreter heap, the first pages of buffers shared by
all), and each further connection costs 72.8 B where 72 are accounted:

* at 0 connections: ``accounted`` is 0 and ``rss`` is the VmRSS the kernel reports
  for the child (read from /proc by this process) within 256 KiB;
* from 0 to 1,000 and to 10,000: RSS growth = accounted growth within 16 B per
  connection + 512 KiB;
* from 1,000 to 10,000: within 16 B per connection + 128 KiB (the per-connection
  cost alone: measured 0.8 B per connection apart).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from procs import Proc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CHILD = HERE / "memory_child.py"
CLIENT = ROOT / "benchmarks" / "memory_client.py"

PER_CONN = 16        # bytes per connection the two growths may differ by
FIXED = 512 << 10    # bytes, from the 0-connection baseline (first-touch pages)
FIXED_STEP = 128 << 10  # bytes, between 1,000 and 10,000 connections
SETTLE_MAX = 15.0    # s to wait for the server to settle at one step


def vm_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Child:
    def __init__(self, loop_name: str, max_connections: int) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = Proc([sys.executable, str(CHILD), loop_name, str(max_connections)], env=env, stdin=True)
        first = json.loads(self.proc.expect(r'^\{"port"').string)
        self.port, self.pid = first["port"], first["pid"]

    def stats(self) -> dict:
        self.proc.send("stats")
        return json.loads(self.proc.expect(r'^\{"connections"').string)

    def settled(self, open_: int) -> dict:
        """stats() once ``open_`` connections are up, the pool holds no arena and RSS
        stayed within one page over four samples a quarter of a second apart."""
        deadline = time.monotonic() + SETTLE_MAX
        recent: list[int] = []
        while True:
            s = self.stats()
            recent = (recent + [s["memory"]["rss"]])[-4:]
            if (s["connections"]["open"] == open_ and s["memory"]["pool_reserved"] == 0
                    and len(recent) == 4 and max(recent) - min(recent) <= 4096):
                return s
            assert time.monotonic() < deadline, f"not settled in {SETTLE_MAX} s: {recent} {s['connections']}"
            time.sleep(0.25)


def connect(port: int, count: int, first: int, source: str) -> Proc:
    c = Proc([sys.executable, str(CLIENT), "--port", str(port), "--count", str(count),
              "--first", str(first), "--source", source, "--concurrency", "64",
              "--phase-timeout", "30", "--lifetime", "120"], stdin=True)
    c.expect(r'"event": "ready"')
    c.send("connect")
    return c


def wait_connected(c: Proc, count: int) -> None:
    done = json.loads(c.expect(r'"event": "connected"', timeout=40).string)
    assert (done["ok"], done["failed"]) == (count, 0), done


def growth(a: dict, b: dict) -> tuple[int, int]:
    """(RSS growth, accounted growth) from stats a to stats b."""
    return (b["memory"]["rss"] - a["memory"]["rss"], b["memory"]["accounted"] - a["memory"]["accounted"])


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_accounted_memory_tracks_rss(loop_name):
    child = Child(loop_name, 10_000)
    clients: list[Proc] = []
    try:
        # 0 connections: nothing accounted; the RSS figure is the kernel's.
        s0 = child.settled(0)
        assert s0["memory"]["accounted"] == 0
        assert abs(s0["memory"]["rss"] - vm_rss(child.pid)) <= 256 << 10
        assert s0["table"]["slots_in_use_bytes"] == 0 and s0["pool"]["bytes_in_use"] == 0

        clients.append(connect(child.port, 1000, 0, "127.0.0.2"))
        wait_connected(clients[0], 1000)
        s1 = child.settled(1000)
        rss, acc = growth(s0, s1)
        assert acc == 1000 * s1["table"]["slot_size"]  # idle: a slot each, no pooled block
        assert abs(rss - acc) <= PER_CONN * 1000 + FIXED, (rss, acc)

        clients.append(connect(child.port, 4500, 1000, "127.0.0.3"))
        clients.append(connect(child.port, 4500, 5500, "127.0.0.4"))
        for c in clients[1:]:
            wait_connected(c, 4500)
        s2 = child.settled(10_000)
        rss, acc = growth(s0, s2)
        assert acc == 10_000 * s2["table"]["slot_size"]
        assert abs(rss - acc) <= PER_CONN * 10_000 + FIXED, (rss, acc)
        rss, acc = growth(s1, s2)
        assert abs(rss - acc) <= PER_CONN * 9000 + FIXED_STEP, (rss, acc)
        assert s2["connections"]["by_state"]["open"] == 10_000
        assert s2["table"]["ips"] == 3
        for c in clients:
            c.send("close")
            c.expect(r'"event": "closed"')
        child.proc.send("stop")
        assert json.loads(child.proc.expect(r'^\{"left"', timeout=30).string) == {"left": 0, "in_use": 0}
    finally:
        for c in clients:
            c.close()
        child.proc.close()
