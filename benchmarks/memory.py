"""Server memory per WebSocket connection: fastrpc beside websockets, aiohttp, picows.

    python benchmarks/memory.py --servers fastrpc,websockets,websockets-nocomp,aiohttp,picows \\
        --loops asyncio,uvloop --n 5000,19000 \\
        [--json benchmarks/results/memory.json] [--markdown benchmarks/results/memory.md]

For every N, server and event loop (one configuration), in this order:

1. Start the server in its own process (``examples/echo_server.py`` for fastrpc,
   ``benchmarks/peers/echo_<name>.py`` for the peers) with ``--max-connections N``,
   so that whatever a server allocates up front for N connections is in its
   baseline, and wait until its socket listens (read from ``/proc/net/tcp``: no
   probe connection touches the server).
   Before that, the same server is started once with ``--max-connections 1`` (the
   probe), so that what the start with N reserves up front is measured too.
2. Let its RSS settle and read ``VmRSS`` from ``/proc/<pid>/status``: the baseline.
3. Open N WebSocket connections from client worker processes
   (``benchmarks/memory_client.py``, one per 127.0.0.x source address), let the RSS
   settle: **idle bytes per connection** = (RSS − baseline) / N.
4. Send one masked text message (``--size`` bytes, 200 by default) on every
   connection and wait for every echo, let the RSS settle: **touched bytes per
   connection** = (RSS − baseline) / N.
5. Close every connection, stop the server (SIGTERM, then SIGKILL).

"Settled" means ``--settle-window`` seconds of samples (every 0.25 s) within
``--settle-tolerance`` bytes of each other, waiting at most ``--settle-max``
seconds; a reading that never settled is marked. A server that does not start,
does not accept all N connections, drops connections or does not echo is reported
with the reason; every configuration is bounded by ``--timeout`` seconds.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

from _harness import LineWorkers, die_with_parent, read_status, shares, tail
from _harness import StageError as ConfigError  # this configuration cannot be measured

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "benchmarks" / "memory_client.py"
PEERS = ROOT / "benchmarks" / "peers"

#: name -> (script relative to the repository root, extra arguments)
SERVERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "fastrpc": ("examples/echo_server.py", ()),
    "websockets": ("benchmarks/peers/echo_websockets.py", ()),
    "websockets-nocomp": ("benchmarks/peers/echo_websockets.py", ("--compression", "none")),
    "aiohttp": ("benchmarks/peers/echo_aiohttp.py", ()),
    "aiohttp-nocomp": ("benchmarks/peers/echo_aiohttp.py", ("--compression", "none")),
    "picows": ("benchmarks/peers/echo_picows.py", ()),
}
BASELINE = "fastrpc"
TARGET_BYTES = 256  # fastrpc's goal: idle connection cost, bytes of RSS
LOOPS = ("asyncio", "uvloop")

START_TIMEOUT = 30.0  # s for a server to listen
STOP_GRACE = 10.0     # s between SIGTERM and SIGKILL
POLL = 0.25           # s between RSS samples
TCP_LISTEN = "0A"     # socket state in /proc/net/tcp


@dataclass
class Result:
    server: str
    loop: str
    n: int
    status: str = "ok"               # "ok" or "failed"
    stage: str = ""                  # where a failed configuration stopped
    reason: str = ""
    probe_rss: int | None = None     # bytes: the same server started with --max-connections 1
    baseline_rss: int | None = None  # bytes: started with --max-connections N, no connection
    reserved: int | None = None      # RssAnon at N - RssAnon at 1: what N costs up front
    idle_rss: int | None = None
    touched_rss: int | None = None
    idle_per_conn: float | None = None     # bytes
    touched_per_conn: float | None = None
    idle_all_in: float | None = None  # idle_per_conn + reserved / N
    connect_s: float | None = None   # all N established, wall clock
    touch_s: float | None = None     # all N messages echoed
    deflate: int | None = None       # connections on which permessage-deflate was negotiated
    pings: int | None = None         # pings the clients answered (keepalive)
    rss_detail: dict[str, dict[str, int]] = field(default_factory=dict)  # VmRSS, RssAnon, RssFile
    settle: dict[str, dict[str, float | bool]] = field(default_factory=dict)
    command: str = ""
    seconds: float = 0.0


# -- the server process ----------------------------------------------------------------

def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def listening(pid: int, port: int) -> bool:
    """True once ``pid`` holds a TCP socket listening on ``port``."""
    want = f":{port:04X}"
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        rows = [line.split() for line in f]
    inodes = {r[9] for r in rows if r[1].endswith(want) and r[3] == TCP_LISTEN}
    return bool(inodes & socket_inodes(pid)) if inodes else False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProc:
    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.cmd = cmd
        self.log = log
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self, stage: str) -> None:
        if self.proc.poll() is not None:
            raise ConfigError(stage, f"server exited with code {self.proc.returncode}: "
                                     f"{tail(self.log) or '(no output)'}")

    def wait_listening(self, port: int, deadline: float) -> None:
        while time.monotonic() < deadline:
            self.check_alive("start")
            try:
                if listening(self.pid, port):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise ConfigError("start", f"not listening on port {port} after {START_TIMEOUT:g} s: "
                                   f"{tail(self.log) or '(no output)'}")

    def rss(self) -> dict[str, int]:
        try:
            return read_status(self.pid)
        except OSError as e:
            raise ConfigError("measure", f"cannot read /proc/{self.pid}/status: {e}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_GRACE)
        self._log_file.close()


def settle(server: ServerProc, stage: str, args: argparse.Namespace,
           deadline: float) -> tuple[dict[str, int], dict[str, float | bool]]:
    """Sample RSS until ``--settle-window`` seconds of samples agree within the tolerance."""
    t0 = time.monotonic()
    need = max(2, round(args.settle_window / POLL) + 1)
    samples: list[int] = []
    last: dict[str, int] = {}
    limit = min(deadline, t0 + args.settle_max)
    while True:
        server.check_alive(stage)
        last = server.rss()
        samples.append(last["VmRSS"])
        window = samples[-need:]
        if len(window) == need and max(window) - min(window) <= args.settle_tolerance:
            return last, {"settled": True, "seconds": round(time.monotonic() - t0, 2)}
        if time.monotonic() + POLL > limit:
            return last, {"settled": False, "seconds": round(time.monotonic() - t0, 2),
                          "spread": max(window) - min(window)}
        time.sleep(POLL)


# -- client workers -------------------------------------------------------------------------

class Workers(LineWorkers):
    """The client processes (see ``memory_client.py``): ``n`` connections shared out
    over ``--workers`` of them, each from its own 127.0.0.x address, sharing
    ``args.concurrency``. ``client`` and its ``client_args`` are another worker script's
    (``fanout.py``: ``fanout_client.py``); ``pin`` (``_harness.pinned``) sets their CPUs."""

    def __init__(self, port: int, n: int, args: argparse.Namespace, logdir: Path,
                 client: Path = CLIENT, client_args: Sequence[str] | None = None,
                 pin: Callable[[], None] | None = None, lifetime: float | None = None
                 ) -> None:
        """``lifetime``: seconds after which a worker exits whatever happens (default
        ``args.timeout`` + 60; a worker also exits when this process goes away)."""
        if client_args is None:
            client_args = ("--size", str(args.size))
        parts = shares(n, args.workers)
        conc = max(1, args.concurrency // len(parts))
        super().__init__([
            [sys.executable, str(client), "--port", str(port), "--count", str(c),
             "--first", str(first), "--source", f"127.0.0.{2 + i}",
             "--concurrency", str(conc), *client_args,
             "--phase-timeout", str(max(5.0, args.timeout / 3)),
             "--lifetime", str(lifetime or args.timeout + 60)]
            for i, (first, c) in enumerate(parts)], logdir, pin=pin)


def merge(reports: list[dict[str, Any]]) -> tuple[int, int, str]:
    ok = sum(r["ok"] for r in reports)
    failed = sum(r["failed"] for r in reports)
    errors: dict[str, int] = {}
    for r in reports:
        for k, v in r.get("errors", {}).items():
            errors[k] = errors.get(k, 0) + v
    why = "; ".join(f"{k} ×{v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1])[:3])
    return ok, failed, why


# -- one configuration -------------------------------------------------------------------------

def server_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONMALLOC", None)
    if args.malloc_arena_max:
        env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
    else:
        env.pop("MALLOC_ARENA_MAX", None)
    return env


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


def run_config(name: str, loop: str, n: int, args: argparse.Namespace, logdir: Path) -> Result:
    res = Result(name, loop, n)
    t_start = time.monotonic()
    deadline = t_start + args.timeout
    script, extra = SERVERS[name]
    port = free_port()
    cmd = [sys.executable, script, "--port", str(port), "--loop", loop,
           "--max-connections", str(n), *extra]
    res.command = shlex.join(["python", *cmd[1:]])
    if not (ROOT / script).exists():
        res.status, res.stage, res.reason = "failed", "start", f"{script} does not exist"
        log(f"  FAILED at start: {res.reason}")
        return res
    server: ServerProc | None = None
    workers: Workers | None = None
    try:
        if args.reserve_probe:
            probe = [*cmd[:cmd.index("--max-connections") + 1], "1", *extra]
            probe[probe.index("--port") + 1] = str(free_port())
            server = ServerProc(probe, server_env(args), logdir / f"{name}-{loop}-1.log")
            server.wait_listening(int(probe[probe.index("--port") + 1]),
                                  min(deadline, time.monotonic() + START_TIMEOUT))
            rss, res.settle["probe"] = settle(server, "probe", args, deadline)
            res.probe_rss, res.rss_detail["probe"] = rss["VmRSS"], rss
            server.stop()
            server = None
        server = ServerProc(cmd, server_env(args), logdir / f"{name}-{loop}-{n}.log")
        server.wait_listening(port, min(deadline, time.monotonic() + START_TIMEOUT))
        rss, res.settle["baseline"] = settle(server, "baseline", args, deadline)
        res.baseline_rss, res.rss_detail["baseline"] = rss["VmRSS"], rss
        if res.probe_rss is not None:
            res.reserved = rss["RssAnon"] - res.rss_detail["probe"]["RssAnon"]
        log(f"  baseline {rss['VmRSS'] / 2**20:.1f} MiB; opening {n} connections")

        workers = Workers(port, n, args, logdir)
        workers.wait("ready", "clients", deadline)
        t0 = time.monotonic()
        workers.command("connect")
        reports = workers.wait("connected", "connect", deadline)
        res.connect_s = round(time.monotonic() - t0, 3)
        ok, failed, why = merge(reports)
        res.deflate = sum(r["deflate"] for r in reports)
        if ok != n:
            server.check_alive("connect")
            raise ConfigError("connect", f"{ok} of {n} connections accepted ({why})")
        if args.hold:
            log(f"  holding {n} idle connections for {args.hold:g} s")
            hold_until = min(deadline, time.monotonic() + args.hold)
            while time.monotonic() < hold_until:
                server.check_alive("idle")
                time.sleep(min(1.0, max(0.0, hold_until - time.monotonic())))
        rss, res.settle["idle"] = settle(server, "idle", args, deadline)
        res.idle_rss, res.rss_detail["idle"] = rss["VmRSS"], rss
        res.idle_per_conn = (res.idle_rss - res.baseline_rss) / n
        if res.reserved is not None:
            res.idle_all_in = res.idle_per_conn + res.reserved / n
        workers.command("status")
        status = workers.wait("status", "idle", deadline)
        dropped = sum(s["dropped"] for s in status)
        if dropped:
            raise ConfigError("idle", f"{dropped} idle connections dropped "
                                      f"({merge([dict(s, ok=0, failed=0) for s in status])[2]})")
        log(f"  {n} connected in {res.connect_s:.1f} s; idle {res.idle_per_conn:,.0f} B/conn; "
            f"touching")

        t0 = time.monotonic()
        workers.command("touch")
        reports = workers.wait("touched", "touch", deadline)
        res.touch_s = round(time.monotonic() - t0, 3)
        ok, failed, why = merge(reports)
        if ok != n:
            raise ConfigError("touch", f"{ok} of {n} messages echoed ({why})")
        rss, res.settle["touched"] = settle(server, "touched", args, deadline)
        res.touched_rss, res.rss_detail["touched"] = rss["VmRSS"], rss
        res.touched_per_conn = (res.touched_rss - res.baseline_rss) / n
        workers.command("status")
        status = workers.wait("status", "touched", deadline)
        res.pings = sum(s["pings"] for s in status)
        dropped = sum(s["dropped"] for s in status)
        if dropped:
            raise ConfigError("touched", f"{dropped} connections dropped after the echo")
        log(f"  touched {res.touched_per_conn:,.0f} B/conn")
    except ConfigError as e:
        res.status, res.stage, res.reason = "failed", e.stage, e.reason
        log(f"  FAILED at {e.stage}: {e.reason}")
    finally:
        if workers is not None:
            workers.close()
        if server is not None:
            server.stop()
    res.seconds = round(time.monotonic() - t_start, 1)
    return res


# -- reporting -----------------------------------------------------------------------------------

def stale_build() -> str:
    """Why the compiled fastrpc core may not match its sources ("" when it does)."""
    pkg = ROOT / "fastrpc"
    built = list(pkg.glob("_core*.so"))
    if not built:
        return "fastrpc/_core is not built (python setup.py build_ext --inplace)"
    so = max(p.stat().st_mtime for p in built)
    newer = sorted(p.name for ext in ("pyx", "pxd", "pxi") for p in pkg.glob(f"*.{ext}")
                   if p.stat().st_mtime > so)
    return f"sources newer than the built core: {', '.join(newer)}" if newer else ""


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "kernel": platform.release()}
    for dist in ("websockets", "aiohttp", "picows", "uvloop"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", ".", ":!benchmarks/results"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        out["fastrpc"] = rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        out["fastrpc"] = "?"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _b(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}"


def _ratio(v: float | None, base: float | None) -> str:
    if v is None or base is None or base <= 0:
        return "—"
    r = v / base
    return f"{r:,.0f}×" if r >= 9.5 else f"{r:.1f}×"


def render(meta: dict[str, Any], results: list[Result]) -> str:
    v = meta["versions"]
    out = [
        "# Server memory per WebSocket connection",
        "",
        f"Generated by `benchmarks/memory.py` at {meta['date']}, in "
        f"{meta['seconds']:.0f} s. From the repository root:",
        "",
        "```",
        meta["command"],
        "```",
        "",
        f"Environment: {meta['cpus']} CPUs, Linux {v['kernel']}, CPython {v['python']}; "
        f"websockets {v['websockets']}, aiohttp {v['aiohttp']}, picows {v['picows']}, "
        f"uvloop {v['uvloop']}; fastrpc at `{v['fastrpc']}`. Every server ran with "
        f"{'MALLOC_ARENA_MAX=' + str(meta['malloc_arena_max']) if meta['malloc_arena_max'] else 'the default glibc malloc arenas'}"
        f". Clients: {meta['workers']} worker processes (127.0.0.2 upwards), at most "
        f"{meta['concurrency']} handshakes or echoes in flight; touch message "
        f"{meta['size']} bytes of text"
        f"{'; connections held idle ' + format(meta['hold'], 'g') + ' s before the idle reading' if meta.get('hold') else ''}.",
        "",
    ]
    if meta.get("stale_build"):
        out += [f"**Warning**: {meta['stale_build']}: fastrpc was measured on an older build.", ""]
    fast = {(r.loop, r.n): r for r in results if r.server == BASELINE and r.status == "ok"}
    for n in meta["n"]:
        rows = [r for r in results if r.n == n]
        if not rows:
            continue
        out += [
            f"## N = {n:,} connections",
            "",
            "| server | loop | baseline RSS | reserved for N | idle B/conn | "
            "idle B/conn, reserve included | touched B/conn | idle ÷ fastrpc | "
            "touched ÷ fastrpc | connect time | deflate | status |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        for r in rows:
            base = fast.get((r.loop, r.n))
            name = f"**{r.server}**" if r.server == BASELINE else r.server
            if r.status != "ok":
                status = f"failed at {r.stage}: {r.reason}".replace("|", "\\|")
            else:
                unsettled = [k for k, s in r.settle.items() if not s.get("settled")]
                status = "ok" + (f" (RSS still moving at: {', '.join(unsettled)})"
                                 if unsettled else "")
            baseline = "—" if r.baseline_rss is None else f"{r.baseline_rss / 2**20:.1f} MiB"
            reserved = "—" if r.reserved is None else f"{r.reserved / 1024:+,.0f} KiB"
            rel = r.server != BASELINE
            out.append(
                f"| {name} | {r.loop} | {baseline} | {reserved} | {_b(r.idle_per_conn)} | "
                f"{_b(r.idle_all_in)} | "
                f"{_b(r.touched_per_conn)} | "
                f"{_ratio(r.idle_per_conn, base and base.idle_per_conn) if rel else '1×'} | "
                f"{_ratio(r.touched_per_conn, base and base.touched_per_conn) if rel else '1×'} | "
                f"{'—' if r.connect_s is None else f'{r.connect_s:.1f} s'} | "
                f"{'—' if r.deflate is None else ('yes' if r.deflate else 'no')} | {status} |"
            )
        out.append("")
    verdicts = [r for r in results if r.server == BASELINE and r.status == "ok"]
    if verdicts:
        out += [f"**Target: an idle fastrpc connection costs at most {TARGET_BYTES} bytes of "
                "RSS.**", ""]
        for r in verdicts:
            worst = max(x for x in (r.idle_per_conn, r.idle_all_in) if x is not None)
            met = "met" if worst <= TARGET_BYTES else "**not met**"
            all_in = "" if r.idle_all_in is None else \
                f", {r.idle_all_in:,.0f} B with the up-front reserve for N included"
            out.append(f"* N = {r.n:,}, {r.loop}: {r.idle_per_conn:,.0f} B idle{all_in} → {met}")
        out.append("")
    out += [
        "Bytes per connection = (server VmRSS − baseline VmRSS) / N, read from "
        "`/proc/<pid>/status` once the RSS has settled. *Idle*: after the upgrade, "
        "nothing sent. *Touched*: after one message was echoed on every connection. "
        "The baseline is the server's RSS before any connection, started with "
        "`--max-connections N`. *Reserved for N* is what that start costs more than "
        "starting the same server with `--max-connections 1`, compared on anonymous "
        "memory (`RssAnon`: the file-backed part of RSS differs by up to ~0.2 MiB "
        "between two starts of the same program, whichever library pages happen to be "
        "faulted in); *reserve included* charges it to the connections: idle B/conn + "
        "reserved / N. The peers have no connection limit, so their reserve is noise "
        "around zero (tens of KiB). Ratios are peer ÷ fastrpc "
        "for the same N and loop (idle, reserve not included). *Connect time*: wall clock for all N upgrades "
        "with the handshakes in flight capped as above. *Deflate*: whether the server "
        "accepted the `permessage-deflate` offer the clients make. Kernel socket memory "
        "is not in RSS and not counted. See `benchmarks/README.md` for the method and "
        "its caveats.",
        "",
    ]
    return "\n".join(out)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def csv(kind: type, text: str) -> list[Any]:
    return [kind(x.strip().replace("_", "")) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--servers", default="fastrpc,websockets,websockets-nocomp,aiohttp,picows",
                    help=f"comma-separated, from: {', '.join(SERVERS)}")
    ap.add_argument("--loops", default="asyncio,uvloop", help="from: asyncio, uvloop")
    ap.add_argument("--n", default="5000,19000", help="connection counts, comma-separated")
    ap.add_argument("--json", type=Path, help="write the results as JSON here")
    ap.add_argument("--markdown", type=Path, help="write the report as Markdown here")
    ap.add_argument("--workers", type=int, default=4, help="client processes (default 4)")
    ap.add_argument("--concurrency", type=int, default=64,
                    help="handshakes or echoes in flight, all workers together (default 64; "
                         "stays under the peers' listen backlog of 100)")
    ap.add_argument("--size", type=int, default=200, help="touch message, bytes (default 200)")
    ap.add_argument("--timeout", type=float, default=180.0,
                    help="seconds per configuration (default 180)")
    ap.add_argument("--settle-window", type=float, default=3.0,
                    help="seconds of RSS samples that must agree (default 3)")
    ap.add_argument("--settle-tolerance", type=int, default=64 * 1024,
                    help="bytes those samples may differ by (default 65536)")
    ap.add_argument("--settle-max", type=float, default=30.0,
                    help="longest wait for the RSS to settle, seconds (default 30)")
    ap.add_argument("--hold", type=float, default=0.0,
                    help="seconds to keep the connections idle before the idle reading "
                         "(default 0; 45 lets every server's keepalive ping run once)")
    ap.add_argument("--malloc-arena-max", type=int, default=2,
                    help="MALLOC_ARENA_MAX for every server (default 2; 0: glibc's default)")
    ap.add_argument("--no-reserve-probe", dest="reserve_probe", action="store_false",
                    help="skip starting each server once with --max-connections 1 (which "
                         "measures what a server reserves for N before any connection)")
    ap.add_argument("--keep-logs", action="store_true", help="keep server and client logs")
    args = ap.parse_args(argv)

    servers = csv(str, args.servers)
    loops = csv(str, args.loops)
    ns = csv(int, args.n)
    bad = [s for s in servers if s not in SERVERS] + [x for x in loops if x not in LOOPS]
    if bad:
        ap.error(f"unknown: {', '.join(bad)}")
    if any(n < 1 for n in ns):
        ap.error("--n must be positive")
    if args.workers < 1 or args.workers > 250:
        ap.error("--workers must be in 1..250 (one 127.0.0.x address each)")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    too_many = [n for n in ns if n > hard - 100]
    if too_many:
        log(f"warning: RLIMIT_NOFILE is {hard}; a server cannot hold {too_many} connections")

    shown = [a if not a.startswith("/") else os.path.relpath(a, ROOT) for a in sys.argv[1:]]
    meta: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/memory.py", *shown]),
        "versions": versions(), "cpu": cpu_model(), "cpus": os.cpu_count(),
        "rlimit_nofile": hard,
        "malloc_arena_max": args.malloc_arena_max, "hold": args.hold, "workers": args.workers,
        "concurrency": args.concurrency, "size": args.size, "timeout": args.timeout,
        "settle": {"window_s": args.settle_window, "tolerance_bytes": args.settle_tolerance,
                   "max_s": args.settle_max, "poll_s": POLL},
        "n": ns, "servers": servers, "loops": loops,
    }
    if BASELINE in servers:
        meta["stale_build"] = stale_build()
        if meta["stale_build"]:
            log(f"warning: {meta['stale_build']}; run "
                "`python setup.py build_ext --inplace -q` to measure the current code")
    results: list[Result] = []
    t0 = time.monotonic()
    logdir = Path(tempfile.mkdtemp(prefix="fastrpc-memory-"))
    try:
        for n in ns:
            for name in servers:
                for loop in loops:
                    log(f"{name} / {loop} / N={n}")
                    results.append(run_config(name, loop, n, args, logdir))
                    meta["seconds"] = time.monotonic() - t0
                    if args.json:
                        write_atomic(args.json, json.dumps(
                            {"meta": meta, "results": [asdict(r) for r in results]}, indent=1))
    finally:
        if args.keep_logs:
            log(f"logs kept in {logdir}")
        else:
            for f in logdir.iterdir():
                f.unlink()
            logdir.rmdir()
    meta["seconds"] = time.monotonic() - t0
    text = render(meta, results)
    print()
    print(text)
    if args.json:
        write_atomic(args.json, json.dumps(
            {"meta": meta, "results": [asdict(r) for r in results]}, indent=1) + "\n")
    if args.markdown:
        write_atomic(args.markdown, text)
    return 0 if all(r.status == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
