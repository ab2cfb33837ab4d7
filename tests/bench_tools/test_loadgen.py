"""The load generator behind ``benchmarks/load.py`` verifies every reply; these tests
hold both of its engines (the compiled loop and the Python one) to that, against the
real JSON-RPC example server and against a scripted server that misbehaves on purpose.
A benchmark whose client miscounted or let a wrong reply through would report numbers
for work that was never done."""
from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import time
from array import array
from pathlib import Path

import orjson
import pytest

from _wsserver import ScriptedServer, frame, read_frame, servers

ROOT = Path(__file__).resolve().parents[2]
LOADGEN = ROOT / "benchmarks" / "loadgen.py"
ENGINES = ("compiled", "python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_loadgen(port: int, tmp_path: Path, engine: str, conns: int, depth: int,
                seconds: float = 0.4, echo_ok: bool = False) -> tuple[dict, array]:
    lat = tmp_path / f"lat-{engine}-{conns}-{depth}.bin"
    cmd = [sys.executable, str(LOADGEN), "--port", str(port), "--conns", str(conns),
           "--depth", str(depth), "--latency-file", str(lat), "--engine", engine]
    if echo_ok:
        cmd.append("--echo-ok")
    p = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        now = time.monotonic_ns()
        t_start = now + 100_000_000
        t_end = t_start + int(seconds * 1e9)
        p.stdin.write(f"{t_start} {t_end} {t_end + 2_000_000_000}\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    lats = array("q")
    lats.frombytes(lat.read_bytes())
    return res, lats


@pytest.fixture(scope="module")
def rpc_server():
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "examples/rpc_server.py", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert "listening" in line, line
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("conns,depth", [(1, 1), (1, 32), (8, 1), (4, 3)])
def test_every_reply_verified_against_the_real_server(rpc_server, tmp_path, engine, conns,
                                                      depth):
    res, lats = run_loadgen(rpc_server, tmp_path, engine, conns, depth)
    assert res["engine"] == engine
    assert res["errors"] == 0, res["error_samples"]
    assert res["answered"] > 0
    # Every request sent was answered once, the drain included; one latency per answer.
    assert res["received"] == res["sent"]
    assert len(lats) == res["answered"]
    assert min(lats) > 0
    # Three methods x ring ids per connection: the dict of validated replies fills up.
    assert 0 < res["known_replies"] <= 256


# -- a scripted server ---------------------------------------------------------------


class Scripted(ScriptedServer):
    """Answers the handshake, then each request as ``mode`` says:

    * ``wrong``: ``echo`` answered with a wrong result, the rest correctly;
    * ``ping``: a ping before the first reply, and no replies until the pong comes
      back with the same payload;
    * ``close``: a close frame (1011) after ten replies;
    * ``split``: every reply written in two parts, the first cut inside its header.
    """

    def __init__(self, mode: str):
        self.pongs = 0
        super().__init__(mode, backlog=16)

    def talk(self, conn: socket.socket) -> None:
        replies = 0
        if self.mode == "ping":
            conn.sendall(frame(0x9, b"are you there"))
        while True:
            op, data = read_frame(conn)
            if op == 0x8:
                conn.sendall(frame(0x8, data[:2]))
                return
            if op == 0xA:
                assert data == b"are you there"
                self.pongs += 1
                continue
            msg = orjson.loads(data)
            result = {"echo": lambda a: a[0], "add": lambda a: a[0] + a[1],
                      "eth_blockNumber": lambda a: "0x10d4f"}[msg["method"]](msg["params"])
            if self.mode == "wrong" and msg["method"] == "echo":
                result = "not what was sent"
            out = frame(0x1, orjson.dumps({"jsonrpc": "2.0", "id": msg["id"],
                                           "result": result}))
            replies += 1
            if self.mode == "close" and replies > 10:
                conn.sendall(frame(0x8, struct.pack("!H", 1011) + b"going away"))
                return
            if self.mode == "split":
                conn.sendall(out[:1])
                time.sleep(0.0005)
                conn.sendall(out[1:])
            else:
                conn.sendall(out)


@pytest.fixture
def scripted():
    yield from servers(Scripted)


@pytest.mark.parametrize("engine", ENGINES)
def test_wrong_result_is_an_error(scripted, tmp_path, engine):
    srv = scripted("wrong")
    res, _ = run_loadgen(srv.port, tmp_path, engine, conns=2, depth=1)
    # Request 1 is an echo: each connection's first reply is wrong, is not taken as an
    # answer, and its request is still in flight when the run ends (depth 1: nothing
    # more is sent on that connection). Two errors per connection, nothing answered.
    assert res["errors"] == 4, res["error_samples"]
    assert sum("wrong result for id 1" in s and "not what was sent" in s
               for s in res["error_samples"]) == 2
    assert sum("1 replies still missing" in s for s in res["error_samples"]) == 2
    assert res["answered"] == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_server_close_is_an_error(scripted, tmp_path, engine):
    srv = scripted("close")
    res, _ = run_loadgen(srv.port, tmp_path, engine, conns=3, depth=1)
    assert res["errors"] >= 3
    assert any("close code 1011" in s and "going away" in s for s in res["error_samples"])


@pytest.mark.parametrize("engine", ENGINES)
def test_ping_is_answered_and_replies_counted(scripted, tmp_path, engine):
    srv = scripted("ping")
    res, lats = run_loadgen(srv.port, tmp_path, engine, conns=2, depth=2, seconds=0.3)
    assert res["errors"] == 0, res["error_samples"]
    deadline = time.monotonic() + 5  # the server's threads may still be reading
    while srv.pongs < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.pongs == 2
    assert res["answered"] > 0 and len(lats) == res["answered"]


@pytest.mark.parametrize("engine", ENGINES)
def test_replies_split_across_reads(scripted, tmp_path, engine):
    srv = scripted("split")
    res, lats = run_loadgen(srv.port, tmp_path, engine, conns=2, depth=1, seconds=0.3)
    assert res["errors"] == 0, res["error_samples"]
    assert res["answered"] > 0 and res["received"] == res["sent"]
