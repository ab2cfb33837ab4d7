"""HTTP load benchmark (issue 9 §5): JSON-RPC 2.0 over HTTP/1.1 keep-alive, fastrpc vs aiohttp.

    python benchmarks/http_load.py [--servers fastrpc,aiohttp] [--loops asyncio,uvloop]
        [--scenarios 1,64] [--duration 5] [--warmup 1] [--repeat 5] [--wait-quiet 10]
        [--fastrpc-path DIR] [--json benchmarks/results/http_load.json]
        [--markdown benchmarks/results/http_load.md]
    python benchmarks/http_load.py --from-json benchmarks/results/http_load.json

Needs ``wrk`` (``apt-get install wrk``). The load is wrk (C, one thread: ``-t 1``)
running ``benchmarks/http_rpc.lua``, which posts one JSON-RPC request
(``eth_blockNumber``) on every keep-alive connection, over and over, and checks the
status, the Content-Type and the body of every response; a run with any mismatch or
socket error is invalid. Scenarios: ``1`` connection and ``64`` connections.

Servers, each its own process on ``--loop asyncio|uvloop``, serving ``POST /``:

* ``fastrpc``: ``examples/rpc_server.py``, JSON-RPC over HTTP on the WebSocket port
  (branch ``http-rpc``). Before measuring, one probe POST checks that it answers; a
  fastrpc without HTTP support answers 4xx and is reported as not measured.
  ``--fastrpc-path DIR`` runs ``DIR/examples/rpc_server.py`` with ``DIR`` first on
  ``PYTHONPATH`` (another worktree).
* ``aiohttp``: ``benchmarks/peers/http_aiohttp.py`` (``web.post("/")`` around the
  peers' shared dispatcher ``peers/_rpc.py``; access log off; keep-alive default).

The primary metric is **server CPU time per request**: utime + stime of the server
process (``/proc/<pid>/stat``) from just before wrk starts to just after it exits,
divided by the requests wrk completed. wrk costs less per request than either server,
so each server runs at saturation (its share of a core is in the report).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

import _harness as h
from _harness import (NOISY_CORES, ROOT, ServerProcess, ServerSpec, child_env, cpu_plan,
                      machine_busy_s, pinned, proc_runtime_s, proc_user_sys_s)

LUA = ROOT / "benchmarks" / "http_rpc.lua"
BASELINE = "fastrpc"
REQUEST = b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'
EXPECTED = {"jsonrpc": "2.0", "id": 1, "result": "0x10d4f"}
MARK = "JSONRPC_CHECK "
WRK_HINT = "wrk is not installed: apt-get install wrk (Debian/Ubuntu package `wrk`)"

SERVERS: dict[str, ServerSpec] = {s.name: s for s in (
    ServerSpec(BASELINE, "examples/rpc_server.py", "fastrpc"),
    ServerSpec("aiohttp", "benchmarks/peers/http_aiohttp.py", "aiohttp"),
)}


@dataclass(frozen=True)
class Scenario:
    key: str
    conns: int
    title: str


SCENARIOS: dict[str, Scenario] = {s.key: s for s in (
    Scenario("1", 1, "1 connection (keep-alive, one request at a time)"),
    Scenario("64", 64, "64 connections (keep-alive, one request in flight on each)"),
)}


# -- checks ----------------------------------------------------------------------------------


def probe(port: int) -> dict[str, Any]:
    """POST the benchmark's request twice on one connection: does the server answer
    JSON-RPC over HTTP, and does it keep the connection open?"""
    out: dict[str, Any] = {"ok": False}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        socks = []
        for _ in range(2):
            conn.request("POST", "/", body=REQUEST, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read()
            socks.append(conn.sock)
            out.update(status=resp.status, reason=resp.reason,
                       content_type=resp.getheader("Content-Type"), body=body[:200].decode(
                           "utf-8", "replace"), allow=resp.getheader("Allow"))
            if resp.status != 200:
                return out
            try:
                ok = orjson.loads(body) == EXPECTED
            except orjson.JSONDecodeError:
                ok = False
            ctype = (resp.getheader("Content-Type") or "").lower()
            if not ok or not (ctype == "application/json" or ctype.startswith("application/json;")):
                return out
        out["ok"] = True
        out["keep_alive"] = socks[0] is not None and socks[0] is socks[1]
    except (OSError, http.client.HTTPException) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    return out


def describe(pr: dict[str, Any]) -> str:
    if "error" in pr:
        return pr["error"]
    s = f"`{pr.get('status')} {pr.get('reason')}`"
    if pr.get("allow"):
        s += f" (Allow: {pr['allow']})"
    return s + f", body {pr.get('body', '')!r}"


# -- one run ---------------------------------------------------------------------------------


def wrk(port: int, conns: int, seconds: int, cpus: set[int] | None) -> dict[str, Any]:
    """One wrk run; its JSONRPC_CHECK line, plus wrk's exit code and output tail."""
    cmd = [shutil.which("wrk") or "wrk", "-t", "1", "-c", str(conns), "-d", f"{seconds}s",
           "--timeout", "5s", "-s", str(LUA), f"http://127.0.0.1:{port}/"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60,
                       preexec_fn=pinned(cpus))
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith(MARK)), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {p.returncode}): "
                           + (p.stderr or p.stdout).strip()[-400:])
    res = json.loads(line[len(MARK):])
    res["socket_errors"] = sum(res[k] for k in ("connect_errors", "read_errors", "write_errors",
                                                 "status_errors", "timeouts"))
    return res


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_scenario(server: ServerProcess, sc: Scenario, args: argparse.Namespace,
                 client_cpus: set[int] | None) -> dict[str, Any]:
    row = h.new_row("server", server.spec.name, server.spec.label, server.loop, sc.key)
    try:
        warm = wrk(server.port, sc.conns, args.warmup, client_cpus) if args.warmup else None
        c0 = children_cpu_s()
        s_user0, s_sys0 = proc_user_sys_s(server.pid)
        rt0, busy0, t0 = proc_runtime_s(server.pid), machine_busy_s(), time.monotonic()
        res = wrk(server.port, sc.conns, args.duration, client_cpus)
        t1, busy1, rt1 = time.monotonic(), machine_busy_s(), proc_runtime_s(server.pid)
        s_user1, s_sys1 = proc_user_sys_s(server.pid)
        c1 = children_cpu_s()
    except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as e:
        row["failure"] = f"{type(e).__name__}: {e}"
        return row
    n = res["requests"]
    wall = t1 - t0
    server_cpu = (s_user1 - s_user0) + (s_sys1 - s_sys0)
    wrk_cpu = c1 - c0
    other = (busy1 - busy0) - server_cpu - wrk_cpu
    row.update({
        "conns": sc.conns, "requests": n, "responses_checked": res["responses"],
        "duration_s": res["duration_us"] / 1e6, "wall_s": round(wall, 4),
        "requests_per_s": n / (res["duration_us"] / 1e6) if res["duration_us"] else 0.0,
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_req": server_cpu * 1e6 / n if n else None,
        "server_sys_us_per_req": (s_sys1 - s_sys0) * 1e6 / n if n else None,
        "server_runtime_us_per_req": (rt1 - rt0) * 1e6 / n if n else None,
        "server_cores": server_cpu / wall,
        "wrk_cpu_us_per_req": wrk_cpu * 1e6 / n if n else None,
        "wrk_cores": wrk_cpu / wall,
        "other_cores": max(0.0, other / wall),
        "p50_us": res["p50_us"], "p99_us": res["p99_us"],
        "mismatches": res["mismatches"] + (warm["mismatches"] if warm else 0),
        "socket_errors": res["socket_errors"] + (warm["socket_errors"] if warm else 0),
        "first_mismatch": res["first_mismatch"] or (warm["first_mismatch"] if warm else ""),
        "wrk": {k: res[k] for k in ("connect_errors", "read_errors", "write_errors",
                                    "status_errors", "timeouts", "bytes")},
        "server_alive": server.alive(),
    })
    row["valid"] = (n > 0 and row["mismatches"] == 0 and row["socket_errors"] == 0
                    and res["responses"] >= n and row["server_alive"])
    return row


