"""``benchmarks/fanout.py`` must count only notifications that arrived, in order and
intact. These tests hold its subscriber worker (``fanout_client.py``) to that against a
scripted server that publishes right or wrong on purpose, and run the whole benchmark at
a tiny size to check that its JSON adds up. No speed is asserted."""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from _wsserver import ScriptedServer, frame, read_frame, servers

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "benchmarks" / "fanout_client.py"
sys.path.insert(0, str(ROOT / "benchmarks" / "peers"))
from _fanout import NOTIFY, head, notification  # noqa: E402

SUB = "0x" + "5a" * 16
PUBLISHES = 3
OUT_OF_ORDER = "out of order (a notification missing or repeated)"


def wrong_member(seq: int) -> bytes:
    msg = orjson.loads(notification(SUB, seq))
    msg["id"] = None
    return orjson.dumps(msg)


def changed_payload(seq: int) -> bytes:
    msg = orjson.loads(notification(SUB, seq))
    msg["params"]["result"]["gasUsed"] = "0x0"
    return orjson.dumps(msg)


def as_int_number(seq: int) -> bytes:
    msg = orjson.loads(notification(SUB, seq))
    msg["params"]["result"]["number"] = int(msg["params"]["result"]["number"], 16)
    return orjson.dumps(msg)


# mode: (the frames published after the subscribe reply, per seq 0..2), the errors the
# worker must report for the three publishes (ok, bad per seq) and the reason counted
MODES: dict[str, tuple[list[tuple[int, bytes]], list[tuple[int, int]], str]] = {
    "right": ([(1, notification(SUB, s)) for s in range(3)], [(1, 0)] * 3, ""),
    "skip-one": ([(1, notification(SUB, s)) for s in (0, 2, 3)], [(1, 0), (0, 1), (0, 1)],
                 OUT_OF_ORDER),
    "repeat-one": ([(1, notification(SUB, s)) for s in (0, 0, 1)], [(1, 0), (0, 1), (0, 1)],
                   OUT_OF_ORDER),
    "changed-payload": ([(1, notification(SUB, 0)), (1, changed_payload(1)),
                         (1, notification(SUB, 2))], [(1, 0), (0, 1), (1, 0)],
                        "payload differs"),
    "number-as-int": ([(1, notification(SUB, 0)), (1, as_int_number(1)),
                       (1, notification(SUB, 2))], [(1, 0), (0, 1), (1, 0)],
                      "payload differs"),
    "other-id": ([(1, notification("0x" + "77" * 16, s)) for s in range(3)], [(0, 1)] * 3,
                 "another subscription's id"),
    "extra-member": ([(1, wrong_member(s)) for s in range(3)], [(0, 1)] * 3,
                     "not an eth_subscription notification"),
    "binary": ([(2, notification(SUB, s)) for s in range(3)], [(0, 1)] * 3,
               "not a text message"),
    "not-json": ([(1, b"{" + notification(SUB, s)) for s in range(3)], [(0, 1)] * 3,
                 "not JSON"),
}


class Publisher(ScriptedServer):
    """Answers ``eth_subscribe("newHeads")`` with ``SUB`` (or wrongly, in the
    ``bad-reply-*`` modes), then publishes its mode's three frames at once."""

    def talk(self, conn: socket.socket) -> None:
        op, data = read_frame(conn)
        req = orjson.loads(data)
        assert op == 1 and req["method"] == "eth_subscribe" and req["params"] == ["newHeads"]
        if self.mode == "bad-reply-no-result":
            conn.sendall(frame(1, orjson.dumps({"jsonrpc": "2.0", "id": req["id"]})))
        elif self.mode == "bad-reply-other-id":
            conn.sendall(frame(1, orjson.dumps({"jsonrpc": "2.0", "id": req["id"] + 1,
                                                "result": SUB})))
        else:
            conn.sendall(frame(1, orjson.dumps({"jsonrpc": "2.0", "id": req["id"],
                                                "result": SUB})))
            conn.sendall(b"".join(frame(op, f) for op, f in MODES[self.mode][0]))
        while True:  # until the worker's close frame
            op, _ = read_frame(conn)
            if op == 8:
                return


@pytest.fixture
def publisher():
    yield from servers(Publisher)


