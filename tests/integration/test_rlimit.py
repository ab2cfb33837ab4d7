"""Starting under a stock desktop RLIMIT_NOFILE (soft 1,024, a higher hard limit).

``start()`` raises the soft limit to ``max_connections + FD_RESERVE`` when the hard limit
allows it, and refuses with a clear ValueError (changing nothing) only when it does not.
Every case runs in a child process, so pytest's own limit is never touched; the demo
node is started the way a user starts it, under soft 1,024.
"""
from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys

import pytest

from fastrpc.limits import Limits
from fastrpc.server import FD_RESERVE

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
WAIT = 30.0  #: bound on one child's run

#: Descriptors the default limits (max_connections = 10,000) need.
NEEDED = Limits().max_connections + FD_RESERVE
STOCK_SOFT = 1024
_hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
#: The hard limit the children run under (our own hard limit caps what they may set).
HARD = 20_000 if _hard == resource.RLIM_INFINITY else min(_hard, 20_000)

pytestmark = pytest.mark.skipif(HARD < NEEDED, reason=f"hard RLIMIT_NOFILE {_hard} < {NEEDED}")

#: Lowers its own limit to (argv[1], argv[2]), starts ``Server()`` with the default
#: limits, prints what happened as JSON.
CHILD = """\
import asyncio, json, resource, sys
from fastrpc.server import Server
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2])))

async def main():
    server = Server()
    try:
        await server.start("127.0.0.1", 0)
    except ValueError as e:
        return {"error": str(e), "rlimit": resource.getrlimit(resource.RLIMIT_NOFILE)}
    rlimit = resource.getrlimit(resource.RLIMIT_NOFILE)
    await server.stop()
    return {"rlimit": rlimit}

print(json.dumps(asyncio.run(main())))
"""


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def start_default_server(soft: int, hard: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(soft), str(hard)],
        capture_output=True, text=True, timeout=WAIT, env=env(), cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_soft_limit_raised_toward_the_hard_limit():
    out = start_default_server(STOCK_SOFT, HARD)
    assert "error" not in out, out["error"]
    soft, hard = out["rlimit"]
    assert soft >= NEEDED
    assert hard == HARD


def test_hard_limit_too_low_refuses_and_changes_nothing():
    for hard in (STOCK_SOFT, NEEDED - 1):
        out = start_default_server(STOCK_SOFT, hard)
        assert "max_connections=10000 needs more open files" in out["error"]
        assert f"hard {hard}" in out["error"]
        assert out["rlimit"] == [STOCK_SOFT, hard]


def open_files_limit(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no 'Max open files' in /proc/<pid>/limits")


def health_status(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def test_demo_node_starts_under_a_stock_desktop_limit():
    # ``python -m fastrpc.demo --port 0``, after lowering the limit in the same process.
    code = (
        "import resource, runpy, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({STOCK_SOFT}, {HARD})); "
        "sys.argv = ['fastrpc.demo', '--port', '0', '--loop', 'asyncio']; "
        "runpy.run_module('fastrpc.demo', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(env(), PYTHONUNBUFFERED="1"), cwd=REPO,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], WAIT)
        line = proc.stdout.readline() if ready else b""
        assert b"fastrpc demo node on ws://127.0.0.1:" in line, (line, proc.poll())
        soft, hard = open_files_limit(proc.pid)
        assert soft >= NEEDED and hard == HARD
        port = int(line.split(b"ws://127.0.0.1:")[1].split(b" ")[0])
        assert health_status(port) == 200  # serving (and its SIGTERM handler is in place)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
