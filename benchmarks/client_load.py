"""Client load benchmark (issue 9 §5): JSON-RPC client libraries against one fastrpc server.

    python benchmarks/client_load.py [--clients fastrpc,websockets,web3] [--loops asyncio,uvloop]
        [--scenarios b,c] [--duration 5] [--warmup 1] [--repeat 5] [--wait-quiet 10]
        [--fastrpc-path DIR] [--json benchmarks/results/client_load.json]
        [--markdown benchmarks/results/client_load.md]
    python benchmarks/client_load.py --from-json benchmarks/results/client_load.json

The server is the same for every client: ``examples/rpc_server.py`` (the fastrpc server
``load.py`` measures), started once for the whole run in its own process, pinned to the
last CPU. Each client run is a fresh process (``benchmarks/client_worker.py``) pinned to
the other CPUs, on asyncio or uvloop. Scenarios, as in ``load.py``:

* ``b``: one connection, 32 calls in flight (32 callers sharing it);
* ``c``: 64 connections, one call in flight on each (64 callers, ``asyncio.gather``-style).

The primary metric is **client CPU per call**: utime + stime of the client process
(``/proc/self/stat``, read by the client itself at the start and end of the measured
window) ÷ calls answered in that window, and its inverse, calls per client-CPU-second.
Every result is checked against the expected value; a run with any error is invalid.
Ratios are against ``fastrpc.Client`` on the same event loop and scenario.

While ``fastrpc.Client`` does not import from this tree (it is being written on branch
``client-pool``), it is skipped with a note; ``--fastrpc-path DIR`` runs the client
processes with ``DIR`` first on ``PYTHONPATH`` (the server still runs from this tree).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as h
from _harness import (NOISY_CORES, ROOT, ServerProcess, ServerSpec, child_env, cpu_plan,
                      machine_busy_s, pinned, proc_user_sys_s)

WORKER = ROOT / "benchmarks" / "client_worker.py"
SERVER = ServerSpec("fastrpc", "examples/rpc_server.py", "fastrpc (examples/rpc_server.py)")
BASELINE = "fastrpc"


@dataclass(frozen=True)
class ClientSpec:
    name: str
    label: str
    uvloop: bool = True  # runs on uvloop as well as asyncio


CLIENTS: dict[str, ClientSpec] = {c.name: c for c in (
    ClientSpec("fastrpc", "fastrpc.Client"),
    ClientSpec("websockets", "websockets, JSON-RPC by hand"),
    ClientSpec("web3", "web3.py AsyncWeb3 + WebSocketProvider (make_request)"),
    ClientSpec("web3-eth", "web3.py (w3.eth.block_number)"),
)}
DEFAULT_CLIENTS = "fastrpc,websockets,web3"

HINTS = {
    "fastrpc": "fastrpc.Client is not in this tree yet (branch client-pool is writing "
               "`fastrpc/client.py`); `--fastrpc-path DIR` runs it from another tree",
    "websockets": "pip install websockets (the test extra)",
    "web3": "pip install web3 (the bench extra)",
    "web3-eth": "pip install web3 (the bench extra)",
}


@dataclass(frozen=True)
class Scenario:
    key: str
    conns: int
    depth: int
    title: str
    short: str


SCENARIOS: dict[str, Scenario] = {s.key: s for s in (
    Scenario("b", 1, 32, "one connection, 32 calls in flight", "1 conn × 32 in flight"),
    Scenario("c", 64, 1, "64 connections, 1 call in flight each", "64 conns × 1"),
)}

# Issue 9 §5 goals: fastrpc.Client's calls per client-CPU-second ≥ factor × the peer's.
GOALS = {"websockets": 5.0, "web3": 20.0}


# -- one run ---------------------------------------------------------------------------------


def worker_env(fastrpc_path: Path | None) -> dict[str, str]:
    env = child_env()
    if fastrpc_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(fastrpc_path), env["PYTHONPATH"]])
    return env


def probe(name: str, env: dict[str, str]) -> dict[str, Any]:
    p = subprocess.run([sys.executable, str(WORKER), "--client", name, "--url", "-", "--probe"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "error": (p.stderr or p.stdout).strip()[-400:]}


def run_one(server: ServerProcess, client: ClientSpec, loop: str, sc: Scenario,
            args: argparse.Namespace, env: dict[str, str],
            client_cpus: set[int] | None) -> dict[str, Any]:
    row = h.new_row("client", client.name, client.label, loop, sc.key)
    cmd = [sys.executable, str(WORKER), "--client", client.name,
           "--url", f"ws://127.0.0.1:{server.port}", "--conns", str(sc.conns),
           "--depth", str(sc.depth), "--loop", loop]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=pinned(client_cpus))
    try:
        line = h.readline(p, 60)
        if line != "ready":
            raise RuntimeError(f"client not ready ({line!r}): "
                               + (p.stderr.read() if p.poll() is not None else "")[-600:])
        now = time.monotonic_ns()
        t_start = now + int(args.warmup * 1e9)
        t_end = t_start + int(args.duration * 1e9)
        t_stop = t_end + 5_000_000_000
        p.stdin.write(f"{t_start} {t_end} {t_stop}\n")
        p.stdin.flush()
        time.sleep(max(0.0, (t_start - time.monotonic_ns()) / 1e9))
        s_user0, s_sys0 = proc_user_sys_s(server.pid)
        busy0, c0 = machine_busy_s(), sum(proc_user_sys_s(p.pid))
        time.sleep(max(0.0, (t_end - time.monotonic_ns()) / 1e9))
        s_user1, s_sys1 = proc_user_sys_s(server.pid)
        busy1, c1 = machine_busy_s(), sum(proc_user_sys_s(p.pid))
        out, err = p.communicate(timeout=30)
        if p.returncode != 0 or not out.strip():
            raise RuntimeError(f"client failed (exit {p.returncode}): {err[-600:]}")
        res = json.loads(out.strip().splitlines()[-1])
    except (RuntimeError, subprocess.TimeoutExpired, OSError, ValueError) as e:
        if p.poll() is None:
            p.kill()
            p.wait()
        row["failure"] = f"{type(e).__name__}: {e}"
        return row
    row.update({"conns": sc.conns, "depth": sc.depth, "errors": res["errors"],
                "error_samples": res["error_samples"]})
    n = res.get("answered", 0)
    if "window_s" not in res or not n:
        row["failure"] = ("no calls answered in the window: "
                          + "; ".join(res["error_samples"])[:400])
        return row
    window = res["window_s"]
    client_cpu = res["client_user_s"] + res["client_sys_s"]
    server_cpu = (s_user1 - s_user0) + (s_sys1 - s_sys0)
    other = (busy1 - busy0) - server_cpu - (c1 - c0)
    row.update({
        "window_s": round(window, 4), "answered": n, "calls_per_s": n / window,
        "client_cpu_s": round(client_cpu, 3),
        "client_cpu_us_per_call": client_cpu * 1e6 / n,
        "client_sys_us_per_call": res["client_sys_s"] * 1e6 / n,
        "client_exact_us_per_call": res["client_exact_s"] * 1e6 / n,
        "calls_per_client_cpu_s": n / client_cpu if client_cpu else None,
        "client_cores": client_cpu / window,
        "server_cpu_us_per_call": server_cpu * 1e6 / n,
        "server_cores": server_cpu / window,
        "other_cores": max(0.0, other / window),
        "server_alive": server.alive(),
    })
    row["valid"] = row["errors"] == 0 and row["server_alive"] and client_cpu > 0
    return row


def combine(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The repeat with the median client CPU per call and the range of the repeats
    (and of their calls/s); invalid if any repeat was (``h.combine``)."""
    return h.combine(reps, "client_cpu_us_per_call",
                     ("calls_per_s", "client_cpu_us_per_call", "server_cpu_us_per_call",
                      "other_cores"), rate="calls_per_s")


