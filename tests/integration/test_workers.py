"""``fastrpc serve module:app --workers N``: real processes sharing one port with SO_REUSEPORT.

Each test starts the command as a subprocess on 127.0.0.1 (port 0: the supervisor picks
one and prints it), talks JSON-RPC to it with the websockets client, and signals or
kills processes. Every wait is bounded.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import websockets
from procs import Proc

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def command():
    started: list[Proc] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Proc:
        # a supervisor stops its workers on SIGTERM
        c = Proc([sys.executable, "-m", "fastrpc", *args], env=env)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()


def start_workers(command, n: int, app: str = "tests.apps.worker_app:build",
                  env: dict[str, str] | None = None) -> tuple[Proc, int, set[int]]:
    sup = command("serve", app, "--port", "0", "--workers", str(n), "--loop", "asyncio", env=env)
    port = int(sup.expect(r"serving .* on 127\.0\.0\.1:(\d+) with")[1])
    pids = {int(sup.expect(r"fastrpc worker listening on 127\.0\.0\.1:%d \(worker \d+, pid (\d+)\)" % port)[1])
            for _ in range(n)}
    return sup, port, pids


async def call(ws, method: str, *params, rid: int = 1):
    await ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": list(params)}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert reply["id"] == rid
    return reply["result"]


async def whoami_over(port: int, n: int) -> list[int]:
    """``whoami`` over ``n`` fresh connections (the kernel spreads them over the workers)."""
    async def one() -> int:
        async with websockets.connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            return await call(ws, "whoami")
    return list(await asyncio.gather(*(one() for _ in range(n))))


def alive(pid: int) -> bool:
    """Running (a zombie left for an init that does not reap counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_share_the_port(command):
    sup, port, pids = start_workers(command, 2)
    assert len(pids) == 2 and sup.proc.pid not in pids
    answered = asyncio.run(whoami_over(port, 64))
    # SO_REUSEPORT hashes each connection to one worker: with 64 both get some.
    assert set(answered) == pids


def test_a_killed_worker_is_restarted(command):
    sup, port, pids = start_workers(command, 2)
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    sup.expect(r"worker \d+ \(pid %d\) exited with -9" % victim)
    new = int(sup.expect(r"fastrpc worker listening on .* pid (\d+)\)")[1])
    assert new not in pids
    answered = asyncio.run(whoami_over(port, 64))
    assert set(answered) == (pids - {victim}) | {new}


def test_sigterm_drains_and_stops_every_worker(command):
    sup, port, pids = start_workers(command, 2)

    async def body() -> tuple[float, int | None]:
        async with websockets.connect(f"ws://127.0.0.1:{port}", compression=None) as ws:
            await ws.send(json.dumps({"jsonrpc": "2.0", "id": 7, "method": "sleep", "params": [1.0]}))
            await asyncio.sleep(0.2)  # the call is in flight in its worker
            sup.proc.send_signal(signal.SIGTERM)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as e:
                return reply["result"], e.rcvd.code if e.rcvd else None
            raise AssertionError("the connection stayed open")

    result, code = asyncio.run(body())
    assert result == 1.0  # the request in flight finished before the close
    assert code == 1001
    assert sup.proc.wait(20) == 0
    sup.expect("fastrpc supervisor stopped")
    for pid in pids:
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(pid)


def test_an_app_that_cannot_start_stops_the_supervisor(command):
    sup = command("serve", "tests.apps.no_such_module:app", "--port", "0", "--workers", "2")
    assert sup.proc.wait(60) == 1
    sup.expect("failed to start 5 times: giving up", timeout=5)


def test_one_worker_runs_in_process(command):
    sup = command("serve", "tests.apps.worker_app:app", "--port", "0", "--loop", "asyncio")
    port = int(sup.expect(r"fastrpc worker listening on 127\.0\.0\.1:(\d+)$")[1])
    assert asyncio.run(whoami_over(port, 4)) == [sup.proc.pid] * 4
    sup.proc.send_signal(signal.SIGINT)
    assert sup.proc.wait(20) == 0


def test_workers_die_with_a_killed_supervisor(command):
    sup, port, pids = start_workers(command, 2)
    sup.proc.kill()  # SIGKILL: the supervisor cannot stop anything
    sup.proc.wait(10)
    deadline = time.monotonic() + 15
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids)


def test_bad_app_specs(monkeypatch):
    from fastrpc.workers import load_app

    monkeypatch.syspath_prepend(str(ROOT))  # what `fastrpc serve` does with its cwd

    with pytest.raises(ValueError):
        load_app("no_colon")
    with pytest.raises(TypeError):
        load_app("os:sep")  # a str, not a Server
    assert load_app("tests.apps.worker_app:build").__class__.__name__ == "Server"


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics on a fresh connection (the kernel picks the worker): samples → value."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    text = urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def wait_metric(port: int, want: dict[tuple[str, tuple[tuple[str, str], ...]], float], timeout: float = 15.0) -> None:
    """Scrape until every sample has its value: each worker mirrors its figures about
    once a second, and a scrape may land on either worker."""
    deadline = time.monotonic() + timeout
    while True:
        p = scrape(port)
        got = {k: p.get(k) for k in want}
        if got == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never reached {want}: {got}")
        time.sleep(0.2)


WHOAMI_OK = ("fastrpc_rpc_requests_total", (("method", "whoami"), ("outcome", "success")))
OPEN = ("fastrpc_connections_open", ())


@pytest.mark.parametrize("own_dir", [False, True], ids=["supervisor-dir", "PROMETHEUS_MULTIPROC_DIR"])
def test_metrics_add_up_over_the_workers(command, tmp_path, own_dir):
    env = None
    if own_dir:
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
        (tmp_path / "counter_1.db").write_bytes(b"stale")  # a previous run's: wiped at start
    else:
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    sup, port, pids = start_workers(command, 2, env=env)

    async def body() -> None:
        # Connections spread over both workers; keep them open, one call each.
        conns = []
        by_pid: dict[int, list] = {}
        for _ in range(40):
            ws = await websockets.connect(f"ws://127.0.0.1:{port}", compression=None)
            conns.append(ws)
            by_pid.setdefault(await call(ws, "whoami"), []).append(ws)
        assert set(by_pid) == pids
        wait_metric(port, {WHOAMI_OK: 40.0, OPEN: 40.0})
        # A killed worker: its gauges leave the sum, its counters stay in it.
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        sup.expect(r"worker \d+ \(pid %d\) exited with -9" % victim)
        survivors = len(conns) - len(by_pid[victim])
        wait_metric(port, {WHOAMI_OK: 40.0, OPEN: float(survivors)})
        for ws in conns:
            await ws.close()

    asyncio.run(body())
    if own_dir:
        assert not (tmp_path / "counter_1.db").exists()
        assert list(tmp_path.glob("*.db"))  # the workers' files
    sup.proc.send_signal(signal.SIGTERM)
    assert sup.proc.wait(20) == 0
