"""``benchmarks/soak.py`` at a tiny scale (200 connections, 15 s of calls, churn and
notifications, 2 client processes, 2 server workers): its exit status and its JSON,
and that its verdict follows the figures (``--from-json`` judges again); then
``benchmarks/soak_client.py`` against a scripted server that gets things wrong on
purpose. No speed is asserted."""
from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from _wsserver import ScriptedServer, frame, next_frame, servers

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
SOAK = BENCH / "soak.py"
CLIENT = BENCH / "soak_client.py"
N = 200
MiB = 2**20


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    return e


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[subprocess.CompletedProcess[str], dict, Path]:
    out = tmp_path_factory.mktemp("soak")
    cmd = [sys.executable, str(SOAK), "--n", str(N), "--duration", "15", "--clients", "2",
           "--server-workers", "2", "--settle", "2", "--steady-warmup", "3",
           "--steady-window", "5", "--calls-per-s", "400", "--progress", "60",
           "--json", str(out / "soak.json"), "--markdown", str(out / "soak.md"),
           "--png", str(out / "soak.png")]
    p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=110)
    assert (out / "soak.json").exists(), p.stdout[-3000:] + p.stderr[-3000:]
    return p, json.loads((out / "soak.json").read_text()), out


def test_tiny_soak_passes_and_reports(tiny):
    p, data, out = tiny
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert data["ok"], [ch for ch in data["checks"] if not ch["ok"]]
    names = {ch["check"] for ch in data["checks"]}
    assert {"table empty after the drain", "pool fully returned after the drain",
            "RSS after the drain within the margin of the post-ramp baseline",
            "RSS after the drain within the margin of RSS before the ramp",
            "no client error", "the server counted what the clients did"} <= names
    assert [ph["phase"] for ph in data["phases"]] == ["start", "baseline", "ramp", "steady",
                                                      "drain", "after"]
    f, c = data["figures"], data["clients"]
    assert f["table_after_drain"] == [0, 0]
    assert f["pool_in_use_after_drain"] == [0, 0]
    assert f["subscriptions_after_drain"] == [0, 0]
    assert f["connections_after_ramp"] == N
    assert c["errors"] == {} and c["failed"] == 0
    assert c["churned_clean"] > 0 and c["churned_reset"] > 0
    assert c["calls_ok"] > 0 and c["calls_ok"] + c["calls_abandoned"] == c["calls_sent"]
    assert c["notifications"] > 0 and c["notifications_missed"] == 0
    # every subscriber of the ramp subscribed (25 of each 100 indexes), and the reopened ones
    assert c["subscribed"] >= N // 4
    # the server saw exactly what the clients did
    sc = f["server_counters"]
    assert (sc["upgraded"], sc["closed_peer"], sc["closed_eof"]) == (
        c["opened"], c["closed_clean"], c["closed_reset"])
    # a row a second, from each of the two workers
    steady = [r for r in data["samples"] if r["phase"] == "steady"]
    assert len(steady) >= 14
    assert all(len(r["rss"]) == 2 and min(r["rss"]) > 0 for r in steady)
    assert all(r["stats_age_s"][0] is not None and r["stats_age_s"][0] < 3 for r in steady)
    last = data["samples"][-1]
    assert last["table"] == [0, 0] and last["connections"] == [0, 0]
    assert data["env"]["commit"] and data["server_exit"] == 0
    md = (out / "soak.md").read_text()
    assert "Verdict: **passed**" in md and "| table empty after the drain | ok |" in md
    assert (out / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _after_rows(d: dict) -> list[dict]:
    return [r for r in d["samples"] if r["phase"] == "after"]


def _leave_a_slot(d: dict) -> None:
    d["marks"]["after"]["0"]["table"] = 1


def _leave_a_block(d: dict) -> None:
    d["marks"]["after"]["1"]["metrics"]["pool_bytes_in_use"] = 1024


def _grow_after_drain(d: dict) -> None:
    for r in _after_rows(d):  # 2 MiB on worker 0 after the drain: past the 1 MiB margin
        r["rss"][0] += 2 * MiB


def _one_wrong_reply(d: dict) -> None:
    d["clients"]["errors"] = {"a wrong reply": 1}


@pytest.mark.parametrize("mutate, failing", [
    (_leave_a_slot, "table empty after the drain"),
    (_leave_a_block, "pool fully returned after the drain"),
    (_grow_after_drain, "RSS after the drain within the margin of the post-ramp baseline"),
    (_one_wrong_reply, "no client error"),
])
def test_verdict_follows_the_figures(tiny, tmp_path, mutate, failing):
    """Judged again from its samples (``--from-json``), the same run with one thing
    wrong fails exactly that check, and exits 1."""
    _, data, _ = tiny
    d = copy.deepcopy(data)
    mutate(d)
    src = tmp_path / "in.json"
    src.write_text(json.dumps(d))
    p = subprocess.run([sys.executable, str(SOAK), "--from-json", str(src),
                        "--markdown", str(tmp_path / "o.md"), "--png", str(tmp_path / "o.png")],
                       cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    failed = [ln for ln in p.stdout.splitlines() if ln.strip().startswith("FAILED")]
    assert len(failed) == 1 and failing in failed[0], p.stdout
    assert "Verdict: **FAILED**" in (tmp_path / "o.md").read_text()


# -- soak_client.py against a scripted server ------------------------------------------------


class Scripted(ScriptedServer):
    """Answers every call; a subscribe gets ``0x1`` and three ticks at once. ``mode``:

    * ``ok``: everything right (ticks 1, 2, 3);
    * ``wrong``: ``soak_echo`` answered with a result that is not what was sent;
    * ``gap``: the ticks are 1, 2, 4;
    * ``close``: a close frame (1011) after the first reply.
    """

    def talk(self, conn: socket.socket) -> None:
        while (got := next_frame(conn)) is not None:
            msg = orjson.loads(got[1])
            m, params, cid = msg["method"], msg["params"], msg["id"]
            if m == "soak_subscribe":
                out = [{"jsonrpc": "2.0", "id": cid, "result": "0x1"}]
                ticks = (1, 2, 4) if self.mode == "gap" else (1, 2, 3)
                out += [{"jsonrpc": "2.0", "method": "soak_subscription",
                         "params": {"subscription": "0x1", "result": t}} for t in ticks]
            elif m == "soak_echo":
                out = [{"jsonrpc": "2.0", "id": cid,
                        "result": params[0] + ("!" if self.mode == "wrong" else "")}]
            else:
                out = [{"jsonrpc": "2.0", "id": cid, "result": params[0] + params[1]}]
            conn.sendall(b"".join(frame(0x1, orjson.dumps(o)) for o in out))
            if self.mode == "close":
                conn.sendall(frame(0x8, (1011).to_bytes(2, "big")))
                return


@pytest.fixture
def scripted():
    yield from servers(Scripted)


def run_client(port: int, seconds: float = 1.0) -> dict:
    """Two connections, both subscribers, through connect, steady and drain."""
    cmd = [sys.executable, str(CLIENT), "--port", str(port), "--count", "2",
           "--source", "127.0.0.1", "--subscribe-pct", "100", "--calls-per-s", "20",
           "--churn", "0", "--call-timeout", "2", "--close-timeout", "2", "--lifetime", "30"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def until(event: str) -> dict:
        while True:
            line = p.stdout.readline()
            assert line, p.stderr.read()
            obj = json.loads(line)
            if obj["event"] == event:
                return obj

    try:
        until("ready")
        p.stdin.write("connect\n")
        p.stdin.flush()
        assert until("connected")["ok"] == 2
        p.stdin.write("steady\n")
        p.stdin.flush()
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            until("status")
        p.stdin.write("drain\n")
        p.stdin.flush()
        drained = until("drained")
        assert p.wait(10) == 0
        return drained
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stdin.close()
        p.stderr.close()


def test_client_counts_a_correct_server_as_clean(scripted):
    res = run_client(scripted("ok").port)
    assert res["errors"] == {}
    assert res["subscribed"] == 2 and res["notifications"] == 6
    assert res["calls_ok"] > 0 and res["calls_ok"] + res["calls_abandoned"] == res["calls_sent"]
    # the drain closes one connection cleanly (answered) and resets the other
    assert (res["closed_clean"], res["closed_reset"]) == (1, 1)


def test_client_counts_a_wrong_result(scripted):
    res = run_client(scripted("wrong").port)
    assert res["errors"].get("a wrong reply", 0) >= 1, res["errors"]
    assert set(res["errors"]) == {"a wrong reply"}


def test_client_counts_a_gap_in_the_ticks(scripted):
    res = run_client(scripted("gap").port)
    assert res["errors"] == {"notifications missed (a gap in the ticks)": 2}
    assert res["notifications_missed"] == 2 and res["notifications"] == 6


def test_client_counts_a_server_close(scripted):
    res = run_client(scripted("close").port)
    assert res["errors"] == {"closed by the server (1011)": 2}
    assert res["open"] == 0 and res["closed_clean"] == 0