def progress_line(r: dict[str, Any]) -> str:
    head = f"{r['label'][:40]:40} {r['loop']:8} {r['scenario']}"
    if "failure" in r:
        return f"{head}  FAILED: {r['failure']}"
    return (f"{head}  {r['calls_per_s']:9,.0f} calls/s  client {r['client_cpu_us_per_call']:7.2f}"
            f" µs CPU/call ({r['client_cores']:.0%})  server {r['server_cpu_us_per_call']:5.2f} "
            f"µs ({r['server_cores']:.0%})  errors {r['errors']}")


# -- the whole run ---------------------------------------------------------------------------


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    notes: list[str] = []
    problems: list[str] = []
    env = worker_env(args.fastrpc_path)
    clients: list[ClientSpec] = []
    found: dict[str, Any] = {}
    for name in args.clients.split(","):
        pr = probe(name, env)
        if not pr.get("ok"):
            notes.append(f"**{CLIENTS[name].label}** skipped: its library does not import "
                         f"({pr.get('error', '?')}). {HINTS[name]}.")
            print(f"  skipping {name}: {pr.get('error')}", flush=True)
            continue
        found[name] = pr
        clients.append(CLIENTS[name])
    if "fastrpc" in found:
        mod = Path(found["fastrpc"]["module"]).parent
        found["fastrpc"]["tree"] = h.tree_state(mod, "fastrpc")
        if mod.resolve() != ROOT.resolve():
            t = found["fastrpc"]["tree"]
            notes.append(f"fastrpc.Client was imported from `{mod}` (branch `{t['branch']}` at "
                         f"`{t['commit'][:12]}`{', with uncommitted changes in fastrpc/' if t['dirty'] else ''}"
                         "), not from this tree; the server ran from this tree.")
    probe_core = subprocess.run([sys.executable, "-c", "import fastrpc._core, fastrpc; "
                                 "print(fastrpc.__file__)"], cwd=ROOT, env=child_env(),
                                capture_output=True, text=True)
    if probe_core.returncode != 0 or not probe_core.stdout.startswith(str(ROOT)):
        sys.exit("fastrpc's compiled core does not import from this tree; build it first:\n"
                 "  python setup.py build_ext --inplace\n" + probe_core.stderr[-400:])
    loops = args.loops.split(",")
    scenarios = [SCENARIOS[k] for k in args.scenarios.split(",")]
    server_cpus, client_cpus = cpu_plan(not args.no_pin)
    plan = [(c, lp) for lp in loops for c in clients if lp == "asyncio" or c.uvloop]
    n = len(plan) * len(scenarios) * args.repeat
    h.print_plan(n, args.warmup, args.duration, n * (args.warmup + args.duration + 1.5))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fastrpc-client-load-") as tmp:
        server = ServerProcess(SERVER, args.server_loop, server_cpus, Path(tmp))
        try:
            server.wait_ready()
        except RuntimeError as e:
            server.stop()
            sys.exit(f"the server did not start: {e}")

        def one(unit: tuple[ClientSpec, str], sc: Scenario) -> dict[str, Any]:
            client, loop = unit
            if not server.alive():
                return h.new_row("client", client.name, client.label, loop, sc.key,
                                 failure="the server died")
            return run_one(server, client, loop, sc, args, env, client_cpus)

        try:
            # The repeats go round the (client, loop) pairs (``h.round_robin``), so a
            # slow spell of a shared machine falls on every client rather than on the
            # repeats of one.
            reps = h.round_robin(args.repeat, scenarios, plan,
                                 lambda u, sc: (u[0].name, u[1], sc.key), one, progress_line,
                                 args.wait_quiet)
        finally:
            server.stop()
        extra = server.unexpected_output()
        if extra:
            problems.append("the server printed: " + " | ".join(extra[:6])[:800])
    rows = [combine(r) for r in reps.values()]
    h.flag_problems(rows, problems, lambda r: f"scenario {r['scenario']}",
                    lambda r: f"{r.get('errors')} errors, e.g. {r.get('error_samples')}")
    envd = h.environment(("web3", "websockets"))
    return {
        **h.run_header("client_load.py", argv, started),
        "settings": {"duration_s": args.duration, "warmup_s": args.warmup,
                     "repeat": args.repeat, "wait_quiet_s": args.wait_quiet,
                     "server_loop": args.server_loop, "pinned": server_cpus is not None,
                     "server_cpus": sorted(server_cpus or []),
                     "client_cpus": sorted(client_cpus or []),
                     "fastrpc_path": str(args.fastrpc_path) if args.fastrpc_path else None},
        "environment": envd,
        "clients_found": found,
        "scenarios": {s.key: {"conns": s.conns, "depth": s.depth, "title": s.title,
                              "short": s.short} for s in scenarios},
        "clients": {c.name: {"label": c.label} for c in clients},
        "notes": notes,
        "problems": problems,
        "runs": rows,
    }


