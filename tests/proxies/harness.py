"""Real processes for the proxy tests: fastrpc nodes (``fastrpc serve``), HAProxy and
nginx, each started from its binary with a config generated in a temporary directory, on
127.0.0.1 only. Every wait is bounded; ``Procs.close()`` kills whatever is still running.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import websockets

from procs import Proc  # noqa: F401  (re-exported: the proxies tests use it)

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "tests" / "proxies" / "install.sh"
SBIN = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))


def find_binaries() -> dict[str, str]:
    """haproxy and nginx, installed by ``install.sh`` when missing. Raises (never skips)
    when they cannot be installed: CI must not pass with the proxy tests silently gone."""
    def which() -> dict[str, str | None]:
        return {b: shutil.which(b, path=SBIN) for b in ("haproxy", "nginx")}

    found = which()
    if None in found.values():
        r = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=600)
        found = which()
        if r.returncode != 0 or None in found.values():
            raise RuntimeError(f"{INSTALL} could not install haproxy/nginx (exit {r.returncode}):\n"
                               f"{r.stdout}{r.stderr}")
    return found  # type: ignore[return-value]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


class Node:
    """``python -m fastrpc serve tests.apps.proxy_app:build`` on a free port."""

    def __init__(self, name: str, *, agent: bool = False, **env: str) -> None:
        self.name = name
        self.agent_port = free_port() if agent else None
        e = dict(os.environ, NODE_NAME=name, PYTHONPATH=os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        if self.agent_port is not None:
            e["NODE_AGENT_PORT"] = str(self.agent_port)
        e.update({f"NODE_{k.upper()}": v for k, v in env.items()})
        self.proc = Proc([sys.executable, "-m", "fastrpc", "serve", "tests.apps.proxy_app:build",
                          "--port", "0", "--loop", "asyncio"], env=e)
        self.port = 0

    def ready(self) -> "Node":
        self.port = int(self.proc.expect(r"fastrpc worker listening on 127\.0\.0\.1:(\d+)")[1])
        return self


class HAProxy:
    """``haproxy -f cfg -db`` with a stats socket for reading its view of the servers."""

    def __init__(self, binary: str, workdir: Path, config: str) -> None:
        self.dir = workdir
        self.sock = workdir / "admin.sock"
        self.port = free_port()
        cfg = workdir / "haproxy.cfg"
        cfg.write_text(config.format(port=self.port, sock=self.sock))
        self.proc = Proc([binary, "-f", str(cfg), "-db"], cwd=workdir)
        wait_for(lambda: self.sock.exists() and self._try_stat(), 10, "haproxy's stats socket")

    def _try_stat(self) -> bool:
        try:
            self.stat()
            return True
        except OSError:
            return False

    def command(self, cmd: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.sock))
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stat(self, backend: str = "nodes") -> dict[str, dict[str, str]]:
        """``show stat`` rows of ``backend``'s servers, by server name."""
        lines = self.command("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = {}
        for line in lines[1:]:
            if not line:
                continue
            row = dict(zip(header, line.split(",")))
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND"):
                rows[row["svname"]] = row
        return rows


class Nginx:
    def __init__(self, binary: str, workdir: Path, config: str) -> None:
        self.port = free_port()
        conf = workdir / "nginx.conf"
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers stay able to read workdir
        conf.write_text(user + config.format(port=self.port, dir=workdir))
        self.proc = Proc([binary, "-p", str(workdir), "-c", str(conf), "-e", "stderr",
                          "-g", "daemon off;"], cwd=workdir)

        def listening() -> bool:
            if self.proc.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {self.proc.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False

        wait_for(listening, 10, "nginx to listen")


class Procs:
    """Every process a test started; ``close()`` stops them all (teardown)."""

    def __init__(self) -> None:
        self.all: list[Proc] = []

    def nodes(self, *names: str, **kw: Any) -> list[Node]:
        started = [Node(n, **kw) for n in names]  # start them all, then wait: in parallel
        self.all.extend(n.proc for n in started)
        return [n.ready() for n in started]

    def add(self, thing: Any) -> Any:
        self.all.append(thing.proc)
        return thing

    def close(self) -> None:
        for p in self.all:
            p.close()


# --- JSON-RPC over WebSocket and HTTP, bounded ---------------------------------------

async def call(ws: Any, method: str, *params: Any, rid: int = 1) -> Any:
    await ws.send(json.dumps({"jsonrpc": "2.0", "id": rid, "method": method, "params": list(params)}))
    reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert reply["id"] == rid, reply
    return reply["result"]


async def connect(port: int, local: str = "127.0.0.1", headers: list[tuple[str, str]] | None = None) -> Any:
    return await websockets.connect(f"ws://127.0.0.1:{port}", compression=None, open_timeout=5,
                                    local_addr=(local, 0), additional_headers=headers or [])


async def post(port: int, method: str, *params: Any, local: str = "127.0.0.1",
               headers: list[tuple[str, str]] | None = None) -> Any:
    """One JSON-RPC POST on its own connection; returns the result (raises on an error)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers or [])
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0)), 5)
    try:
        writer.write((f"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      f"Connection: close\r\n{extra}Content-Length: {len(body)}\r\n\r\n").encode() + body)
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        raise AssertionError(f"POST answered {status}: {data[:200]!r}")
    return json.loads(payload)["result"]
