"""The demo node, as a user runs it: ``python -m fastrpc.demo --port P``, in a subprocess.

Every documented method is called over WebSocket, ``faulty_fail`` until its breaker
opens (-32002), ``chain_subscribe("newHeads")`` until a head arrives, ``GET /health``;
the README's client snippet is run as its own process against it, and so is every curl
command line of the README (JSON-RPC over HTTP), read from README.md; then SIGTERM must
close the open connection with 1001 and end the process with status 0 in time. The demo
runs on the same loop as the test (``--loop asyncio`` / ``--loop uvloop``).
"""
from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import signal
import socket
import sys

import orjson
from httpclient import HttpConn
from rawclient import http_request
from rpcclient import RpcClient, RpcError

from fastrpc.errors import INTERNAL_ERROR, REQUEST_TIMEOUT, SERVICE_UNAVAILABLE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
START_WAIT = 20.0  #: seconds for the demo to print its address
CALL_WAIT = 10.0
EXIT_WAIT = 20.0  #: SIGTERM to exit: drain (10 s at most) plus closing handshakes
HEAD_WAIT = 5.0  #: the demo publishes a head every second

#: The client snippet the README shows, verbatim (only the port is changed to the demo's).
README_SNIPPET = """\
import asyncio, fastrpc
async def main():
    async with fastrpc.connect("ws://127.0.0.1:8546") as c:
        print(await c.call("chain_blockNumber"))
asyncio.run(main())
"""


README = os.path.join(ROOT, "README.md")
README_URL = "http://127.0.0.1:8546"


def readme_curl_lines() -> list[str]:
    with open(README, encoding="utf-8") as f:
        return sorted({line.strip() for line in f if line.startswith("curl ")})


def readme_curl_commands() -> list[str]:
    """Every JSON-RPC-over-HTTP curl command line in the README, as written there."""
    return [c for c in readme_curl_lines() if " -d " in c]


def readme_metrics_commands() -> list[str]:
    """The README's curl lines that scrape ``/metrics`` (a shell pipeline each)."""
    return [c for c in readme_curl_lines() if "/metrics" in c]


def curl_request_bytes(argv: list[str]) -> bytes:
    """What curl sends for ``curl [-s] [-H h]... -d data URL`` (the fallback when curl is
    not installed: the same request from a raw socket)."""
    headers: list[str] = []
    data = b""
    url = argv[-1]
    i = 1
    while i < len(argv) - 1:
        if argv[i] == "-H":
            headers.append(argv[i + 1])
            i += 2
        elif argv[i] == "-d":
            data = argv[i + 1].encode()
            i += 2
        else:
            i += 1
    if not any(h.lower().startswith("content-type:") for h in headers):
        headers.append("Content-Type: application/x-www-form-urlencoded")  # curl's -d default
    host = url.split("//", 1)[1].split("/", 1)[0]
    lines = ["POST / HTTP/1.1", f"Host: {host}", "User-Agent: curl/8", "Accept: */*", *headers,
             f"Content-Length: {len(data)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


async def run_curl(command: str, port: int) -> str:
    """Run a README curl command against ``port``; its standard output."""
    argv = shlex.split(command.replace(README_URL, f"http://127.0.0.1:{port}"))
    assert argv[0] == "curl" and argv[-1] == f"http://127.0.0.1:{port}", argv
    if shutil.which("curl") is None:  # pragma: no cover - curl is in the test image
        async with await HttpConn.open(port) as conn:  # keep-alive: read one response
            await conn.send(curl_request_bytes(argv))
            resp = await conn.read_response()
        return str(resp.status) if "-w" in argv else resp.body.decode()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CALL_WAIT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    return out.decode()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e["PYTHONUNBUFFERED"] = "1"
    return e


async def start_demo(port: int, loop_name: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fastrpc.demo", "--port", str(port), "--loop", loop_name,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env(),
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), START_WAIT)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    if f"ws://127.0.0.1:{port}".encode() not in line:
        proc.kill()
        _out, err = await proc.communicate()
        raise AssertionError(f"the demo did not start: {line!r} {err.decode(errors='replace')[-2000:]}")
    return proc


async def run_snippet(port: int) -> str:
    with open(README, encoding="utf-8") as f:
        assert README_SNIPPET in f.read(), "the README's client snippet changed: update README_SNIPPET"
    code = README_SNIPPET.replace("ws://127.0.0.1:8546", f"ws://127.0.0.1:{port}")
    assert code != README_SNIPPET
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT, env=env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CALL_WAIT * 2)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")
    return out.decode()


