"""Loopback load benchmark (issue 4 §6): JSON-RPC over WebSocket, fastrpc beside its peers.

    python benchmarks/load.py --servers fastrpc,websockets,aiohttp,picows --loops asyncio,uvloop
        [--scenarios a,b,c] [--duration 5] [--warmup 1]
        [--json benchmarks/results/load.json] [--markdown benchmarks/results/load.md]
    python benchmarks/load.py --from-json benchmarks/results/load.json   # re-render only

Every server is a separate process serving the same three methods (``echo``, ``add``,
``eth_blockNumber``); the load comes from ``benchmarks/loadgen.py`` (raw sockets,
pre-encoded masked frames, every reply verified). Scenarios:

* ``a``: one connection, sequential (one request in flight);
* ``b``: one connection, 32 requests in flight (pipelined);
* ``c``: 64 connections, one request in flight on each.

Each scenario runs ``--warmup`` seconds, then is measured for ``--duration`` seconds.
The primary metric is **server CPU time per request**: utime + stime of the server
process (``/proc/<pid>/stat``, all its threads) over the measured window, divided by
the requests answered in that window. On two cores the load generator (Python) competes
for the machine and can set the pace, so requests/second depends on the client; CPU per
request much less so.
It is reported beside requests/s, p50/p99 latency, the server's CPU use (share of one
core; near 100 % means the server, not the client, set the pace), the client's CPU per
request and the CPU other processes used meanwhile.

Servers (``--servers``): ``fastrpc`` is ``examples/rpc_server.py``; while that file does
not exist, ``fastrpc-echo`` (``examples/echo_server.py``, which echoes each message and
does no JSON-RPC work) stands in as a transport-only reference row, and the ratios are
computed against it (with that caveat printed). The peers are
``benchmarks/peers/rpc_<name>.py``. Each server is started once per event loop, with
``--port P --loop asyncio|uvloop``, and serves the three scenarios in turn.

By default the server is pinned to the last CPU and the load generator to the others
(``--no-pin`` turns this off). A run with any error (a wrong, missing or unexpected
reply, a closed connection, a server that died) is reported as invalid.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as h
from _harness import (NOISY_CORES, ROOT, ServerProcess, ServerSpec, child_env, cpu_plan,
                      machine_busy_s, pinned, proc_cpu_s, proc_runtime_s, proc_user_sys_s)

LOADGEN = ROOT / "benchmarks" / "loadgen.py"

BASELINE = "fastrpc"
ECHO = "fastrpc-echo"


SERVERS: dict[str, ServerSpec] = {s.name: s for s in (
    ServerSpec(BASELINE, "examples/rpc_server.py", "fastrpc"),
    ServerSpec(ECHO, "examples/echo_server.py", "fastrpc-echo (no JSON-RPC)", echo=True),
    ServerSpec("websockets", "benchmarks/peers/rpc_websockets.py", "websockets"),
    ServerSpec("aiohttp", "benchmarks/peers/rpc_aiohttp.py", "aiohttp"),
    ServerSpec("picows", "benchmarks/peers/rpc_picows.py", "picows"),
)}


@dataclass(frozen=True)
class Scenario:
    key: str
    conns: int
    depth: int
    title: str
    short: str


SCENARIOS: dict[str, Scenario] = {s.key: s for s in (
    Scenario("a", 1, 1, "one connection, sequential (1 request in flight)", "sequential"),
    Scenario("b", 1, 32, "one connection, 32 requests in flight (pipelined)", "32 in flight"),
    Scenario("c", 64, 1, "64 connections, 1 request in flight each", "64 connections"),
)}

# Issue 4 §6 targets for fastrpc's server CPU per request (µs), by scenario.
CPU_TARGETS_US = {"b": 2.5, "c": 7.0}
RPS_TARGET = ("c", "websockets", 2.0)  # scenario c: fastrpc req/s >= 2x websockets'
# Figures reported for the peers on this machine (issue 4): µs server CPU per request.
REFERENCE_US = {"picows": (6.3, 7.6), "aiohttp": (8.0, 11.9), "websockets": (13.2, 18.1)}


@dataclass
class Snapshot:
    t: float
    server: float          # utime + stime
    server_sys: float      # stime alone: system calls, and the kernel's TCP work
    clients: float
    busy: float
    server_runtime: float

    @classmethod
    def take(cls, server_pid: int, client_pids: list[int]) -> "Snapshot":
        user, sys_ = proc_user_sys_s(server_pid)
        return cls(time.monotonic(), user + sys_, sys_,
                   sum(proc_cpu_s(p) for p in client_pids), machine_busy_s(),
                   proc_runtime_s(server_pid))


def run_scenario(server: ServerProcess, sc: Scenario, args: argparse.Namespace,
                 client_cpus: set[int] | None, workdir: Path) -> dict[str, Any]:
    nproc = max(1, min(args.clients, sc.conns))
    shares = [sc.conns // nproc + (i < sc.conns % nproc) for i in range(nproc)]
    lat_files = [workdir / f"lat-{server.spec.name}-{server.loop}-{sc.key}-{i}.bin"
                 for i in range(nproc)]
    procs = []
    row = h.new_row("server", server.spec.name, server.spec.label, server.loop, sc.key)
    for share, lat in zip(shares, lat_files):
        cmd = [sys.executable, str(LOADGEN), "--port", str(server.port), "--conns", str(share),
               "--depth", str(sc.depth), "--latency-file", str(lat)]
        if server.spec.echo:
            cmd.append("--echo-ok")
        cmd += ["--engine", args.engine]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      preexec_fn=pinned(client_cpus)))
    try:
        for p in procs:
            line = h.readline(p, 30)
            if line != "ready":
                raise RuntimeError(f"load generator not ready ({line!r}): "
                                   + (p.stderr.read() if p.poll() is not None else "")[-600:])
        now = time.monotonic_ns()
        t_start = now + int(args.warmup * 1e9)
        t_end = t_start + int(args.duration * 1e9)
        t_stop = t_end + 3_000_000_000
        for p in procs:
            p.stdin.write(f"{t_start} {t_end} {t_stop}\n")
            p.stdin.flush()
        pids = [p.pid for p in procs]
        time.sleep(max(0.0, (t_start - time.monotonic_ns()) / 1e9))
        s0 = Snapshot.take(server.pid, pids)
        time.sleep(max(0.0, (t_end - time.monotonic_ns()) / 1e9))
        s1 = Snapshot.take(server.pid, pids)
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=15)
            if p.returncode != 0 or not out.strip():
                raise RuntimeError(f"load generator failed (exit {p.returncode}): {err[-600:]}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
    except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as e:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        row["failure"] = f"{type(e).__name__}: {e}"
        return row

    lat = array("q")
    for f in lat_files:
        lat.frombytes(f.read_bytes())
        f.unlink()
    lat_sorted = sorted(lat)
    answered = sum(o["answered"] for o in outs)
    errors = sum(o["errors"] for o in outs)
    window = s1.t - s0.t
    server_cpu = s1.server - s0.server
    client_cpu = s1.clients - s0.clients
    other = (s1.busy - s0.busy) - server_cpu - client_cpu

    def pct(q: float) -> float | None:
        return lat_sorted[min(len(lat_sorted) - 1, int(q * len(lat_sorted)))] / 1e3 \
            if lat_sorted else None

    row.update({
        "conns": sc.conns, "depth": sc.depth, "client_processes": nproc,
        "duration_s": args.duration, "window_s": round(window, 4),
        "answered": answered,
        "requests_per_s": answered / args.duration,
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_req": server_cpu * 1e6 / answered if answered else None,
        "server_sys_us_per_req": (s1.server_sys - s0.server_sys) * 1e6 / answered
                                 if answered else None,
        "server_cores": server_cpu / window,
        "server_runtime_us_per_req": (s1.server_runtime - s0.server_runtime) * 1e6 / answered
                                     if answered else None,
        "client_cpu_us_per_req": client_cpu * 1e6 / answered if answered else None,
        "client_cores": client_cpu / window,
        "other_cores": max(0.0, other / window),
        "p50_us": pct(0.50), "p99_us": pct(0.99), "p999_us": pct(0.999),
        "errors": errors,
        "error_samples": [s for o in outs for s in o["error_samples"]][:5],
        "server_alive": server.alive(),
    })
    row["valid"] = errors == 0 and answered > 0 and row["server_alive"]
    return row


# -- the whole run ----------------------------------------------------------------------

def resolve_servers(names: list[str], notes: list[str]) -> list[ServerSpec]:
    out: list[ServerSpec] = []
    if len(set(names)) != len(names):
        sys.exit("--servers: a server is repeated")
    for name in names:
        if name not in SERVERS:
            sys.exit(f"unknown server {name!r}; known: {', '.join(SERVERS)}")
        spec = SERVERS[name]
        if name == BASELINE and not (ROOT / spec.script).exists():
            notes.append(f"`{spec.script}` does not exist yet: fastrpc's JSON-RPC server was "
                         f"not measured; `{SERVERS[ECHO].script}` ({SERVERS[ECHO].label}) "
                         "stands in as a transport-only reference, and the ratios are "
                         "computed against it.")
            spec = SERVERS[ECHO]
        if spec not in out:
            out.append(spec)
    if any(s.name in (BASELINE, ECHO) for s in out):
        probe = subprocess.run([sys.executable, "-c", "import fastrpc._core"], cwd=ROOT,
                               env=child_env(), capture_output=True, text=True)
        if probe.returncode != 0:
            sys.exit("fastrpc's compiled core does not import; build it first:\n"
                     "  python setup.py build_ext --inplace\n" + probe.stderr[-400:])
    return out


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    notes: list[str] = []
    specs = resolve_servers(args.servers.split(","), notes)
    loops = args.loops.split(",")
    scenarios = [SCENARIOS[k] for k in args.scenarios.split(",")]
    server_cpus, client_cpus = cpu_plan(not args.no_pin)
    if args.engine == "compiled":  # build the client's loop now, not inside a run
        subprocess.run([sys.executable, str(LOADGEN), "--build-only"], cwd=ROOT, check=True)
    n = len(specs) * len(loops) * len(scenarios) * args.repeat
    h.print_plan(n, args.warmup, args.duration,
                 n * (args.warmup + args.duration + 0.7) + len(specs) * len(loops) * 1.5)
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fastrpc-load-") as tmp:
        workdir = Path(tmp)
        for loop in loops:
            # Every server of this loop runs at once (idle ones cost nothing), and the
            # repeats go round them (``h.run_servers``).
            servers: list[ServerProcess] = []
            for spec in specs:
                server = ServerProcess(spec, loop, server_cpus, workdir)
                try:
                    server.wait_ready()
                except RuntimeError as e:
                    server.stop()
                    last = str(e).strip().splitlines()[-1]
                    problems.append(f"{spec.label} on {loop} did not start: {last}")
                    rows += [h.new_row("server", spec.name, spec.label, loop, sc.key,
                                       reported=True, failure=f"server did not start: {last}")
                             for sc in scenarios]
                    print(f"  {spec.label:28} {loop:8} did not start: {e}", flush=True)
                    continue
                servers.append(server)
            rows += h.run_servers(
                servers, loop, scenarios, args,
                lambda server, sc: run_scenario(server, sc, args, client_cpus, workdir),
                combine, progress_line, problems)
    h.flag_problems(rows, problems, lambda r: f"scenario {r['scenario']}",
                    lambda r: f"{r.get('errors')} errors, e.g. {r.get('error_samples')}")
    return {
        **h.run_header("load.py", argv, started),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                     "repeat": args.repeat,
                     "clients": args.clients, "wait_quiet_s": args.wait_quiet,
                     "engine": args.engine, "interleaved": True,
                     "pinned": server_cpus is not None,
                     "server_cpus": sorted(server_cpus or []),
                     "client_cpus": sorted(client_cpus or [])},
        "environment": h.environment(),
        "scenarios": {k: {"conns": s.conns, "depth": s.depth, "title": s.title,
                          "short": s.short}
                      for k, s in SCENARIOS.items() if s in scenarios},
        "servers": {s.name: {"script": s.script, "label": s.label, "echo": s.echo}
                    for s in specs},
        "notes": notes,
        "problems": problems,
        "runs": rows,
    }


combine = h.combine_server_cpu  # the median run by server CPU per request, and the range


def progress_line(r: dict[str, Any]) -> str:
    head = f"{r['label']:28} {r['loop']:8} {r['scenario']}"
    if "failure" in r:
        return f"{head}  FAILED: {r['failure']}"
    return (f"{head}  {r['requests_per_s']:9,.0f} req/s  {_f(r['server_cpu_us_per_req'])} µs "
            f"CPU/req  server {r['server_cores']:.0%}  p50 {_f(r['p50_us'])} µs  "
            f"p99 {_f(r['p99_us'])} µs  errors {r['errors']}")


# -- report -------------------------------------------------------------------------------

def _f(v: float | None, digits: int = 1) -> str:
    if v is None:
        return "—"
    return f"{v:,.{digits}f}" if v < 1000 else f"{v:,.0f}"


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}×"


def baseline_name(data: dict[str, Any]) -> str | None:
    names = {r["server"] for r in data["runs"] if r.get("valid")}
    return BASELINE if BASELINE in names else (ECHO if ECHO in names else None)


def find(data: dict[str, Any], server: str, loop: str, scenario: str) -> dict[str, Any] | None:
    return h.find(data, "server", server, loop, scenario)


def targets(data: dict[str, Any]) -> list[str]:
    loops = sorted({r["loop"] for r in data["runs"]}, key=["asyncio", "uvloop"].index)
    lines = ["| Target (issue 4) | Loop | Measured | Met |", "|---|---|---|---|"]
    if baseline_name(data) != BASELINE:
        return ["Not measured: fastrpc's JSON-RPC server (`examples/rpc_server.py`) was not "
                "part of this run. The fastrpc-echo rows show the transport alone."]
    for key, limit in CPU_TARGETS_US.items():
        for loop in loops:
            r = find(data, BASELINE, loop, key)
            if r is None:
                continue
            v = r["server_cpu_us_per_req"]
            short = data["scenarios"][key].get("short", "")
            lines.append(f"| server CPU per request ≤ {limit} µs, scenario {key} "
                         f"({short}) | {loop} | {v:.2f} µs | "
                         f"{'**yes**' if v <= limit else '**no**'} |")
    key, peer, factor = RPS_TARGET
    for loop in loops:
        r, p = find(data, BASELINE, loop, key), find(data, peer, loop, key)
        if r is None or p is None:
            continue
        ratio = r["requests_per_s"] / p["requests_per_s"]
        cap = p["server_cpu_us_per_req"] / r["server_cpu_us_per_req"]
        lines.append(f"| ≥ {factor:g}× {peer}' requests/s, scenario {key} "
                     f"({data['scenarios'][key].get('short', '')}) | {loop} | "
                     f"{ratio:.2f}× measured (server CPU {r['server_cores']:.0%} vs "
                     f"{p['server_cores']:.0%}); {cap:.2f}× per unit of server CPU | "
                     f"{'**yes**' if ratio >= factor else '**no**'}"
                     f"{' (yes per unit of server CPU)' if ratio < factor <= cap else ''} |")
    return lines


def render(data: dict[str, Any]) -> str:
    env = data["environment"]
    base = baseline_name(data)
    base_label = data["servers"].get(base, {}).get("label", base) if base else None
    out = h.header_lines(data, "Loopback load benchmark: JSON-RPC over WebSocket, fastrpc vs "
                         "websockets, aiohttp, picows", "load.py") + [
        h.environment_text(env)
        + (f"Server pinned to CPU {data['settings']['server_cpus']}, load generator to "
           f"CPU {data['settings']['client_cpus']}. " if data["settings"]["pinned"] else "")
        + f"Load generator loop: {data['settings'].get('engine', 'python')}. "
        + f"Warm-up {data['settings']['warmup_s']:g} s, measured "
          f"{data['settings']['duration_s']:g} s per run"
        + (f"; each scenario run {data['settings']['repeat']} times, the row shows the "
           "run with the median CPU per request (the lower middle one for an even count) "
           "and, in parentheses, the range"
           + ("; the repeats went round the servers (all servers of a loop ran at once)."
              if data["settings"].get("interleaved") else ".")
           if data["settings"].get("repeat", 1) > 1 else "."),
        "",
    ]
    out += h.note_lines(data)
    out += ["## Targets", "", *targets(data), ""]
    out += [
        "## Results",
        "",
        "Columns: **req/s** requests answered per second; **µs CPU/req** the server "
        "process's utime + stime over the measured window ÷ requests answered (the "
        "primary metric; lower is better), **of which sys** its stime part (system calls "
        "and the kernel's TCP work; the rest is user space); **server CPU** its share of "
        "one core (near 100 % = the server is the bottleneck; well below = the client "
        "is); **p50 / p99** "
        "latency from send to reply as the client sees it (includes the client's own "
        "queueing); **client µs/req** the load generator's CPU per request; **other** CPU "
        "that other processes used meanwhile (cores; above "
        f"{NOISY_CORES:.2f} the run was disturbed). Ratios compare with "
        f"**{base_label}** on the same event loop, oriented so that above 1× means "
        f"{base_label} is better: *req/s* = {base_label} req/s ÷ this row's; *CPU* = this "
        f"row's µs CPU/req ÷ {base_label}'s.",
        "",
    ]
    if base == ECHO:
        out += [f"{base_label} does no JSON-RPC work at all (no parsing, no dispatch, no "
                "serialisation): its ratios show how much of a peer's cost is above a bare "
                "fastrpc transport, not a like-for-like comparison.", ""]
    loops = h.LOOPS
    order = sorted(data["servers"], key=lambda n: n != base)  # the baseline first
    for key, sc in data["scenarios"].items():
        out += [f"### Scenario {key}: {sc['title']}", "",
                "| Server | Loop | req/s | µs CPU/req | of which sys | server CPU | p50 µs | "
                "p99 µs | client µs/req | other | req/s ratio | CPU ratio |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in h.scenario_rows(data, key, "server", order):
            name = f"**{r['label']}**" if r["server"] == base else r["label"]
            if "failure" in r or not r.get("valid"):
                out.append(h.failure_line(name, r, r.get("failure")
                                          or f"INVALID: {r.get('errors')} errors"))
                continue
            b = find(data, base, r["loop"], key) if base else None
            cr, rr = h.ratios(b, r, "server_cpu_us_per_req", "requests_per_s", _x)
            out.append(
                f"| {name} | {r['loop']} | {r['requests_per_s']:,.0f} | "
                f"{r['server_cpu_us_per_req']:.2f}{h.range_text(r.get('server_cpu_us_per_req_range'))} | "
                f"{_f(r.get('server_sys_us_per_req'), 2)} | "
                f"{r['server_cores']:.0%} | "
                f"{_f(r['p50_us'])} | {_f(r['p99_us'])} | {_f(r['client_cpu_us_per_req'])} | "
                f"{h.noisy(r['other_cores'])} | {rr} | {cr} |")
        out.append("")
    ref_rows = []
    for peer, (ref_b, ref_c) in REFERENCE_US.items():
        for loop in loops:
            rb, rc = find(data, peer, loop, "b"), find(data, peer, loop, "c")
            if rb or rc:
                ref_rows.append(
                    f"| {peer} | {loop} | {ref_b} | "
                    f"{_f(rb and rb['server_cpu_us_per_req'], 2)} | {ref_c} | "
                    f"{_f(rc and rc['server_cpu_us_per_req'], 2)} |")
    if ref_rows:
        out += ["## Peers beside the figures reported in issue 4", "",
                "Server µs CPU per request; the issue does not say which event loop its "
                "figures used.", "",
                "| Peer | Loop | reported, 32 in flight | measured, b | reported, 64 conns | "
                "measured, c |", "|---|---|---:|---:|---:|---:|", *ref_rows, ""]
    devs = [abs(r["server_runtime_us_per_req"] / r["server_cpu_us_per_req"] - 1)
            for r in data["runs"] if r.get("valid") and r.get("server_runtime_us_per_req")]
    if devs:
        worst, median = h.spread(devs)
        out += [f"Cross-check: the server's on-CPU time from the scheduler "
                f"(`/proc/<pid>/task/*/schedstat`, ns) is within {worst:.1%} of the "
                f"tick-sampled utime + stime in every valid run (median "
                f"{median:.1%}); the JSON has both.", ""]
    out += h.footer_lines(
        data, "See `benchmarks/README.md` (section *Loopback load benchmark*): how CPU per "
        "request is measured, when requests/s is set by the client rather than the "
        "server, where loopback TCP costs are charged, and what each peer server runs.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default="fastrpc,websockets,aiohttp,picows",
                    help=f"comma-separated, from: {', '.join(SERVERS)}")
    ap.add_argument("--loops", default="asyncio,uvloop")
    ap.add_argument("--scenarios", default="a,b,c")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per scenario; the row shows the median run (by server CPU "
                         "per request; the lower middle one for an even N) and the range")
    ap.add_argument("--clients", type=int, default=1,
                    help="load-generator processes for multi-connection scenarios")
    h.add_wait_quiet(ap, "before each run, wait up to this long for other processes to "
                     f"use less than {NOISY_CORES} of a core (a shared machine)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and client CPUs")
    ap.add_argument("--engine", choices=("compiled", "python"), default="compiled",
                    help="the load generator's measured loop (see loadgen.py): compiled "
                         "(default; cheaper per request than any server measured) or python")
    h.add_outputs(ap, "load")
    args = ap.parse_args(argv)
    h.check_args(ap, args, (("loops", h.LOOPS), ("scenarios", tuple(SCENARIOS))))
    data = h.results(args, argv, run)
    h.write_report(args, data, render)
    return 1 if any(not r.get("valid") for r in data["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