# -- report ----------------------------------------------------------------------------------


def find(data: dict[str, Any], client: str, loop: str, sc: str) -> dict[str, Any] | None:
    return h.find(data, "client", client, loop, sc)


def _x(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}×" if v >= 10 else f"{v:.2f}×"


def goals(data: dict[str, Any]) -> list[str]:
    loops = [lp for lp in ("asyncio", "uvloop") if any(r["loop"] == lp for r in data["runs"])]
    if not any(r["client"] == BASELINE and r.get("valid") for r in data["runs"]):
        return ["Not measured: fastrpc.Client was not part of this run (see the note above)."]
    lines = ["| Goal (issue 9 §5) | Scenario | Loop | fastrpc.Client calls per client-CPU-s "
             "÷ the peer's | Met |", "|---|---|---|---:|---|"]
    for peer, factor in GOALS.items():
        for key, sc in data["scenarios"].items():
            for loop in loops:
                b, p = find(data, BASELINE, loop, key), find(data, peer, loop, key)
                if b is None or p is None:
                    continue
                ratio = p["client_cpu_us_per_call"] / b["client_cpu_us_per_call"]
                lines.append(f"| ≥ {factor:g}× {data['clients'][peer]['label']} | {key} "
                             f"({sc['short']}) | {loop} | {_x(ratio)} | "
                             f"{'**yes**' if ratio >= factor else '**no**'} |")
    return lines


