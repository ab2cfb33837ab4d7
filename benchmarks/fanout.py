"""Fan-out benchmark (issue 11 §4): one publish to N subscribers, fastrpc beside its peers.

    python benchmarks/fanout.py [--servers fastrpc,websockets,picows] [--loops asyncio,uvloop]
        [--n 1000,10000] [--deliveries 200000 | --publishes K] [--repeat 3] [--warmup 3]
        [--json benchmarks/results/fanout.json] [--markdown benchmarks/results/fanout.md]
    python benchmarks/fanout.py --from-json benchmarks/results/fanout.json   # re-render

For every N and event loop, every server (``benchmarks/peers/fanout_<name>.py``) runs in
its own process, pinned to the last CPU, with N subscribers: real WebSocket connections
from ``--workers`` other processes (``fanout_client.py``, pinned to the other CPUs, one
127.0.0.x source address each), each subscribed with ``eth_subscribe("newHeads")``.
Then, K times, the parent tells the server on its stdin to publish notification ``seq``
(a ~500-byte ``newHeads`` header, ``peers/_fanout.py``) and waits until the server has
written it and every subscriber has received and checked it before the next publish:
each publish lands on idle sockets, as a new block does.

The metric is **server CPU per delivered notification**: the server process's utime +
stime (``/proc/<pid>/stat``, every thread) over the K publishes ÷ the notifications
the subscribers received and found right. A run is rejected if any notification is
missing, repeated, out of order or differs from what was published, if the server wrote
to fewer than N subscribers, or if a connection dropped. The repeats go round the
servers (all of a (N, loop) block are up at once, idle but one); ``--warmup`` publishes
before the first repeat are checked, not measured. Ratios: a peer's CPU per delivered
notification ÷ fastrpc's, same N and loop.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _harness as h
from _harness import (NOISY_CORES, ROOT, child_env, child_setup, cpu_plan, free_port,
                      machine_busy_s, pinned, proc_cpu_s, proc_runtime_s, proc_user_sys_s,
                      tail)
from memory import ConfigError, Workers

sys.path.insert(1, str(ROOT / "benchmarks" / "peers"))
from _fanout import head, notification  # noqa: E402

CLIENT = ROOT / "benchmarks" / "fanout_client.py"
BASELINE = "fastrpc"
MAX_N = 19_000  # the open-file cap is 20,000 per process: N sockets + the server's own
WORKER_LIFETIME_S = 4 * 3600.0


@dataclass(frozen=True)
class FanoutSpec:
    name: str
    script: str            # relative to the repository root
    label: str
    extra: tuple[str, ...] = ()


SERVERS: dict[str, FanoutSpec] = {s.name: s for s in (
    FanoutSpec(BASELINE, "benchmarks/peers/fanout_fastrpc.py", "fastrpc (server.publish)"),
    FanoutSpec("websockets", "benchmarks/peers/fanout_websockets.py",
               "websockets (broadcast())"),
    FanoutSpec("picows", "benchmarks/peers/fanout_picows.py",
               "picows (one frame, written to each transport)"),
    FanoutSpec("picows-send", "benchmarks/peers/fanout_picows.py",
               "picows (WSTransport.send to each)", ("--send",)),
)}
DEFAULT_SERVERS = "fastrpc,websockets,picows"


class FanoutServer:
    """One fan-out server process and its control channel (``peers/_fanout.py``)."""

    def __init__(self, spec: FanoutSpec, loop: str, n: int, cpus: set[int] | None,
                 logdir: Path) -> None:
        self.spec, self.loop, self.n = spec, loop, n
        self.port = free_port()
        self.log_path = logdir / f"server-{spec.name}-{loop}-{n}.log"
        self._log = open(self.log_path, "wb")
        cmd = [sys.executable, spec.script, "--port", str(self.port), "--loop", loop,
               "--max-connections", str(n + 16), *spec.extra]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log,
                                     start_new_session=True,
                                     preexec_fn=child_setup(pinned(cpus)))
        self._out = b""  # read from its stdout, not yet a whole line
        self.seq = 0  # the next publish: its subscribers expect 0, 1, 2, ... in order
        self.workers: Workers | None = None
        self.broken = ""  # why this server can measure no more

    @property
    def pid(self) -> int:
        return self.proc.pid

    def line(self, timeout: float, stage: str) -> str:
        """The server's next line on stdout, within ``timeout`` seconds."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._out:
            left = deadline - time.monotonic()
            readable = left > 0 and bool(select.select([fd], [], [], left)[0])
            chunk = os.read(fd, 4096) if readable else b""
            if not chunk:  # end of file (it exited) or the deadline passed
                why = "exited" if readable or self.proc.poll() is not None else \
                    f"silent for {timeout:g} s"
                raise ConfigError(stage, f"server {why}: " + self.tail())
            self._out += chunk
        line, _, self._out = self._out.partition(b"\n")
        return line.decode(errors="replace").strip()

    def tail(self) -> str:
        return tail(self.log_path) or "(no output)"

    def command(self, cmd: str, timeout: float, stage: str) -> list[str]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(cmd.encode() + b"\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise ConfigError(stage, "server exited: " + self.tail()) from None
        return self.line(timeout, stage).split()

    def start(self, args: argparse.Namespace, client_cpus: set[int] | None,
              logdir: Path) -> None:
        """Until N subscribers are connected and subscribed; raises ConfigError."""
        deadline = time.monotonic() + args.timeout
        first = self.line(20, "start")
        if not first.startswith("listening"):
            raise ConfigError("start", f"server said {first[:200]!r}: {self.tail()}")
        sub = logdir / f"{self.spec.name}-{self.loop}-{self.n}"
        sub.mkdir()
        # The subscribers live as long as the whole (N, loop) block, repeats and waits
        # included; they exit with this process anyway.
        self.workers = w = Workers(self.port, self.n, args, sub, client=CLIENT, client_args=(),
                                   pin=pinned(client_cpus), lifetime=WORKER_LIFETIME_S)
        w.wait("ready", "clients", deadline)
        for cmd, event in (("connect", "connected"), ("subscribe", "subscribed")):
            w.command(cmd)
            reports = w.wait(event, cmd, deadline)
            ok = sum(r["ok"] for r in reports)
            if ok != self.n:
                errors: dict[str, int] = {}
                for r in reports:
                    for k, v in r.get("errors", {}).items():
                        errors[k] = errors.get(k, 0) + v
                raise ConfigError(cmd, f"{ok} of {self.n} ({errors or self.tail()})")
        words = self.command("count", 10, "subscribe")
        if words != ["subscribers", str(self.n)]:
            raise ConfigError("subscribe", f"the server counts {' '.join(words)[:80]}")

    def publish(self, args: argparse.Namespace) -> tuple[int, int]:
        """Publish the next seq and wait until every subscriber has it: (right, wrong)."""
        assert self.workers is not None
        seq, self.seq = self.seq, self.seq + 1
        words = self.command(f"publish {seq}", args.round_timeout, "publish")
        if words != ["published", str(seq), str(self.n)]:
            raise ConfigError("publish", f"the server answered {' '.join(words)[:80]!r}, "
                                         f"not 'published {seq} {self.n}'")
        reports = self.workers.wait("received", "publish",
                                    time.monotonic() + args.round_timeout)
        if any(r["seq"] != seq for r in reports):
            raise ConfigError("publish", f"a worker reported seq {[r['seq'] for r in reports]}"
                                         f" for {seq}")
        return sum(r["ok"] for r in reports), sum(r["bad"] for r in reports)

    def status(self) -> dict[str, Any]:
        assert self.workers is not None
        self.workers.command("status")
        reports = self.workers.wait("status", "status", time.monotonic() + 20)
        errors: dict[str, int] = {}
        for r in reports:
            for k, v in r.get("errors", {}).items():
                errors[k] = errors.get(k, 0) + v
        return {"dropped": sum(r["dropped"] for r in reports),
                "open": sum(r["open"] for r in reports), "errors": errors}

    def client_pids(self) -> list[int]:
        return [p.pid for p in self.workers.procs] if self.workers else []

    def stop(self) -> None:
        if self.workers is not None:
            try:
                self.workers.close()
            except OSError:
                pass  # a worker already gone: the server must still be stopped
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: the peers' and fastrpc's clean stop
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                try:
                    f.close()
                except BrokenPipeError:
                    pass
        self._log.close()

    def unexpected_output(self) -> list[str]:
        try:
            return [ln for ln in self.log_path.read_text(errors="replace").splitlines()
                    if ln.strip()]
        except OSError:
            return []


# -- one measured repeat -----------------------------------------------------------------

@dataclass
class Snap:
    t: float
    user: float
    sys: float
    runtime: float
    clients: float
    busy: float

    @classmethod
    def take(cls, server: FanoutServer) -> "Snap":
        user, sys_ = proc_user_sys_s(server.pid)
        return cls(time.monotonic(), user, sys_, proc_runtime_s(server.pid),
                   sum(proc_cpu_s(p) for p in server.client_pids()), machine_busy_s())


def measure(server: FanoutServer, k: int, args: argparse.Namespace) -> dict[str, Any]:
    row = h.new_row("server", server.spec.name, server.spec.label, server.loop,
                    str(server.n), n=server.n)
    if server.broken:
        row["failure"] = server.broken
        return row
    right = wrong = 0
    try:
        s0 = Snap.take(server)
        for _ in range(k):
            ok, bad = server.publish(args)
            right, wrong = right + ok, wrong + bad
        s1 = Snap.take(server)
        status = server.status()
    except (ConfigError, OSError) as e:
        server.broken = row["failure"] = f"{getattr(e, 'stage', 'measure')}: {e}"
        return row
    n = server.n
    cpu = (s1.user - s0.user) + (s1.sys - s0.sys)
    window = s1.t - s0.t
    clients = s1.clients - s0.clients
    row.update({
        "publishes": k, "delivered": right, "bad": wrong, "expected": n * k,
        "dropped": status["dropped"], "client_errors": status["errors"],
        "window_s": round(window, 4),
        "server_cpu_s": round(cpu, 4),
        "server_runtime_s": round(s1.runtime - s0.runtime, 6),
        "server_cpu_us_per_notification": cpu * 1e6 / right if right else None,
        "server_sys_us_per_notification": (s1.sys - s0.sys) * 1e6 / right if right else None,
        "server_runtime_us_per_notification": (s1.runtime - s0.runtime) * 1e6 / right
                                              if right else None,
        "server_ms_per_publish": cpu * 1e3 / k,
        "server_cores": cpu / window,
        "client_cpu_us_per_notification": clients * 1e6 / right if right else None,
        "wall_ms_per_publish": window * 1e3 / k,
        "other_cores": max(0.0, ((s1.busy - s0.busy) - cpu - clients) / window),
    })
    # (a tiny run can take less than one clock tick of utime + stime: the scheduler's
    # own clock, in ns, shows that the server ran)
    row["valid"] = (right == n * k and wrong == 0 and status["dropped"] == 0
                    and row["server_runtime_s"] > 0)
    if not row["valid"]:
        server.broken = (f"{right:,} of {n * k:,} notifications right, {wrong:,} wrong, "
                         f"{status['dropped']} connections dropped; {status['errors']}")
        row["failure"] = server.broken
    return row


def combine(reps: list[dict[str, Any]]) -> dict[str, Any]:
    return h.combine(reps, "server_cpu_us_per_notification",
                     ("server_cpu_us_per_notification", "server_sys_us_per_notification",
                      "server_cpu_s", "delivered", "wall_ms_per_publish", "other_cores"))


def publishes_for(n: int, args: argparse.Namespace) -> int:
    return args.publishes or max(3, math.ceil(args.deliveries / n))


# -- the whole run ---------------------------------------------------------------------------

def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    specs = [SERVERS[s] for s in args.servers.split(",")]
    loops = args.loops.split(",")
    ns = [int(x) for x in args.n.split(",")]
    server_cpus, client_cpus = cpu_plan(not args.no_pin)
    if client_cpus:
        os.sched_setaffinity(0, client_cpus)  # this process reads the workers' reports
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by every child
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    notes: list[str] = []
    env = h.environment()  # the tree as it was measured, before the first start
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fanout-") as tmp:
        logdir = Path(tmp)
        for n in ns:
            k = publishes_for(n, args)
            for loop in loops:
                print(f"N = {n:,}, {loop}: {len(specs)} servers, {args.repeat} × {k} "
                      f"publishes each", flush=True)
                servers: list[FanoutServer] = []
                try:
                    for spec in specs:
                        server = FanoutServer(spec, loop, n, server_cpus, logdir)
                        servers.append(server)
                        t0 = time.monotonic()
                        try:
                            server.start(args, client_cpus, logdir)
                            for _ in range(args.warmup):
                                ok, bad = server.publish(args)
                                if bad or ok != n:
                                    raise ConfigError("warm-up", f"{ok} of {n} right, {bad} wrong")
                        except ConfigError as e:
                            server.broken = f"{e.stage}: {e.reason}"
                        print(f"  {spec.label:48} {n:,} subscribed in "
                              f"{time.monotonic() - t0:.1f} s"
                              + (f"  FAILED: {server.broken}" if server.broken else ""),
                              flush=True)

                    reps = h.round_robin(args.repeat, [n], servers,
                                         lambda s, _n: (s.spec.name,),
                                         lambda s, _n: measure(s, k, args), progress_line,
                                         args.wait_quiet)
                finally:
                    for server in servers:
                        server.stop()
                for server in servers:
                    rows.append(combine(reps[(server.spec.name,)]))
                    extra = server.unexpected_output()
                    if extra:
                        problems.append(f"{server.spec.label} on {loop}, N = {n:,}, printed: "
                                        + " | ".join(extra[:6])[:800])
    h.flag_problems(rows, problems, lambda r: f"N = {r['n']:,}",
                    lambda r: r.get("failure", "invalid"))
    return {
        **h.run_header("fanout.py", argv, started),
        "settings": {"n": ns, "publishes": {str(n): publishes_for(n, args) for n in ns},
                     "deliveries": args.deliveries, "fixed_publishes": args.publishes,
                     "repeat": args.repeat, "warmup_publishes": args.warmup,
                     "workers": args.workers, "concurrency": args.concurrency,
                     "wait_quiet_s": args.wait_quiet, "interleaved": True,
                     "pinned": server_cpus is not None,
                     "server_cpus": sorted(server_cpus or []),
                     "client_cpus": sorted(client_cpus or [])},
        "environment": env,
        "scenarios": {str(n): {"n": n, "title": f"{n:,} subscribers",
                               "short": f"N = {n:,}"} for n in ns},
        "servers": {s.name: {"script": s.script, "label": s.label, "extra": list(s.extra)}
                    for s in specs},
        "payload_bytes": payload_sizes(),
        "notes": notes,
        "problems": problems,
        "runs": rows,
    }


def payload_sizes() -> dict[str, int]:
    import orjson

    return {"result": len(orjson.dumps(head(0))),
            "notification": len(notification("0x" + "0" * 32, 0))}


def progress_line(r: dict[str, Any]) -> str:
    head = f"{r['label']:48} {r['loop']:8} N={r['n']:<6}"
    if "failure" in r:
        return f"{head} FAILED: {r['failure']}"
    return (f"{head} {r['server_cpu_us_per_notification']:6.2f} µs CPU/notification  "
            f"{r['server_ms_per_publish']:7.2f} ms CPU/publish  server {r['server_cores']:.0%}"
            f"  other {r['other_cores']:.2f}")


# -- report ------------------------------------------------------------------------------------

def ratio_cells(data: dict[str, Any], r: dict[str, Any]) -> str:
    base = h.find(data, "server", BASELINE, r["loop"], r["scenario"])
    if r["server"] == BASELINE:
        return "1×"
    if base is None or not base["server_cpu_us_per_notification"] \
            or not r["server_cpu_us_per_notification"]:
        return "—"  # a window shorter than a clock tick: no ratio
    return f"{r['server_cpu_us_per_notification'] / base['server_cpu_us_per_notification']:.2f}×"


def render(data: dict[str, Any]) -> str:
    st, env = data["settings"], data["environment"]
    pay = data.get("payload_bytes", {})
    out = h.header_lines(data, "Fan-out: one publish to N subscribers, fastrpc vs websockets' "
                         "broadcast() and picows", "fanout.py") + [
        h.environment_text(env)
        + (f"Servers pinned to CPU {st['server_cpus']}, subscriber processes and this script "
           f"to CPU {st['client_cpus']}. " if st["pinned"] else "")
        + f"{st['workers']} subscriber processes per server; each publish is a "
          f"{pay.get('result', '?')}-byte `newHeads` header ({pay.get('notification', '?')} "
          "bytes of notification); "
        + ", ".join(f"{int(n):,} subscribers: {k} publishes per repeat"
                    for n, k in st["publishes"].items())
        + f", {st['warmup_publishes']} checked warm-up publishes before the first; "
        + (f"{st['repeat']} repeats going round the servers, the row shows the repeat with "
           "the median CPU per notification and, in parentheses, the range."
           if st["repeat"] > 1 else "one repeat."),
        "",
    ]
    out += h.note_lines(data)
    out += [
        "Columns: **CPU ÷ fastrpc** this row's server CPU per delivered notification ÷ "
        "fastrpc's (same N and loop; above 1× fastrpc costs less); **µs CPU per "
        "notification** the server process's utime + stime over the measured publishes ÷ "
        "notifications delivered and checked (the primary metric), **of which sys** its "
        "stime part (the `send` of every frame, and the loopback delivery Linux charges to "
        "the sender), **user** the rest: the library's own work (tick-sampled: a few "
        "clock ticks per repeat where it is below 1 µs); **ms CPU per publish** the same per publish; **wall ms per publish** "
        "from the command to the last subscriber's check (set by the subscriber processes, "
        "not the server); **server CPU** its share of a core over the window; **other** CPU "
        f"used by other processes meanwhile (cores; above {NOISY_CORES:.2f} the run was "
        "disturbed); **delivered** per repeat.",
        "",
    ]
    order = list(SERVERS)
    for key, sc in data["scenarios"].items():
        out += [f"## {sc['title']}", "",
                "| Server | Loop | CPU ÷ fastrpc | µs CPU per notification | of which sys | "
                "user | ms CPU per publish | wall ms per publish | server CPU | other | "
                "delivered | repeats |",
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in h.scenario_rows(data, key, "server", order):
            name = f"**{r['label']}**" if r["server"] == BASELINE else r["label"]
            if "failure" in r or not r.get("valid"):
                out.append(h.failure_line(name, r, r.get("failure") or "invalid"))
                continue
            out.append(
                f"| {name} | {r['loop']} | {ratio_cells(data, r)} | "
                f"{r['server_cpu_us_per_notification']:.2f}"
                f"{h.range_text(r.get('server_cpu_us_per_notification_range'))} | "
                f"{r['server_sys_us_per_notification']:.2f} | "
                f"{r['server_cpu_us_per_notification'] - r['server_sys_us_per_notification']:.2f} | "
                f"{r['server_ms_per_publish']:.2f} | {r['wall_ms_per_publish']:.1f} | "
                f"{r['server_cores']:.0%} | {h.noisy(r['other_cores'])} | "
                f"{r['delivered']:,} | {len(r.get('repeats', [r]))} |")
        out.append("")
    devs = [abs(r["server_runtime_us_per_notification"] / r["server_cpu_us_per_notification"] - 1)
            for r in data["runs"] if r.get("valid") and r.get("server_cpu_us_per_notification")]
    if devs:
        worst, median = h.spread(devs)
        out += [f"Cross-check: the server's on-CPU time from the scheduler "
                f"(`/proc/<pid>/task/*/schedstat`, ns) is within {worst:.1%} of the "
                f"tick-sampled utime + stime in every valid run (median {median:.1%}).", ""]
    out += h.footer_lines(
        data, "See `benchmarks/README.md` (section *Fan-out benchmark*): the servers, the "
        "subscribers' checks, and why each publish waits for the previous one.")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", default=DEFAULT_SERVERS,
                    help=f"comma-separated, from: {', '.join(SERVERS)}")
    ap.add_argument("--loops", default="asyncio,uvloop")
    ap.add_argument("--n", default="1000,10000", help="subscriber counts, comma-separated")
    ap.add_argument("--deliveries", type=int, default=200_000,
                    help="notifications per repeat: K = deliveries / N publishes (at least 3)")
    ap.add_argument("--publishes", type=int, default=0, metavar="K",
                    help="publishes per repeat, whatever N (overrides --deliveries)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3, help="checked publishes before measuring")
    ap.add_argument("--workers", type=int, default=4, help="subscriber processes per server")
    ap.add_argument("--concurrency", type=int, default=64,
                    help="handshakes or subscribe calls in flight, all workers together")
    ap.add_argument("--timeout", type=float, default=180.0,
                    help="seconds for a server's N subscribers to connect and subscribe")
    ap.add_argument("--round-timeout", type=float, default=60.0,
                    help="seconds for one publish to reach every subscriber")
    h.add_wait_quiet(ap, "before each repeat wait up to this long for other processes to use "
                     f"less than {NOISY_CORES} of a core")
    ap.add_argument("--no-pin", action="store_true", help="do not pin servers and subscribers")
    h.add_outputs(ap, "fanout")
    args = ap.parse_args(argv)
    for opt, allowed in (("servers", SERVERS), ("loops", h.LOOPS)):
        vals = getattr(args, opt).split(",")
        if any(v not in allowed for v in vals) or len(set(vals)) != len(vals):
            ap.error(f"--{opt}: distinct values from {', '.join(allowed)}")
    try:
        ns = [int(x) for x in args.n.split(",")]
    except ValueError:
        ap.error("--n: comma-separated integers")
    if any(not 1 <= n <= MAX_N for n in ns) or len(set(ns)) != len(ns):
        ap.error(f"--n: distinct counts in [1, {MAX_N:,}]")
    if args.publishes < 0 or args.deliveries < 1 or args.warmup < 0 or \
            not 1 <= args.repeat <= 20:
        ap.error("--publishes and --warmup must be at least 0, --deliveries at least 1, "
                 "--repeat in [1, 20]")
    if not 1 <= args.workers <= 250:
        ap.error("--workers must be in 1..250 (one 127.0.0.x address each)")
    data = h.results(args, argv, run)
    h.write_report(args, data, render)
    return 1 if any(not r.get("valid") for r in data["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
