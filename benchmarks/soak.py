"""Soak and churn: 20,000 connections for ten minutes, then a drain that must give
everything back.

    python benchmarks/soak.py [--n 20000] [--duration 600] [--server-workers 2] \\
        [--clients 4] [--calls-per-s 1000] [--churn 0.01] [--subscribe-pct 25] \\
        [--json benchmarks/results/soak.json] [--markdown benchmarks/results/soak.md] \\
        [--png docs/soak.png]

The server is ``fastrpc serve soak_app:build --workers 2`` (``benchmarks/soak_app.py``):
a supervisor and two worker processes on one port (``SO_REUSEPORT``). Two, because a
process may hold 20,000 open files on this machine (``ulimit -Hn``; raising the hard
limit needs privileges) and 20,000 connections plus listeners do not fit in one. The
clients are ``--clients`` processes (``benchmarks/soak_client.py``), each from its own
127.0.0.x address (its own ephemeral port range) and under 20,000 sockets.

Phases, in order:

1. **start**: the supervisor and its workers; every worker writes one stats line a
   second (``soak_app.py`` says what is in it and why it is a file).
2. **baseline** (``--settle`` s): nothing connected; *RSS before the ramp*.
3. **ramp**: ``--n`` connections opened (at most ``--concurrency`` handshakes in flight);
   ``--subscribe-pct`` of them subscribe to the server's one-a-second tick.
4. **steady** (``--duration`` s): ``--calls-per-s`` calls in total, every reply checked;
   ``--churn`` of the connections per second closed and reopened (clean closes and
   resets, alternately); every notification counted and its tick number checked.
5. **drain**: no new calls; replies in flight awaited; every client connection closed
   (clean and reset, alternately).
6. **after**: until every worker's table is empty and its pool has no block in use
   (at most ``--drain-timeout`` s), then ``--settle`` s more: *RSS after the drain*.
   Then SIGTERM to the supervisor, which must exit 0.

Every second, from the server side: each worker's RSS (``/proc/<pid>/statm``, read by
this script) and its latest stats line (table count, connections, pool bytes in use
and reserved, subscriptions, every counter of ``server.metrics()``); beside them the
clients' running totals.

Checks (the exit status is 1 when one fails; each is in the JSON and the Markdown):
after the drain every table is empty, no pool byte is in use and no subscription is
left; RSS after the drain is within ``--drain-margin-mib`` per worker of RSS before the
ramp; RSS at the end of the steady phase is within ``--steady-margin-mib`` per worker of
RSS at its start (20,000 connections both times, the churned ones in between); the
clients saw no error (an unexpected close, a failed connect, a wrong or missing reply,
a missed notification), every call was answered or abandoned with a churned
connection, every connection reached the server, no worker restarted, and the server
printed nothing unexpected and stopped cleanly.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import resource
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _harness import (ROOT, LineWorkers, StageError, die_with_parent, environment, free_port,
                      header_lines, shares, tail)

BENCH = ROOT / "benchmarks"
CLIENT = BENCH / "soak_client.py"
PAGE = os.sysconf("SC_PAGE_SIZE")
MiB = 2**20
READY = re.compile(r"fastrpc worker listening on \S+ \(worker (\d+), pid (\d+)\)")
# RSS margins, per worker, each plus that worker's fan-out burst (the pool reserved right
# after a publish): glibc may or may not keep the pool's arenas freed between two ticks,
# so RSS can sit that much higher or lower for minutes (benchmarks/README.md: Soak).
LEAK_MARGIN_MIB = 1.0   # over the post-ramp baseline
DRAIN_MARGIN_MIB = 4.0  # over RSS before the ramp
# The stats lines' figures sampled every second, per worker (name in the row: path in the line)
FIGURES = {
    "table": ("table",), "connections": ("metrics", "connections"),
    "pool_in_use": ("metrics", "pool_bytes_in_use"),
    "pool_reserved": ("metrics", "pool_bytes_reserved"),
    "subscriptions": ("rpc", "subscriptions"), "channels": ("rpc", "channels"),
    "requests_in_flight": ("metrics", "requests_in_flight"),
    "pool_in_use_burst": ("burst", "pool_in_use"),
    "pool_reserved_burst": ("burst", "pool_reserved"),
}
# The clients' running totals, summed over the clients, in every row
CLIENT_FIGURES = ("open", "connecting", "closing", "opened", "calls_sent", "calls_ok",
                  "calls_abandoned", "notifications", "churned_clean", "churned_reset")


def statm(pid: int) -> tuple[int, int]:
    """Resident bytes of ``pid`` and the file-backed (and shared) part of them: the
    second and third fields of ``/proc/<pid>/statm``, in pages."""
    with open(f"/proc/{pid}/statm", "rb") as f:
        v = f.read().split()
    return int(v[1]) * PAGE, int(v[2]) * PAGE


def log(msg: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {msg}", flush=True)


def dig(obj: dict[str, Any], path: tuple[str, ...]) -> Any:
    for k in path:
        obj = obj[k]
    return obj


# -- the server ------------------------------------------------------------------------------

class SoakServer:
    """``fastrpc serve soak_app:build`` and what its workers write: their pids (from the
    ready lines) and their stats lines (read incrementally)."""

    def __init__(self, args: argparse.Namespace, logdir: Path) -> None:
        self.args = args
        self.port = free_port()
        self.stats_dir = logdir / "stats"
        self.stats_dir.mkdir()
        self.log_path = logdir / "server.log"
        self.cmd = [sys.executable, "-m", "fastrpc", "serve", "soak_app:build",
                    "--workers", str(args.server_workers), "--port", str(self.port),
                    "--loop", args.loop, "--stop-timeout", "30"]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(BENCH),
                                                          env.get("PYTHONPATH")]))
        env.update(SOAK_STATS_DIR=str(self.stats_dir),
                   SOAK_MAX_CONNECTIONS=str(args.max_connections))
        if args.malloc_arena_max:
            env["MALLOC_ARENA_MAX"] = str(args.malloc_arena_max)
        for k in ("PYTHONMALLOC", "PYTHONDEVMODE", "PYTHONASYNCIODEBUG"):
            env.pop(k, None)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent)
        self.pids: list[int] = []       # the workers', in the order they became ready
        self.latest: dict[int, dict[str, Any]] = {}  # pid -> its last stats line
        self.published: dict[int, int] = {}  # pid -> notifications written, all ticks
        self._offsets: dict[Path, int] = {}
        self._partial: dict[Path, bytes] = {}
        self.exit_code: int | None = None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def check(self, stage: str) -> None:
        """StageError if the supervisor exited or a worker was restarted."""
        if self.proc.poll() is not None:
            raise StageError(stage, f"the server exited with {self.proc.returncode}: "
                                    f"{tail(self.log_path)}")
        ready = READY.findall(self.output())
        if self.args.server_workers == 1:
            if "fastrpc worker listening" in self.output() and not self.pids:
                self.pids = [self.proc.pid]
            return
        pids = [int(p) for _, p in ready]
        if len(pids) > self.args.server_workers:
            raise StageError(stage, f"a worker was restarted (ready lines: {pids}): "
                                    f"{tail(self.log_path)}")
        self.pids = pids

    def read_stats(self) -> None:
        for path in self.stats_dir.glob("stats-*.jsonl"):
            with open(path, "rb") as f:
                f.seek(self._offsets.get(path, 0))
                data = self._partial.pop(path, b"") + f.read()
                self._offsets[path] = f.tell()
            *lines, rest = data.split(b"\n")
            if rest:
                self._partial[path] = rest
            for line in lines:
                obj = json.loads(line)
                self.latest[obj["pid"]] = obj
                self.published[obj["pid"]] = self.published.get(obj["pid"], 0) + obj["published"]

    def stop(self) -> int:
        """SIGTERM to the supervisor (it drains and stops its workers); its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        self.exit_code = self.proc.returncode
        return self.exit_code

    def unexpected_output(self) -> list[str]:
        """Lines besides the supervisor's and the workers' own start and stop lines."""
        ok = ("fastrpc supervisor", "fastrpc worker listening")
        return [ln for ln in self.output().splitlines() if ln.strip() and not ln.startswith(ok)]


