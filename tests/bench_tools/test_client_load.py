"""``benchmarks/client_worker.py`` checks every result; these tests hold each client
adapter to that against a scripted server that answers wrong on purpose, and check
how ``client_load.py`` turns repeats into rows and ratios into goals. No speed is
asserted anywhere."""
from __future__ import annotations

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
WORKER = BENCH / "client_worker.py"


def worker_env() -> dict[str, str]:
    """This tree first on the worker's path; ``BENCH_FASTRPC_PATH=DIR`` puts another
    tree before it (to check the fastrpc adapter against a client being written there,
    as ``client_load.py --fastrpc-path DIR`` does)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.environ.get("BENCH_FASTRPC_PATH"),
                                                      str(ROOT), env.get("PYTHONPATH")]))
    return env


def probe(client: str) -> dict:
    p = subprocess.run([sys.executable, str(WORKER), "--client", client, "--url", "-",
                        "--probe"], cwd=ROOT, env=worker_env(), capture_output=True, text=True,
                       timeout=60)
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=["websockets", "web3", "fastrpc"])
def client(request) -> str:
    """Each client the benchmark measures; all three come with the test extra, so one
    that does not import in the worker's environment is a failure, not a skip."""
    name = request.param
    pr = probe(name)
    assert pr["ok"], f"{name} does not import in the worker's environment: {pr['error']}"
    return name


def run_worker(port: int, client: str, conns: int, depth: int, seconds: float = 0.4,
               loop: str = "asyncio") -> dict:
    """The worker through its real protocol: ``ready``, the times line, one JSON line."""
    cmd = [sys.executable, str(WORKER), "--client", client, "--url", f"ws://127.0.0.1:{port}",
           "--conns", str(conns), "--depth", str(depth), "--loop", loop]
    p = subprocess.Popen(cmd, cwd=ROOT, env=worker_env(), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().strip()
        assert line == "ready", (line, p.stderr.read() if p.poll() is not None else "")
        now = time.monotonic_ns()
        t_start = now + 100_000_000
        t_end = t_start + int(seconds * 1e9)
        p.stdin.write(f"{t_start} {t_end} {t_end + 2_000_000_000}\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


# -- a scripted JSON-RPC server ------------------------------------------------------------


class Scripted(ScriptedServer):
    """Upgrades every connection (no extension), then answers each request (text or
    binary, in the same opcode; web3 sends binary) as ``mode`` says:

    * ``right``: every result correct;
    * ``wrong``: ``echo`` answered with a wrong result, the rest correctly;
    * ``error``: ``add`` answered with a JSON-RPC error object, the rest correctly.
    """

    def answer(self, msg: dict) -> dict:
        m, a = msg["method"], msg["params"]
        if self.mode == "error" and m == "add":
            return {"jsonrpc": "2.0", "id": msg["id"],
                    "error": {"code": -32000, "message": "scripted failure"}}
        result = {"echo": lambda: a[0], "add": lambda: a[0] + a[1],
                  "eth_blockNumber": lambda: "0x10d4f"}[m]()
        if self.mode == "wrong" and m == "echo":
            result = "not what was sent"
        return {"jsonrpc": "2.0", "id": msg["id"], "result": result}

    def talk(self, conn: socket.socket) -> None:
        while (got := next_frame(conn)) is not None:
            op, data = got
            if op == 0x9:
                conn.sendall(frame(0xA, data))
                continue
            if op not in (0x1, 0x2):
                continue
            conn.sendall(frame(op, orjson.dumps(self.answer(orjson.loads(data)))))


@pytest.fixture
def scripted():
    yield from servers(Scripted)


# -- the worker ----------------------------------------------------------------------------


@pytest.mark.parametrize("conns,depth", [(1, 4), (3, 1)])
def test_right_results_are_counted(scripted, client, conns, depth):
    srv = scripted("right")
    res = run_worker(srv.port, client, conns, depth)
    assert res["errors"] == 0, res["error_samples"]
    assert res["answered"] > 0
    assert res["total_answered"] >= res["answered"]
    assert res["client_user_s"] + res["client_sys_s"] >= 0 and res["window_s"] > 0.3


def test_wrong_result_is_an_error(scripted, client):
    srv = scripted("wrong")
    res = run_worker(srv.port, client, conns=2, depth=2)
    # A third of the calls are echo calls, each answered wrong; the callers go on.
    assert res["errors"] > 0
    assert any("wrong result for echo" in s and "not what was sent" in s
               for s in res["error_samples"]), res["error_samples"]
    assert res["answered"] > 0  # the right answers still count, the wrong ones do not


def test_error_reply_is_an_error(scripted, client):
    srv = scripted("error")
    res = run_worker(srv.port, client, conns=1, depth=3)
    # request 2 of every ring of three is add(): an error reply ends each caller.
    assert res["errors"] >= 3, res["error_samples"]
    assert any("add(" in s and "scripted failure" in s for s in res["error_samples"]), \
        res["error_samples"]


def test_uvloop(scripted, client):
    pytest.importorskip("uvloop")
    srv = scripted("wrong")
    res = run_worker(srv.port, client, conns=1, depth=2, loop="uvloop")
    assert res["loop"] == "uvloop"
    assert res["errors"] > 0 and res["answered"] > 0


# -- the report ------------------------------------------------------------------------------


sys.path.insert(0, str(BENCH))
import client_load  # noqa: E402


def row(client: str, loop: str, sc: str, us: float, rate: float = 1000.0, **kw) -> dict:
    r = {"client": client, "label": client_load.CLIENTS[client].label, "loop": loop,
         "scenario": sc, "valid": True, "calls_per_s": rate, "client_cpu_us_per_call": us,
         "client_sys_us_per_call": us / 4, "client_exact_us_per_call": us,
         "calls_per_client_cpu_s": 1e6 / us, "client_cores": 1.0,
         "server_cpu_us_per_call": 5.0, "server_cores": 0.2, "other_cores": 0.0}
    r.update(kw)
    return r


def test_combine_takes_the_median_and_invalid_wins():
    reps = [row("websockets", "asyncio", "b", us) for us in (30.0, 10.0, 20.0, 40.0)]
    r = client_load.combine(reps)
    assert r["client_cpu_us_per_call"] == 20.0  # the lower middle of four
    assert r["client_cpu_us_per_call_range"] == [10.0, 40.0]
    reps[2]["valid"] = False
    assert client_load.combine(reps)["valid"] is False


def test_goals_are_ratios_of_client_cpu_per_call():
    data = {"scenarios": {k: {"title": s.title, "short": s.short}
                          for k, s in client_load.SCENARIOS.items()},
            "clients": {k: {"label": c.label} for k, c in client_load.CLIENTS.items()},
            "runs": [row("fastrpc", "asyncio", "b", 10.0),
                     row("websockets", "asyncio", "b", 60.0),   # 6x: met (goal 5x)
                     row("web3", "asyncio", "b", 150.0)]}       # 15x: not met (goal 20x)
    lines = client_load.goals(data)
    ws = next(ln for ln in lines if "websockets" in ln)
    w3 = next(ln for ln in lines if "web3" in ln)
    assert "6.00×" in ws and "**yes**" in ws
    assert "15.0×" in w3 and "**no**" in w3
    # Without a fastrpc row there is no goal to judge.
    data["runs"] = data["runs"][1:]
    assert "Not measured" in client_load.goals(data)[0]