combine = h.combine_server_cpu  # the median run by server CPU per request, and the range


def progress_line(r: dict[str, Any]) -> str:
    head = f"{r['label']:10} {r['loop']:8} {r['scenario']:>2} conn"
    if "failure" in r:
        return f"{head}  FAILED: {r['failure']}"
    return (f"{head}  {r['requests_per_s']:9,.0f} req/s  {r['server_cpu_us_per_req']:6.2f} µs "
            f"CPU/req  server {r['server_cores']:.0%}  wrk {r['wrk_cpu_us_per_req']:.2f} µs/req  "
            f"mismatches {r['mismatches']}  socket errors {r['socket_errors']}")


# -- the whole run ---------------------------------------------------------------------------


def server_setup(name: str, fastrpc_path: Path | None) -> tuple[ServerSpec, dict[str, str]]:
    spec, env = SERVERS[name], child_env()
    if name == BASELINE and fastrpc_path is not None:
        spec = ServerSpec(spec.name, str(fastrpc_path / spec.script), spec.label)
        env["PYTHONPATH"] = os.pathsep.join([str(fastrpc_path), env["PYTHONPATH"]])
    return spec, env


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    notes: list[str] = []
    problems: list[str] = []
    names = args.servers.split(",")
    loops = args.loops.split(",")
    scenarios = [SCENARIOS[k] for k in args.scenarios.split(",")]
    server_cpus, client_cpus = cpu_plan(not args.no_pin)
    if BASELINE in names:
        _, env = server_setup(BASELINE, args.fastrpc_path)
        want = args.fastrpc_path or ROOT
        # cwd=want: ``python -c`` puts its working directory first on sys.path.
        pc = subprocess.run([sys.executable, "-c", "import fastrpc._core, fastrpc; "
                             "print(fastrpc.__file__)"], cwd=want, env=env, capture_output=True,
                            text=True)
        if pc.returncode != 0 or not pc.stdout.startswith(str(want)):
            sys.exit(f"fastrpc's compiled core does not import from {want}; build it there:\n"
                     "  python setup.py build_ext --inplace\n" + pc.stderr[-400:])
        if args.fastrpc_path is not None:
            t = h.tree_state(args.fastrpc_path, "fastrpc", "examples")
            notes.append(f"The fastrpc server ran from `{t['path']}` (branch `{t['branch']}` "
                         f"at `{t['commit'][:12]}`"
                         f"{', with uncommitted changes' if t['dirty'] else ''}), not from "
                         "this tree.")
    n = len(names) * len(loops) * len(scenarios) * args.repeat
    h.print_plan(n, args.warmup, args.duration,
                 n * (args.warmup + args.duration + 0.3) + len(names) * len(loops) * 1.5)
    rows: list[dict[str, Any]] = []
    probes: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fastrpc-http-load-") as tmp:
        for loop in loops:
            servers: list[ServerProcess] = []
            for name in names:
                spec, env = server_setup(name, args.fastrpc_path)
                server = ServerProcess(spec, loop, server_cpus, Path(tmp), env=env)
                fail, unsupported = None, False
                try:
                    server.wait_ready()
                    pr = probes[f"{name}/{loop}"] = probe(server.port)
                    if not pr["ok"]:
                        fail = f"POST / answered {describe(pr)}"
                        status = pr.get("status") or 0
                        if name == BASELINE and 400 <= status < 500:
                            unsupported = True
                            fail = "no JSON-RPC over HTTP in this fastrpc: " + fail
                    elif not pr["keep_alive"]:
                        problems.append(f"{spec.label} on {loop} closed the connection after "
                                        "a response: wrk reconnected, not keep-alive")
                except RuntimeError as e:
                    fail = f"server did not start: {str(e).strip().splitlines()[-1]}"
                if fail is not None:
                    server.stop()
                    print(f"  {spec.label:10} {loop:8} not measured: {fail}", flush=True)
                    rows += [h.new_row("server", name, spec.label, loop, sc.key, reported=True,
                                       unsupported=unsupported, failure=fail)
                             for sc in scenarios]
                    if unsupported and not any("not measured" in x for x in notes):
                        notes.append(
                            f"**fastrpc was not measured**: it answered the probe `POST /` "
                            f"with {describe(pr)}. JSON-RPC over HTTP is being added on "
                            "branch `http-rpc`; until it is in this tree only the aiohttp "
                            "peer runs (`--fastrpc-path DIR` measures another tree's server).")
                    elif not unsupported:
                        problems.append(f"{spec.label} on {loop} not measured: {fail}")
                    continue
                servers.append(server)
            rows += h.run_servers(
                servers, loop, scenarios, args,
                lambda server, sc: run_scenario(server, sc, args, client_cpus),
                combine, progress_line, problems)
    h.flag_problems(rows, problems, lambda r: f"{r['scenario']} connections",
                    lambda r: (f"{r.get('mismatches')} mismatches, "
                               f"{r.get('socket_errors')} socket errors; first: "
                               f"{r.get('first_mismatch')!r}"))
    envd = h.environment()
    wv = subprocess.run([shutil.which("wrk") or "wrk", "-v"], capture_output=True, text=True)
    words = (wv.stdout + wv.stderr).split()  # "wrk debian/4.1.0-3+b2 [epoll] Copyright ..."
    envd["versions"]["wrk"] = words[1] if len(words) > 1 else "?"
    return {
        **h.run_header("http_load.py", argv, started),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                     "repeat": args.repeat, "wait_quiet_s": args.wait_quiet,
                     "pinned": server_cpus is not None, "server_cpus": sorted(server_cpus or []),
                     "client_cpus": sorted(client_cpus or []),
                     "fastrpc_path": str(args.fastrpc_path) if args.fastrpc_path else None,
                     "request": REQUEST.decode()},
        "environment": envd,
        "probes": probes,
        "scenarios": {s.key: {"conns": s.conns, "title": s.title} for s in scenarios},
        "servers": {n: {"script": SERVERS[n].script, "label": SERVERS[n].label} for n in names},
        "notes": notes,
        "problems": problems,
        "runs": rows,
    }


