"""``benchmarks/http_load.py`` must not report requests that were answered wrong. These
tests check its probe (no wrk needed) and the wrk Lua script's per-response check
(needs ``wrk``: skipped when it is not installed, ``apt-get install wrk``) against a
tiny HTTP/1.1 keep-alive server that answers right or wrong on purpose, and the
aiohttp peer's answers. No speed is asserted."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
import http_load  # noqa: E402

RIGHT = b'{"jsonrpc":"2.0","result":"0x10d4f","id":1}'

# mode: (status, content type, body); "right*" modes must pass the checks, the rest fail.
MODES = {
    "right": (200, "application/json", RIGHT),
    "right-spaced": (200, "application/json; charset=utf-8",
                     b' { "id" : 1 , "jsonrpc":"2.0",\n "result": "0x10d4f" } '),
    "wrong-result": (200, "application/json", b'{"jsonrpc":"2.0","result":"0x10d50","id":1}'),
    "wrong-id": (200, "application/json", b'{"jsonrpc":"2.0","result":"0x10d4f","id":2}'),
    "extra-member": (200, "application/json",
                     b'{"jsonrpc":"2.0","result":"0x10d4f","id":1,"error":null}'),
    "error-reply": (200, "application/json",
                    b'{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},'
                    b'"id":1}'),
    "not-json": (200, "application/json", b"0x10d4f"),
    "text-plain": (200, "text/plain", RIGHT),
    "status-405": (405, "text/plain", b"method not allowed\n"),
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, ctype, body = MODES[self.server.mode]  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tiny():
    made = []

    def make(mode: str) -> int:
        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        srv.mode = mode  # type: ignore[attr-defined]
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        made.append(srv)
        return srv.server_address[1]

    yield make
    for srv in made:
        srv.shutdown()
        srv.server_close()


# -- the probe (no wrk) ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(MODES))
def test_probe(tiny, mode):
    pr = http_load.probe(tiny(mode))
    assert pr["ok"] is mode.startswith("right"), pr
    if pr["ok"]:
        assert pr["keep_alive"] is True
    if mode == "status-405":
        assert pr["status"] == 405 and "405" in http_load.describe(pr)


def test_aiohttp_peer_answers_the_benchmark_request():
    pytest.importorskip("aiohttp")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.Popen([sys.executable, "benchmarks/peers/http_aiohttp.py", "--port", str(port)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    try:
        assert "listening" in p.stdout.readline()
        pr = http_load.probe(port)
        assert pr["ok"] and pr["keep_alive"], pr
    finally:
        p.terminate()
        p.wait(timeout=10)
        p.stdout.close()


# -- the wrk script --------------------------------------------------------------------------

needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None,
                               reason="wrk is not installed (apt-get install wrk)")


@needs_wrk
@pytest.mark.parametrize("mode", list(MODES))
def test_wrk_script_counts_mismatches(tiny, mode):
    port = tiny(mode)
    res = http_load.wrk(port, conns=2, seconds=1, cpus=None)  # parses the JSON line wrk printed
    assert res["requests"] > 0 and res["responses"] >= res["requests"]
    if mode.startswith("right"):
        assert res["mismatches"] == 0, res["first_mismatch"]
        assert res["socket_errors"] == 0 and res["first_mismatch"] == ""
    else:
        assert res["mismatches"] == res["responses"], res  # every response was wrong
        assert res["first_mismatch"].startswith(f"status {MODES[mode][0]}"), res
    if mode == "status-405":
        assert res["status_errors"] > 0  # wrk's own count of non-2xx, beside ours


@needs_wrk
def test_run_with_a_mismatch_is_invalid(tiny):
    """The whole path: a wrong server gives an invalid row, a right one a valid row."""

    class Srv:
        def __init__(self, port: int) -> None:
            self.port, self.pid = port, os.getpid()
            self.spec = http_load.SERVERS["aiohttp"]
            self.loop = "asyncio"

        def alive(self) -> bool:
            return True

    args = type("A", (), {"warmup": 0, "duration": 1})()
    sc = http_load.SCENARIOS["1"]
    bad = http_load.run_scenario(Srv(tiny("wrong-result")), sc, args, None)
    good = http_load.run_scenario(Srv(tiny("right")), sc, args, None)
    assert bad["valid"] is False and bad["mismatches"] > 0
    assert good["valid"] is True and good["mismatches"] == 0
    assert good["requests"] > 0 and good["server_cpu_us_per_req"] is not None