# -- the run --------------------------------------------------------------------------------------

class Soak:
    def __init__(self, args: argparse.Namespace, logdir: Path) -> None:
        self.args = args
        self.logdir = logdir
        self.t0 = time.monotonic()
        self.server: SoakServer | None = None
        self.clients: LineWorkers | None = None
        self.samples: list[dict[str, Any]] = []
        self.phases: list[dict[str, Any]] = []
        self.status: dict[int, dict[str, Any]] = {}  # client -> its latest totals
        self.done: dict[str, dict[int, dict[str, Any]]] = {}  # event -> client -> object
        self.next_sample = time.monotonic()
        self.next_progress = 0.0
        self.marks: dict[str, dict[str, Any]] = {}  # the stats lines at the phases' ends
        self.drained_wall = 0.0  # time.time() when every client had left

    # -- phases and sampling --------------------------------------------------------------
    def now(self) -> float:
        return time.monotonic() - self.t0

    def enter(self, name: str) -> None:
        if self.phases:
            self.phases[-1]["end"] = round(self.now(), 2)
        self.phases.append({"phase": name, "start": round(self.now(), 2)})
        log(f"{name}")

    @property
    def phase(self) -> str:
        return self.phases[-1]["phase"] if self.phases else "start"

    def sample(self) -> None:
        assert self.server is not None
        self.server.check(self.phase)
        self.server.read_stats()
        t_wall = time.time()
        row: dict[str, Any] = {"t": round(self.now(), 2), "phase": self.phase,
                               "rss": [], "rss_file": [], "stats_age_s": []}
        for k in FIGURES:
            row[k] = []
        for pid in self.server.pids:
            try:
                rss, shared = statm(pid)
                row["rss"].append(rss)
                row["rss_file"].append(shared)
            except OSError:
                raise StageError(self.phase, f"worker {pid} is gone") from None
            line = self.server.latest.get(pid)
            row["stats_age_s"].append(None if line is None else round(t_wall - line["t"], 2))
            for k, path in FIGURES.items():
                row[k].append(None if line is None else dig(line, path))
        tot = self.client_totals()
        row["clients"] = {k: tot.get(k, 0) for k in CLIENT_FIGURES}
        row["clients"]["errors"] = sum(tot.get("errors", {}).values())
        self.samples.append(row)
        if time.monotonic() >= self.next_progress:
            self.next_progress = time.monotonic() + self.args.progress
            conns = sum(x or 0 for x in row["connections"])
            log(f"  {row['t']:7.1f} s {self.phase:8} server conns {conns:6,} table "
                f"{sum(x or 0 for x in row['table']):6,} RSS "
                + " + ".join(f"{r / MiB:.1f}" for r in row["rss"]) + " MiB, pool in use "
                f"{sum(x or 0 for x in row['pool_in_use']) / 1024:,.0f} KiB; clients open "
                f"{row['clients']['open']:,}, calls ok {row['clients']['calls_ok']:,}, "
                f"notifications {row['clients']['notifications']:,}, errors "
                f"{row['clients']['errors']}")

    def client_totals(self) -> dict[str, Any]:
        out: dict[str, Any] = {"errors": {}}
        for st in self.status.values():
            for k, v in st.items():
                if k == "errors":
                    for reason, n in v.items():
                        out["errors"][reason] = out["errors"].get(reason, 0) + n
                elif isinstance(v, int):
                    out[k] = out.get(k, 0) + v
        return out

    def pump(self, until: Any = None, seconds: float | None = None,
             limit: float | None = None) -> None:
        """Sample every second and take the clients' reports until ``until()`` holds or
        ``seconds`` have passed; StageError past ``limit`` seconds."""
        start = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= self.next_sample:
                self.sample()
                self.next_sample += 1.0
                if self.next_sample < now:  # this process was held up: no catching up
                    self.next_sample = now + 1.0
            if until is not None and until():
                return
            if seconds is not None and now - start >= seconds:
                return
            if limit is not None and now - start > limit:
                raise StageError(self.phase, f"not done after {limit:g} s")
            wait = max(0.0, min(self.next_sample - time.monotonic(), 0.25))
            if self.clients is None:
                time.sleep(wait)
                continue
            for i, obj in self.clients.events(wait, self.phase):
                ev = obj.get("event")
                if ev in ("status", "connected", "drained"):
                    self.status[i] = {k: v for k, v in obj.items() if k != "event"}
                if ev != "status":
                    self.done.setdefault(ev, {})[i] = obj

    def all_reported(self, event: str) -> bool:
        assert self.clients is not None
        return len(self.done.get(event, {})) == len(self.clients.procs)

    def mark(self, name: str) -> None:
        """Keep every worker's first stats line written after now (the phase's end)."""
        srv = self.server
        assert srv is not None
        t = time.time()
        self.pump(until=lambda: all(srv.latest.get(pid, {}).get("t", 0) > t for pid in srv.pids),
                  limit=10)
        self.marks[name] = {str(i): srv.latest.get(pid) for i, pid in enumerate(srv.pids)}

    def server_drained(self) -> bool:
        assert self.server is not None
        lines = [self.server.latest.get(pid) for pid in self.server.pids]
        return all(ln is not None and ln["table"] == 0 and ln["metrics"]["pool_bytes_in_use"] == 0
                   and ln["rpc"]["subscriptions"] == 0 and ln["t"] > self.drained_wall
                   for ln in lines)

    def run(self) -> None:
        a = self.args
        self.enter("start")
        self.server = SoakServer(a, self.logdir)
        srv = self.server
        self.pump(until=lambda: len(srv.pids) == a.server_workers
                  and all(p in srv.latest for p in srv.pids), limit=60)
        self.enter("baseline")
        self.pump(seconds=a.settle)
        self.mark("baseline")

        self.enter("ramp")
        parts = shares(a.n, a.clients)
        conc = max(1, a.concurrency // len(parts))
        timeout = a.duration + a.ramp_timeout + 120
        cmds = [[sys.executable, str(CLIENT), "--port", str(srv.port), "--count", str(c),
                 "--first", str(first), "--source", f"127.0.0.{2 + i}",
                 "--concurrency", str(conc), "--calls-per-s", str(a.calls_per_s / len(parts)),
                 "--churn", str(a.churn), "--subscribe-pct", str(a.subscribe_pct),
                 "--call-timeout", str(a.call_timeout), "--close-timeout", str(a.close_timeout),
                 "--stall", str(a.stall), "--phase-timeout", str(a.ramp_timeout),
                 "--lifetime", str(timeout), "--seed", str(i)]
                for i, (first, c) in enumerate(parts)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.clients = LineWorkers(cmds, self.logdir, env, last_event="drained")
        self.pump(until=lambda: self.all_reported("ready"), limit=60)
        self.clients.command("connect")
        self.pump(until=lambda: self.all_reported("connected"), limit=a.ramp_timeout + 10)
        self.mark("ramp")

        self.enter("steady")
        self.clients.command("steady")
        self.pump(seconds=a.duration)
        self.mark("steady")

        self.enter("drain")
        self.clients.command("drain")
        self.pump(until=lambda: self.all_reported("drained"),
                  limit=a.call_timeout + a.close_timeout + 30)
        self.drained_wall = time.time()
        self.clients.reap()  # each exits after its "drained"
        self.clients = None

        self.enter("after")
        try:
            self.pump(until=self.server_drained, limit=a.drain_timeout)
        except StageError:
            log(f"  the server did not give everything back within {a.drain_timeout:g} s")
        self.pump(seconds=a.settle)
        self.mark("after")
        self.phases[-1]["end"] = round(self.now(), 2)

    def close(self) -> None:
        if self.clients is not None:
            self.clients.close()
            self.clients = None
        if self.server is not None and self.server.exit_code is None:
            self.server.stop()


# -- the figures and the checks ---------------------------------------------------------------

def phase_rows(samples: list[dict[str, Any]], phase: str) -> list[dict[str, Any]]:
    return [r for r in samples if r["phase"] == phase]


def rss_of(rows: list[dict[str, Any]], workers: int) -> list[int] | None:
    """Per worker, the median RSS over ``rows``."""
    rows = [r for r in rows if len(r["rss"]) == workers]
    if not rows:
        return None
    return [int(statistics.median(r["rss"][w] for r in rows)) for w in range(workers)]


def steady_windows(data: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The steady phase's rows of the post-ramp baseline (``steady_window_s`` seconds
    from ``steady_warmup_s`` on) and of its end (the last ``steady_window_s``)."""
    p = data["params"]
    steady = phase_rows(data["samples"], "steady")
    if not steady:
        return [], []
    t0 = steady[0]["t"] + p["steady_warmup_s"]
    start = [r for r in steady if t0 <= r["t"] < t0 + p["steady_window_s"]]
    end = [r for r in steady if r["t"] >= steady[-1]["t"] - p["steady_window_s"]]
    return start, end


def figures(data: dict[str, Any]) -> dict[str, Any]:
    """RSS at the phases that matter, per worker, and the clients' and server's totals."""
    p = data["params"]
    w = p["server_workers"]
    s = data["samples"]
    steady = phase_rows(s, "steady")
    base = phase_rows(s, "baseline")
    after = phase_rows(s, "after")
    start, end = steady_windows(data)
    f: dict[str, Any] = {
        "rss_before_ramp": rss_of(base[-5:], w),
        "rss_post_ramp": rss_of(start, w),
        "rss_steady_end": rss_of(end, w),
        "rss_after_drain": rss_of(after[-5:], w),
        "rss_peak": [max((r["rss"][i] for r in s if len(r["rss"]) == w), default=0)
                     for i in range(w)],
        "connections_peak": max((sum(x or 0 for x in r["connections"]) for r in s), default=0),
        "connections_steady_min": min((sum(x or 0 for x in r["connections"]) for r in steady),
                                      default=0),
        "pool_in_use_peak": max((sum(x or 0 for x in r["pool_in_use"]) for r in s), default=0),
        "pool_reserved_peak": max((sum(x or 0 for x in r["pool_reserved"]) for r in s),
                                  default=0),
        "pool_in_use_burst_peak": max((sum(x or 0 for x in r["pool_in_use_burst"]) for r in s),
                                      default=0),
        # per worker: the most the pool reserved right after a publish
        "burst_reserved_peak": [max((r["pool_reserved_burst"][i] or 0 for r in s
                                     if len(r["pool_reserved_burst"]) == w), default=0)
                                for i in range(w)],
    }
    marks = data["marks"]
    after_lines = [ln for ln in marks.get("after", {}).values() if ln]
    ramp_lines = [ln for ln in marks.get("ramp", {}).values() if ln]
    f["connections_after_ramp"] = sum(ln["metrics"]["connections"] for ln in ramp_lines)
    f["table_after_drain"] = [ln["table"] for ln in after_lines]
    f["pool_in_use_after_drain"] = [ln["metrics"]["pool_bytes_in_use"] for ln in after_lines]
    f["pool_reserved_after_drain"] = [ln["metrics"]["pool_bytes_reserved"] for ln in after_lines]
    f["subscriptions_after_drain"] = [ln["rpc"]["subscriptions"] for ln in after_lines]
    counters = ("accepted", "upgraded", "closed_peer", "closed_eof", "closed_by_server",
                "closed_idle", "closed_pong_timeout", "closed_slow_reader",
                "closed_close_timeout", "closed_protocol", "closed_nomem", "refused_http",
                "handshake_timeout", "pending_overflow", "accept_paused", "messages_in",
                "messages_out", "pings_sent", "pool_failed_acquires")
    f["server_counters"] = {k: sum(ln["metrics"].get(k, 0) for ln in after_lines)
                            for k in counters}
    f["server_notifications_published"] = data.get("published", 0)
    def minus(a: list[int] | None, b: list[int] | None) -> list[int] | None:
        return [x - y for x, y in zip(a, b)] if a and b else None

    f["rss_steady_growth"] = minus(f["rss_steady_end"], f["rss_post_ramp"])
    f["rss_after_minus_post_ramp"] = minus(f["rss_after_drain"], f["rss_post_ramp"])
    f["rss_after_minus_before"] = minus(f["rss_after_drain"], f["rss_before_ramp"])
    if start and end and f["rss_steady_growth"]:
        churn = ("churned_clean", "churned_reset")
        churned = sum(end[len(end) // 2]["clients"][k] - start[len(start) // 2]["clients"][k]
                      for k in churn)
        f["churned_between_windows"] = churned
        # As if the largest growth of a worker were all leaked by its share of the churn:
        # an upper bound on what a churned connection leaves behind.
        f["leak_bound_per_churned_conn"] = (
            round(max(0, max(f["rss_steady_growth"])) / (churned / w), 1) if churned else None)
    return f


def checks(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pass/fail verdict of the run, each with what was measured and the limit."""
    p, f, c = data["params"], data["figures"], data["clients"]
    out: list[dict[str, Any]] = []

    def check(name: str, ok: bool, value: Any, limit: str) -> None:
        out.append({"check": name, "ok": bool(ok), "value": value, "limit": limit})

    if data.get("failure"):
        check("the run completed", False, data["failure"], "every phase")
    w = p["server_workers"]
    after_ok = len(f.get("table_after_drain", [])) == w
    check("table empty after the drain", after_ok and not any(f["table_after_drain"]),
          f.get("table_after_drain"), "0 slots in use, each worker")
    check("pool fully returned after the drain",
          after_ok and not any(f["pool_in_use_after_drain"]),
          f.get("pool_in_use_after_drain"), "0 bytes in use, each worker")
    check("no subscription left after the drain",
          after_ok and not any(f["subscriptions_after_drain"]),
          f.get("subscriptions_after_drain"), "0, each worker")
    burst = f.get("burst_reserved_peak") or [0] * w
    for key, name, margin in (
            ("rss_steady_growth", "RSS flat through the steady phase (its end vs the "
             "post-ramp baseline)", p["leak_margin_mib"]),
            ("rss_after_minus_post_ramp", "RSS after the drain within the margin of the "
             "post-ramp baseline", p["leak_margin_mib"]),
            ("rss_after_minus_before", "RSS after the drain within the margin of RSS "
             "before the ramp", p["drain_margin_mib"])):
        grown = f.get(key)
        limits = [int(margin * MiB) + b for b in burst]
        check(name, grown is not None and all(g <= m for g, m in zip(grown, limits)), grown,
              f"at most {margin:g} MiB + the worker's fan-out burst more: "
              + " / ".join(f"{m / MiB:.2f} MiB" for m in limits))
    errors = c.get("errors", {})
    check("no client error", not errors and c.get("failed", 0) == 0, errors or c.get("failed", 0),
          "none: no unexpected close, failed connect, wrong or missing reply, missed notification")
    check("every connection reached the server", f.get("connections_after_ramp") == p["n"],
          f.get("connections_after_ramp"), f"{p['n']} open after the ramp")
    sc = f.get("server_counters", {})
    pairs = {"upgraded / opened": (sc.get("upgraded"), c.get("opened")),
             "closed_peer / closed_clean": (sc.get("closed_peer"), c.get("closed_clean")),
             "closed_eof / closed_reset": (sc.get("closed_eof"), c.get("closed_reset"))}
    check("the server counted what the clients did", all(a == b for a, b in pairs.values()),
          {k: list(v) for k, v in pairs.items()},
          "server upgrades, close frames and resets = the clients' opens, clean closes, resets")
    answered = c.get("calls_ok", 0) + c.get("calls_abandoned", 0)
    check("every call answered or abandoned by the churn",
          c.get("calls_sent", 0) > 0 and answered == c.get("calls_sent"),
          {"sent": c.get("calls_sent", 0), "ok": c.get("calls_ok", 0),
           "abandoned": c.get("calls_abandoned", 0)}, "ok + abandoned = sent, sent > 0")
    check("notifications flowed", c.get("notifications", 0) > 0 and
          c.get("notifications_missed", 0) == 0,
          {"received": c.get("notifications", 0), "missed": c.get("notifications_missed", 0)},
          "received > 0, none missed")
    churned = c.get("churned_clean", 0) + c.get("churned_reset", 0)
    check("connections churned, both ways", c.get("churned_clean", 0) > 0
          and c.get("churned_reset", 0) > 0, churned, "clean closes and resets > 0")
    check("the server stopped cleanly", data.get("server_exit") == 0 and not data.get(
        "server_unexpected_output"), {"exit": data.get("server_exit"),
                                      "output": data.get("server_unexpected_output", [])[:5]},
          "exit status 0, nothing printed besides the start and stop lines")
    return out


# -- reports --------------------------------------------------------------------------------------

def mib(v: float | None) -> str:
    return "—" if v is None else f"{v / MiB:,.1f} MiB"


def per_worker(vs: list[int] | None, unit: Any = mib) -> str:
    if not vs:
        return "—"
    return " + ".join(unit(v) for v in vs) + (f" = {unit(sum(vs))}" if len(vs) > 1 else "")


def signed_kib(v: float) -> str:
    return f"{v / 1024:+,.0f} KiB"


def kib(v: float) -> str:
    return f"{v / 1024:,.0f} KiB"


def render(data: dict[str, Any]) -> str:
    p, f, c, env = data["params"], data["figures"], data["clients"], data["env"]
    steady = next((ph for ph in data["phases"] if ph["phase"] == "steady"), None)
    held = (steady["end"] - steady["start"]) if steady and "end" in steady else 0
    churned = c.get("churned_clean", 0) + c.get("churned_reset", 0)
    verdict = "**passed**" if data["ok"] else "**FAILED**"
    lines = header_lines(data, "Soak and churn", "soak.py") + [
        f"Environment: {env['cpu']} ({env['cpus']} CPUs, shared with other work), Linux "
        f"{env['kernel']}, CPython {env['python']}, {p['loop']}; fastrpc at "
        f"`{env['commit'][:12]}`" + (" (with uncommitted changes)" if env["dirty"] else "")
        + f". Open files per process: {data['rlimit_nofile']:,} (hard limit), so the server "
        f"is `fastrpc serve --workers {p['server_workers']}` (SO_REUSEPORT) and the "
        f"clients are {p['clients']} processes, each from its own 127.0.0.x address.",
        "",
        f"Verdict: {verdict}. {p['n']:,} connections held for {held:,.0f} s with "
        f"{churned:,} of them churned ({c.get('churned_clean', 0):,} clean closes, "
        f"{c.get('churned_reset', 0):,} resets), {c.get('calls_ok', 0):,} calls answered "
        f"and checked, {c.get('notifications', 0):,} notifications received and checked "
        f"by {c.get('subscriptions', 0):,} subscriptions.",
        "",
        "| check | result | measured | limit |",
        "|---|---|---|---|",
    ]
    for ch in data["checks"]:
        val = json.dumps(ch["value"]) if not isinstance(ch["value"], str) else ch["value"]
        if ch["check"].startswith("RSS") and isinstance(ch["value"], list):
            val = " / ".join(signed_kib(v) for v in ch["value"])
        lines.append(f"| {ch['check']} | {'ok' if ch['ok'] else '**failed**'} | "
                     f"{val.replace('|', '/')[:200]} | {ch['limit']} |")
    lines += [
        "",
        "| figure | per server worker (and total) |",
        "|---|---|",
        f"| RSS before the ramp | {per_worker(f.get('rss_before_ramp'))} |",
        f"| RSS post-ramp baseline (median of steady {p['steady_warmup_s']:g}–"
        f"{p['steady_warmup_s'] + p['steady_window_s']:g} s) | {per_worker(f.get('rss_post_ramp'))} |",
        f"| RSS at the end of the steady phase (median of its last {p['steady_window_s']:g} s) "
        f"| {per_worker(f.get('rss_steady_end'))} |",
        f"| RSS peak | {per_worker(f.get('rss_peak'))} |",
        f"| RSS after the drain | {per_worker(f.get('rss_after_drain'))} |",
        f"| end of steady − post-ramp baseline | "
        f"{per_worker(f.get('rss_steady_growth'), signed_kib)} |",
        f"| after the drain − post-ramp baseline | "
        f"{per_worker(f.get('rss_after_minus_post_ramp'), signed_kib)} |",
        f"| after the drain − before the ramp | "
        f"{per_worker(f.get('rss_after_minus_before'), signed_kib)} |",
        f"| largest steady growth of a worker ÷ its share of the connections churned "
        f"between the two windows (a bound on a leak per churned connection) | "
        f"{f.get('leak_bound_per_churned_conn', '—')} B "
        f"({f.get('churned_between_windows', 0):,} churned) |",
        f"| pool in use / reserved between ticks, peak (all workers) | "
        f"{f['pool_in_use_peak'] / 1024:,.0f} KiB / {f['pool_reserved_peak'] / 1024:,.0f} KiB |",
        f"| pool in use right after a publish, peak (all workers) | "
        f"{f['pool_in_use_burst_peak'] / 1024:,.0f} KiB |",
        f"| pool reserved right after a publish, peak (the fan-out burst in the margins) | "
        f"{per_worker(f.get('burst_reserved_peak'), kib)} |",
        f"| pool reserved after the drain | {per_worker(f.get('pool_reserved_after_drain'), kib)} |",
        f"| server connections: after the ramp / fewest in the steady phase / peak | "
        f"{f.get('connections_after_ramp', 0):,} / {f['connections_steady_min']:,} / "
        f"{f['connections_peak']:,} |",
        "",
        "Clients (all processes): "
        + ", ".join(f"{k} {c.get(k, 0):,}" for k in (
            "opened", "churned_clean", "churned_reset", "closed_clean", "closed_reset",
            "calls_sent", "calls_ok", "calls_abandoned", "subscribed", "notifications",
            "pings")) + ".",
        "",
        "Server counters (all workers, at the end): "
        + ", ".join(f"{k} {v:,}" for k, v in f["server_counters"].items()) + "; "
        f"notifications written {f['server_notifications_published']:,}.",
        "",
        f"Phases (s from the start): " + ", ".join(
            f"{ph['phase']} {ph['start']:.0f}–{ph.get('end', ph['start']):.0f}"
            for ph in data["phases"]) + ".",
        "",
        "Every figure is sampled once a second from the server side: RSS from "
        "`/proc/<pid>/statm` of each worker, the table count, connections, pool bytes and "
        "subscriptions from the stats line each worker writes every second "
        "(`benchmarks/soak_app.py`). The margins are explained in `benchmarks/README.md` "
        "(Soak); the curve is in `docs/soak.png`.",
        "",
    ]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    """RSS, connections, pool bytes and the call and notification rates over time, the
    phases shaded (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, p = data["samples"], data["params"]
    w = p["server_workers"]
    rows = [r for r in s if len(r["rss"]) == w]
    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(4, 1, sharex=True, figsize=(10, 10), constrained_layout=True)
    ax = axes[0]
    for i in range(w):
        ax.plot(t, [r["rss"][i] / MiB for r in rows], lw=1, label=f"worker {i}")
    start, end = steady_windows(data)
    for win, label in ((start, "post-ramp baseline"), (end, "end of steady")):
        if win:
            ax.axvspan(win[0]["t"], win[-1]["t"], color="#7fbf7f", alpha=0.3, zorder=1)
            ax.annotate(label, (win[0]["t"], 0.02), xycoords=("data", "axes fraction"),
                        fontsize=7)
    ax.set_ylabel("RSS (MiB)")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    ax.plot(t, [sum(x or 0 for x in r["connections"]) for r in rows], lw=1,
            label="server: connections open")
    ax.plot(t, [sum(x or 0 for x in r["table"]) for r in rows], lw=1, ls="--",
            label="server: table slots in use")
    ax.plot(t, [r["clients"]["open"] for r in rows], lw=1, ls=":", label="clients: open")
    ax.set_ylabel("connections")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[2]
    ax.plot(t, [sum(x or 0 for x in r["pool_in_use"]) / 1024 for r in rows], lw=1,
            label="pool in use")
    ax.plot(t, [sum(x or 0 for x in r["pool_reserved"]) / 1024 for r in rows], lw=1,
            ls="--", label="pool reserved")
    ax.plot(t, [sum(x or 0 for x in r["pool_in_use_burst"]) / 1024 for r in rows], lw=0.8,
            ls=":", label="pool in use right after the tick's publish (before the flush)")
    ax.set_ylabel("pool (KiB, all workers)")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[3]
    for key, label in (("calls_ok", "calls answered /s"), ("notifications", "notifications /s")):
        rate = [0.0] + [max(0.0, (b["clients"][key] - a["clients"][key]) / max(1e-3, b["t"] - a["t"]))
                        for a, b in zip(rows, rows[1:])]
        ax.plot(t, rate, lw=0.8, label=label)
    ax.set_ylabel("per second")
    ax.set_xlabel("seconds")
    ax.legend(loc="upper left", fontsize=8)
    colors = {"baseline": "#e8f0ff", "ramp": "#fff3d6", "steady": "#eaf7ea",
              "drain": "#fde4e4", "after": "#efefef"}
    for ph in data["phases"]:
        if ph["phase"] not in colors or "end" not in ph:
            continue
        for ax in axes:
            ax.axvspan(ph["start"], ph["end"], color=colors[ph["phase"]], zorder=0)
        axes[0].annotate(ph["phase"], ((ph["start"] + ph["end"]) / 2, 1.0),
                         xycoords=("data", "axes fraction"), ha="center", va="bottom",
                         fontsize=8)
    c = data["clients"]
    fig.suptitle(f"fastrpc soak: {p['n']:,} connections, {p['server_workers']} workers, "
                 f"{c.get('churned_clean', 0) + c.get('churned_reset', 0):,} churned, "
                 f"{c.get('calls_ok', 0):,} calls, {c.get('notifications', 0):,} notifications "
                 f"({data['env']['commit'][:10]}" + (", dirty" if data["env"]["dirty"] else "")
                 + ")", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the command line --------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="connections held (default 20,000)")
    ap.add_argument("--duration", type=float, default=600.0,
                    help="seconds of the steady phase (default 600)")
    ap.add_argument("--server-workers", type=int, default=2,
                    help="fastrpc serve --workers (default 2)")
    ap.add_argument("--max-connections", type=int, default=15_000,
                    help="each worker's max_connections (default 15,000)")
    ap.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    ap.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    ap.add_argument("--concurrency", type=int, default=64,
                    help="handshakes in flight, all clients together (default 64)")
    ap.add_argument("--calls-per-s", type=float, default=1000.0,
                    help="calls per second, all clients together (default 1,000)")
    ap.add_argument("--churn", type=float, default=0.01,
                    help="share of the connections closed and reopened per second (default 0.01)")
    ap.add_argument("--subscribe-pct", type=int, default=25,
                    help="percent of the connections subscribed to the tick (default 25)")
    ap.add_argument("--call-timeout", type=float, default=10.0)
    ap.add_argument("--close-timeout", type=float, default=5.0)
    ap.add_argument("--stall", type=float, default=10.0,
                    help="seconds a subscriber may hear nothing (default 10)")
    ap.add_argument("--ramp-timeout", type=float, default=180.0)
    ap.add_argument("--drain-timeout", type=float, default=30.0,
                    help="seconds for the server to empty its table after the drain")
    ap.add_argument("--settle", type=float, default=15.0,
                    help="seconds sampled before the ramp and after the drain (default 15)")
    ap.add_argument("--steady-warmup", type=float, default=60.0,
                    help="seconds into the steady phase where the post-ramp baseline "
                         "window starts (default 60)")
    ap.add_argument("--steady-window", type=float, default=30.0,
                    help="seconds of samples whose median RSS is the post-ramp baseline, "
                         "and the end of the steady phase (default 30)")
    ap.add_argument("--leak-margin-mib", type=float, default=LEAK_MARGIN_MIB,
                    help="RSS at the end of the steady phase and after the drain may exceed "
                         f"the post-ramp baseline by this much, per worker (default "
                         f"{LEAK_MARGIN_MIB:g})")
    ap.add_argument("--drain-margin-mib", type=float, default=DRAIN_MARGIN_MIB,
                    help="RSS after the drain may exceed RSS before the ramp by this much, "
                         f"per worker (default {DRAIN_MARGIN_MIB:g})")
    ap.add_argument("--malloc-arena-max", type=int, default=2,
                    help="MALLOC_ARENA_MAX for the server (default 2, as memory.py; 0: glibc's)")
    ap.add_argument("--progress", type=float, default=10.0, help="seconds between progress lines")
    ap.add_argument("--json", type=Path, default=BENCH / "results" / "soak.json")
    ap.add_argument("--markdown", type=Path, default=BENCH / "results" / "soak.md")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "soak.png")
    ap.add_argument("--from-json", type=Path, help="only render an existing JSON file")
    ap.add_argument("--keep-logs", action="store_true")
    args = ap.parse_args(argv)

    if args.from_json:  # the figures and checks again, from the samples (margins: the run's)
        data = json.loads(args.from_json.read_text())
        judge(data)
        write_outputs(args, data)
        return 0 if data["ok"] else 1

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if args.n < 1 or args.duration <= 0 or args.server_workers < 1 or args.clients < 1:
        ap.error("--n, --duration, --server-workers and --clients must be positive")
    if args.clients > 250:
        ap.error("--clients must be at most 250 (one 127.0.0.x address each)")
    worst = -(-args.n // args.server_workers) * 11 // 10 + 1  # the kernel's split is uneven
    if worst > args.max_connections:
        ap.error(f"{args.server_workers} workers may each get ~{worst:,} of {args.n:,} "
                 f"connections: raise --max-connections or --server-workers")
    if args.max_connections + 100 > hard:
        ap.error(f"--max-connections {args.max_connections:,} does not fit in "
                 f"{hard:,} open files per process: add --server-workers")
    if -(-args.n // args.clients) + 100 > hard:
        ap.error(f"a client process cannot hold {-(-args.n // args.clients):,} sockets "
                 f"under {hard:,} open files: add --clients")
    if args.steady_warmup + 2 * args.steady_window > args.duration:
        ap.error("--steady-warmup + 2 × --steady-window must fit in --duration (the "
                 "post-ramp baseline window ends before the end window starts)")
    per_conn_s = args.n / max(args.calls_per_s, 1e-9)
    if per_conn_s > 240:  # the server's idle_timeout is 300 s (its default)
        ap.error(f"at {args.calls_per_s:g} calls/s each connection sends a call every "
                 f"{per_conn_s:.0f} s, past the server's 300 s idle timeout: raise --calls-per-s")

    shown = [a if not a.startswith("/") else os.path.relpath(a, ROOT) for a in sys.argv[1:]]
    data: dict[str, Any] = {
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "benchmarks/soak.py", *shown]),
        "env": environment(("matplotlib",)),
        "rlimit_nofile": hard,
        "params": {k: getattr(args, k) for k in (
            "n", "duration", "server_workers", "max_connections", "clients", "loop",
            "concurrency", "calls_per_s", "churn", "subscribe_pct", "call_timeout",
            "close_timeout", "stall", "settle", "drain_margin_mib", "leak_margin_mib",
            "malloc_arena_max")} | {"steady_warmup_s": args.steady_warmup,
                                    "steady_window_s": args.steady_window},
    }
    logdir = Path(tempfile.mkdtemp(prefix="fastrpc-soak-"))
    soak = Soak(args, logdir)
    t0 = time.monotonic()
    try:
        soak.run()
    except StageError as e:
        data["failure"] = f"{e.stage}: {e.reason}"
        log(f"FAILED at {e.stage}: {e.reason}")
    finally:
        soak.close()
    assert soak.server is not None
    data["server_exit"] = soak.server.exit_code
    data["server_unexpected_output"] = soak.server.unexpected_output()
    data["published"] = sum(soak.server.published.values())
    data["wall_s"] = round(time.monotonic() - t0, 1)
    data["phases"] = soak.phases
    data["clients"] = soak.client_totals()
    data["marks"] = soak.marks
    data["samples"] = soak.samples
    judge(data)
    if args.keep_logs:
        log(f"logs kept in {logdir}")
    else:
        subprocess.run(["rm", "-rf", str(logdir)], check=False)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {os.path.relpath(args.json)}")
    write_outputs(args, data)
    return 0 if data["ok"] else 1


def judge(data: dict[str, Any]) -> None:
    data["figures"] = figures(data)
    data["checks"] = checks(data)
    data["ok"] = all(ch["ok"] for ch in data["checks"])


def write_outputs(args: argparse.Namespace, data: dict[str, Any]) -> None:
    text = render(data)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(text + "\n")
    print(f"wrote {os.path.relpath(args.markdown)}")
    plot(data, args.png)
    print(f"wrote {os.path.relpath(args.png)}")
    for ch in data["checks"]:
        print(f"  {'ok    ' if ch['ok'] else 'FAILED'} {ch['check']}: {json.dumps(ch['value'])}")


if __name__ == "__main__":
    sys.exit(main())
