"""The load generator behind ``benchmarks/load.py`` verifies every reply; these tests
hold both of its engines (the compiled loop and the Python one) to that, against the
real JSON-RPC example server and against a scripted server that misbehaves on purpose.
A benchmark whose client miscounted or let a wrong reply through would report numbers
for work that was never done."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from array import array
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[2]
LOADGEN = ROOT / "benchmarks" / "loadgen.py"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
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


def read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    b0, b1 = read_exact(sock, 2)
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(sock, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(sock, 8))[0]
    key = read_exact(sock, 4)
    data = read_exact(sock, n)
    return b0 & 0x0F, bytes(c ^ key[i % 4] for i, c in enumerate(data))


def frame(op: int, payload: bytes) -> bytes:
    n = len(payload)
    head = bytes((0x80 | op, n)) if n < 126 else bytes((0x80 | op, 126)) + struct.pack("!H", n)
    return head + payload


class Scripted:
    """Answers the handshake, then each request as ``mode`` says:

    * ``wrong``: ``echo`` answered with a wrong result, the rest correctly;
    * ``ping``: a ping before the first reply, and no replies until the pong comes
      back with the same payload;
    * ``close``: a close frame (1011) after ten replies;
    * ``split``: every reply written in two parts, the first cut inside its header.
    """

    def __init__(self, mode: str):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.pongs = 0
        self.stop = False
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            key = [ln.split(b":", 1)[1].strip() for ln in head.split(b"\r\n")
                   if ln.lower().startswith(b"sec-websocket-key:")][0]
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                         b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
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
        except (OSError, ConnectionError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop = True
        self.sock.close()


@pytest.fixture
def scripted():
    made: list[Scripted] = []

    def make(mode: str) -> Scripted:
        s = Scripted(mode)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


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