# -- report ----------------------------------------------------------------------------------


def find(data: dict[str, Any], server: str, loop: str, sc: str) -> dict[str, Any] | None:
    return h.find(data, "server", server, loop, sc)


def _x(v: float) -> str:
    return f"{v:.2f}×"


def render(data: dict[str, Any]) -> str:
    env, st = data["environment"], data["settings"]
    out = h.header_lines(data, "HTTP load benchmark: JSON-RPC over HTTP/1.1 keep-alive, "
                         "fastrpc vs aiohttp", "http_load.py") + [
        h.environment_text(env)
        + (f"Server pinned to CPU {st['server_cpus']}, wrk (`-t 1`) to CPU "
           f"{st['client_cpus']}. " if st["pinned"] else "")
        + f"Every request: `POST /`, `Content-Type: application/json`, body `{st['request']}`; "
          "every response checked by `benchmarks/http_rpc.lua` (status 200, "
          "application/json, the exact reply object). "
        + f"Warm-up {st['warmup_s']} s (its own wrk run), measured {st['duration_s']} s per run"
        + (f"; each scenario run {st['repeat']} times, the repeats going round the servers; "
           "the row shows the run with the median CPU per request (the lower middle one for "
           "an even count) and, in parentheses, the range." if st["repeat"] > 1 else "."),
        "",
    ]
    out += h.note_lines(data)
    out += [
        "## Results", "",
        "Columns: **req/s** requests wrk completed per second; **µs CPU/req** the server "
        "process's utime + stime while wrk ran ÷ requests (the primary metric; lower is "
        "better), **of which sys** its stime part; **server CPU** its share of one core "
        "(near 100 %: the server is the bottleneck); **p50 / p99** wrk's latency; **wrk "
        "µs/req** wrk's own CPU per request; **other** CPU other processes used meanwhile "
        f"(cores; above {NOISY_CORES:.2f} the run was disturbed). Ratios, on the same loop, "
        "oriented so that above 1× means fastrpc is better: **CPU** aiohttp's µs CPU/req ÷ "
        "fastrpc's; **req/s** fastrpc's req/s ÷ aiohttp's.", "",
    ]
    order = list(SERVERS)
    for key, sc in data["scenarios"].items():
        out += [f"### {sc['title']}", "",
                "| Server | Loop | req/s | µs CPU/req | of which sys | server CPU | p50 µs | "
                "p99 µs | wrk µs/req | other | CPU: aiohttp ÷ fastrpc | req/s: fastrpc ÷ "
                "aiohttp |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in h.scenario_rows(data, key, "server", order):
            name = f"**{r['label']}**" if r["server"] == BASELINE else r["label"]
            if "failure" in r or not r.get("valid"):
                out.append(h.failure_line(name, r, r.get("failure") or (
                    f"INVALID: {r.get('mismatches')} mismatches, "
                    f"{r.get('socket_errors')} socket errors; first: "
                    f"{r.get('first_mismatch')}")))
                continue
            cr, rr = h.ratios(find(data, BASELINE, r["loop"], key), r, "server_cpu_us_per_req",
                              "requests_per_s", _x)
            rng_s = h.range_text(r.get("server_cpu_us_per_req_range"))
            out.append(
                f"| {name} | {r['loop']} | {r['requests_per_s']:,.0f} | "
                f"{r['server_cpu_us_per_req']:.2f}{rng_s} | {r['server_sys_us_per_req']:.2f} | "
                f"{r['server_cores']:.0%} | {r['p50_us']:,} | {r['p99_us']:,} | "
                f"{r['wrk_cpu_us_per_req']:.2f} | {h.noisy(r['other_cores'])} | {cr} | {rr} |")
        out.append("")
    devs = [abs(r["server_runtime_us_per_req"] / r["server_cpu_us_per_req"] - 1)
            for r in data["runs"] if r.get("valid") and r.get("server_runtime_us_per_req")]
    if devs:
        worst, median = h.spread(devs)
        out += [f"Cross-check: the server's on-CPU time from the scheduler "
                f"(`/proc/<pid>/task/*/schedstat`) is within {worst:.1%} of the "
                f"tick-sampled utime + stime in every valid run (median "
                f"{median:.1%}).", ""]
    out += h.footer_lines(data, "See `benchmarks/README.md` (section *HTTP load benchmark*).")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default="fastrpc,aiohttp",
                    help=f"comma-separated, from: {', '.join(SERVERS)}")
    ap.add_argument("--loops", default="asyncio,uvloop")
    ap.add_argument("--scenarios", default="1,64", help="connections: 1, 64")
    ap.add_argument("--duration", type=int, default=5, help="measured seconds per run (wrk -d)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of a wrk run before each")
    ap.add_argument("--repeat", type=int, default=1)
    h.add_wait_quiet(ap, "before each run wait up to this long for other processes to use "
                     f"less than {NOISY_CORES} of a core")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--fastrpc-path", type=Path, metavar="DIR",
                    help="run DIR/examples/rpc_server.py with DIR first on PYTHONPATH")
    h.add_outputs(ap, "http_load")
    args = ap.parse_args(argv)
    h.check_args(ap, args, (("servers", tuple(SERVERS)), ("loops", h.LOOPS),
                            ("scenarios", tuple(SCENARIOS))), duration="[1, 120]")
    if not args.from_json and shutil.which("wrk") is None:
        print(WRK_HINT, file=sys.stderr)
        return 2
    data = h.results(args, argv, run)
    h.write_report(args, data, render)
    # A fastrpc without JSON-RPC over HTTP is reported, not a failure of the run.
    return 1 if any(not r.get("valid") and not r.get("unsupported") for r in data["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