def render(data: dict[str, Any]) -> str:
    env, st = data["environment"], data["settings"]
    out = h.header_lines(data, "Client load benchmark: JSON-RPC over WebSocket clients "
                         "against one fastrpc server", "client_load.py") + [
        h.environment_text(env, "fastrpc (server)")
        + f"Server: `examples/rpc_server.py` on {st['server_loop']}, one process for the "
          "whole run" + (f", pinned to CPU {st['server_cpus']}; each client run is a new "
                         f"process pinned to CPU {st['client_cpus']}. " if st["pinned"] else ". ")
        + f"Warm-up {st['warmup_s']:g} s, measured {st['duration_s']:g} s per run"
        + (f"; each configuration run {st['repeat']} times, the repeats going round the "
           "clients; the row shows the run with the median client CPU per call (the lower "
           "middle one for an even count) and, in parentheses, the range over the repeats."
           if st["repeat"] > 1 else "."),
        "",
    ]
    out += h.note_lines(data)
    out += ["## Goals", "", *goals(data), ""]
    out += [
        "## Results", "",
        "Columns: **calls/s** calls answered (and checked) per second; **client µs "
        "CPU/call** the client process's utime + stime over the measured window ÷ calls "
        "answered (the primary metric; lower is better), **of which sys** its stime part; "
        "**calls per client-CPU-s** its inverse; **client CPU** the client's share of one "
        "core (near 100 %: the client sets the pace); **server µs/call** and **server "
        "CPU** the fastrpc server's (the same server for every row); **other** CPU other "
        "processes used meanwhile (cores; above "
        f"{NOISY_CORES:.2f} the run was disturbed). **× fastrpc**: fastrpc.Client's calls "
        "per client-CPU-second ÷ this row's (= this row's µs CPU/call ÷ fastrpc.Client's), "
        "on the same loop; **calls/s ×**: fastrpc.Client's calls/s ÷ this row's.",
        "",
    ]
    order = list(CLIENTS)
    for key, sc in data["scenarios"].items():
        out += [f"### Scenario {key}: {sc['title']}", "",
                "| Client | Loop | calls/s | client µs CPU/call | of which sys | calls per "
                "client-CPU-s | client CPU | server µs/call | server CPU | other | "
                "× fastrpc | calls/s × |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in h.scenario_rows(data, key, "client", order):
            name = f"**{r['label']}**" if r["client"] == BASELINE else r["label"]
            if "failure" in r or not r.get("valid"):
                out.append(h.failure_line(name, r, r.get("failure") or (
                    f"INVALID: {r.get('errors')} errors, e.g. "
                    f"{(r.get('error_samples') or ['?'])[0]}")))
                continue
            cr, rr = h.ratios(find(data, BASELINE, r["loop"], key), r, "client_cpu_us_per_call",
                              "calls_per_s", _x)
            rng_s = h.range_text(r.get("client_cpu_us_per_call_range"))
            out.append(
                f"| {name} | {r['loop']} | {r['calls_per_s']:,.0f} | "
                f"{r['client_cpu_us_per_call']:.2f}{rng_s} | {r['client_sys_us_per_call']:.2f} | "
                f"{r['calls_per_client_cpu_s']:,.0f} | {r['client_cores']:.0%} | "
                f"{r['server_cpu_us_per_call']:.2f} | {r['server_cores']:.0%} | "
                f"{h.noisy(r['other_cores'])} | {cr} | {rr} |")
        out.append("")
    devs = [abs(r["client_exact_us_per_call"] / r["client_cpu_us_per_call"] - 1)
            for r in data["runs"] if r.get("valid")]
    if devs:
        worst, median = h.spread(devs)
        out += [f"Cross-check: the client's exact CPU clock (`CLOCK_PROCESS_CPUTIME_ID`) is "
                f"within {worst:.1%} of the tick-sampled utime + stime in every valid "
                f"run (median {median:.1%}); the JSON has both.", ""]
    out += h.footer_lines(
        data, "See `benchmarks/README.md` (section *Client load benchmark*): what each client "
        "does, how the window is measured, and why the server is not the bottleneck.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", default=DEFAULT_CLIENTS,
                    help=f"comma-separated, from: {', '.join(CLIENTS)}")
    ap.add_argument("--loops", default="asyncio,uvloop", help="the clients' event loops")
    ap.add_argument("--scenarios", default="b,c")
    ap.add_argument("--server-loop", choices=("asyncio", "uvloop"), default="asyncio")
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per configuration; the row shows the median (by client CPU "
                         "per call) and the range")
    h.add_wait_quiet(ap, "before each run wait up to this long for other processes to use "
                     f"less than {NOISY_CORES} of a core")
    ap.add_argument("--no-pin", action="store_true", help="do not pin server and client CPUs")
    ap.add_argument("--fastrpc-path", type=Path, metavar="DIR",
                    help="put DIR first on the client processes' PYTHONPATH (a tree whose "
                         "fastrpc has the client); the server runs from this tree")
    h.add_outputs(ap, "client_load")
    args = ap.parse_args(argv)
    h.check_args(ap, args, (("clients", tuple(CLIENTS)), ("loops", h.LOOPS),
                            ("scenarios", tuple(SCENARIOS))))
    data = h.results(args, argv, run)
    h.write_report(args, data, render)
    return 1 if any(not r.get("valid") for r in data["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