class Worker:
    """``fanout_client.py`` in its own process, driven as ``fanout.py`` drives it."""

    def __init__(self, port: int, count: int) -> None:
        self.p = subprocess.Popen(
            [sys.executable, str(CLIENT), "--port", str(port), "--count", str(count),
             "--source", "127.0.0.2", "--concurrency", "4", "--phase-timeout", "10",
             "--lifetime", "60"], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        self.buf = b""

    def event(self, timeout: float = 10.0) -> dict[str, Any]:
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        while b"\n" not in self.buf:
            ready, _, _ = select.select([fd], [], [], timeout)
            chunk = os.read(fd, 65536) if ready else b""
            assert chunk, f"no event within {timeout} s; stderr: {self.stderr()}"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def send(self, cmd: str) -> dict[str, Any]:
        assert self.p.stdin is not None
        self.p.stdin.write(cmd.encode() + b"\n")
        self.p.stdin.flush()
        return self.event()

    def stderr(self) -> str:
        if self.p.poll() is None:
            self.p.kill()
        return self.p.stderr.read().decode(errors="replace")[-800:] if self.p.stderr else ""

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                assert self.send("close")["event"] == "closed"
                self.p.wait(10)
            finally:
                if self.p.poll() is None:
                    self.p.kill()
                    self.p.wait()
        for f in (self.p.stdin, self.p.stdout, self.p.stderr):
            if f is not None:
                f.close()


@pytest.fixture
def worker():
    made: list[Worker] = []

    def make(port: int, count: int) -> Worker:
        w = Worker(port, count)
        made.append(w)
        assert w.event()["event"] == "ready"
        return w

    yield make
    for w in made:
        w.close()


@pytest.mark.parametrize("mode", list(MODES))
def test_worker_counts_only_right_notifications(publisher, worker, mode: str) -> None:
    frames, per_seq, reason = MODES[mode]
    count = 2
    w = worker(publisher(mode).port, count)
    con = w.send("connect")
    assert (con["event"], con["ok"], con["failed"]) == ("connected", count, 0)
    sub = w.send("subscribe")
    assert (sub["event"], sub["ok"], sub["failed"]) == ("subscribed", count, 0)
    for seq, (ok, bad) in enumerate(per_seq):
        got = w.event()
        assert got == {"event": "received", "seq": seq, "ok": ok * count, "bad": bad * count}
    status = w.send("status")
    right = sum(ok for ok, _ in per_seq) * count
    wrong = sum(bad for _, bad in per_seq) * count
    assert (status["delivered"], status["bad"], status["dropped"]) == (right, wrong, 0)
    assert status["subscribed"] == count
    assert status["errors"] == ({reason: wrong} if wrong else {})


@pytest.mark.parametrize("mode", ["bad-reply-no-result", "bad-reply-other-id"])
def test_worker_refuses_a_wrong_subscribe_reply(publisher, worker, mode: str) -> None:
    w = worker(publisher(mode).port, 2)
    assert w.send("connect")["ok"] == 2
    sub = w.send("subscribe")
    assert (sub["event"], sub["ok"], sub["failed"]) == ("subscribed", 0, 2)
    assert sub["errors"] == {"subscribe reply is not a result with a string id": 2}
    assert w.send("status")["subscribed"] == 0


def test_head_is_the_published_payload() -> None:
    msg = orjson.loads(notification(SUB, 7))
    assert msg == {"jsonrpc": "2.0", "method": NOTIFY,
                   "params": {"subscription": SUB, "result": head(7)}}
    assert head(7) != head(8) and head(7)["number"] == hex(19_000_007)
    assert 450 <= len(orjson.dumps(head(7))) <= 550  # the ~500 B newHeads of the issue


def test_tiny_fanout_run_adds_up(tmp_path: Path) -> None:
    """The whole benchmark, 20 subscribers, 3 publishes, 2 repeats, every server and
    loop: every run valid, every notification delivered, CPU accounted."""
    n, k, repeat = 20, PUBLISHES, 2
    out, md = tmp_path / "fanout.json", tmp_path / "fanout.md"
    p = subprocess.run([sys.executable, "benchmarks/fanout.py", "--n", str(n), "--publishes",
                        str(k), "--repeat", str(repeat), "--warmup", "1",
                        "--servers", "fastrpc,websockets,picows,picows-send",
                        "--json", str(out), "--markdown", str(md)],
                       cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["problems"] == [] or all(x.startswith("noisy run") for x in data["problems"])
    runs = data["runs"]
    assert sorted((r["server"], r["loop"]) for r in runs) == sorted(
        (s, lp) for s in ("fastrpc", "websockets", "picows", "picows-send")
        for lp in ("asyncio", "uvloop"))
    for r in runs:
        assert r["valid"], r
        assert (r["n"], r["publishes"], r["expected"]) == (n, k, n * k)
        assert (r["delivered"], r["bad"], r["dropped"]) == (n * k, 0, 0)
        assert r["server_runtime_s"] > 0 and r["server_cpu_s"] >= 0
        assert r["server_cpu_us_per_notification"] == pytest.approx(
            r["server_cpu_s"] * 1e6 / (n * k), abs=0.01)
        assert 0 <= r["server_sys_us_per_notification"] <= r["server_cpu_us_per_notification"]
        assert len(r["repeats"]) == repeat
        assert all(rep["delivered"] == n * k for rep in r["repeats"])
        lo, hi = r["server_cpu_us_per_notification_range"]
        assert lo <= r["server_cpu_us_per_notification"] <= hi
    text = md.read_text()
    assert "## 20 subscribers" in text
    for s in data["servers"].values():
        assert s["label"] in text