def test_demo_node(run, loop_name):
    async def body():
        port = free_port()
        proc = await start_demo(port, loop_name)
        stayer = None
        try:
            async with await RpcClient.open(port) as c:
                # A call that times out runs alongside the others (2 s in the demo).
                too_slow = await c.request("slow_sleep", [3])

                assert await c.call("net_version") == "1337"
                head = await c.call("chain_blockNumber")
                assert isinstance(head, str) and head.startswith("0x")
                block = await c.call("chain_getBlock", [0])
                assert block["number"] == "0x0" and block["hash"].startswith("0x") and len(block["hash"]) == 66
                assert await c.call("chain_getBlock", [10**9]) is None
                try:
                    await c.call("chain_getBlock", [-1])
                    raise AssertionError("a negative block number must be refused")
                except RpcError as e:
                    assert e.code == -32602
                assert await c.call("slow_sleep", [0.01]) == 0.01

                # faulty_fail: -32603 until its breaker opens (threshold 3), then -32002.
                codes = []
                for _ in range(10):
                    try:
                        await c.call("faulty_fail")
                        raise AssertionError("faulty_fail returned a result")
                    except RpcError as e:
                        codes.append(e.code)
                        assert "RuntimeError" not in e.message and "traceback" not in e.message
                        if e.code == SERVICE_UNAVAILABLE:
                            break
                assert codes == [INTERNAL_ERROR] * 3 + [SERVICE_UNAVAILABLE], codes
                assert await c.call("net_version") == "1337"  # the other namespaces are fine

                sub_id = await c.call("chain_subscribe", ["newHeads"])
                (note,) = (await c.wait_notifications(1, HEAD_WAIT))[:1]
                assert note["method"] == "chain_subscription"
                assert note["params"]["subscription"] == sub_id
                new_head = note["params"]["result"]
                assert set(new_head) == {"number", "hash", "timestamp"}
                assert int(new_head["number"], 16) >= 1
                assert int(await c.call("chain_blockNumber"), 16) >= int(new_head["number"], 16)

                reply = await asyncio.wait_for(too_slow, CALL_WAIT)
                assert reply["error"]["code"] == REQUEST_TIMEOUT, reply

                health = await http_request(port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert health.status == 200, health
                body_json = json.loads(health.body)
                assert body_json["status"] == "ok" and body_json["connections"] >= 1

                # The README's client snippet, run as its own program.
                out = await run_snippet(port)  # fastrpc.Client prints the result itself
                assert out.strip().startswith("0x") and int(out.strip(), 16) >= 0, out
                print(f"\nREADME snippet printed: {out.strip()}")

                # The README's curl command lines (JSON-RPC over HTTP), run as written.
                commands = readme_curl_commands()
                assert commands and all("-H 'Content-Type: application/json'" in cmd for cmd in commands)
                for command in commands:
                    out = await run_curl(command, port)
                    answer = orjson.loads(out)
                    assert answer["id"] == 1 and answer["result"].startswith("0x"), out
                    # Without the header curl declares a form: 415, as go-ethereum answers.
                    bare = command.replace("-H 'Content-Type: application/json' ", "")
                    bare = bare.replace("curl -s ", "curl -s -o /dev/null -w '%{http_code}' ")
                    assert await run_curl(bare, port) == "415"
                print(f"README curl printed: {out.strip()}")
                # The README's /metrics line, run as written (a pipeline), after those calls.
                (metrics_cmd,) = readme_metrics_commands()
                sh = await asyncio.create_subprocess_exec(
                    "bash", "-o", "pipefail", "-c",
                    metrics_cmd.replace(README_URL, f"http://127.0.0.1:{port}"),
                    stdout=asyncio.subprocess.PIPE)
                out_b, _ = await asyncio.wait_for(sh.communicate(), CALL_WAIT)
                assert sh.returncode == 0
                lines = out_b.decode().splitlines()
                assert lines and all(line.startswith("fastrpc_rpc_requests_total{") for line in lines)
                assert any('method="chain_blockNumber",outcome="success"' in line for line in lines), lines
                assert c.unexpected == []

            # SIGTERM with a connection open: closed with 1001, exit status 0.
            stayer = await RpcClient.open(port)
            assert await stayer.call("net_version") == "1337"
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(stayer._reader, EXIT_WAIT)
            assert stayer.close_rcvd is not None and stayer.close_rcvd.code == 1001, stayer.closed_with
            await asyncio.wait_for(proc.wait(), EXIT_WAIT)
            _out, err = await asyncio.wait_for(proc.communicate(), EXIT_WAIT)
            assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
        finally:
            if stayer is not None:
                await stayer.close()
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()

    run(body(), timeout=90)
