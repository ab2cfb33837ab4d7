"""What the benchmarks share. For the load benchmarks (``load.py``, ``client_load.py``,
``http_load.py``): /proc sampling, the server processes, CPU pinning, the repeats going
round the configurations and their median/range combination, the environment, the
report's common lines and Markdown cells, and the command-line plumbing
(``--wait-quiet``, ``--json``/``--markdown``/``--from-json``, the checks of list options
and ranges). For the benchmarks that hold many connections (``memory.py``,
``fanout.py``, ``soak.py``): the client processes driven by line commands
(``LineWorkers``), how connections are shared out over them, and children that die
with this process."""
from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import json
import os
import platform
import select
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
LOOPS = ("asyncio", "uvloop")

NOISY_CORES = 0.10  # other processes using more than this share of a core: flagged

Row = dict[str, Any]


# -- /proc sampling -------------------------------------------------------------------

def proc_user_sys_s(pid: int) -> tuple[float, float]:
    """utime and stime of a whole process (every thread), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()  # the name may contain spaces
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK  # fields 14 and 15 of stat


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a whole process (every thread), in seconds."""
    return sum(proc_user_sys_s(pid))


def proc_runtime_s(pid: int) -> float:
    """On-CPU time of every live thread of a process from the scheduler's own clock
    (``/proc/<pid>/task/*/schedstat``, ns): a cross-check of the tick-sampled
    utime + stime."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread ended meanwhile
    return total / 1e9


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent not idle (``cpu`` line of /proc/stat)."""
    with open("/proc/stat", "rb") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return (sum(v[:8]) - idle) / CLK_TCK  # guest time is already inside user


def wait_quiet(limit_s: float, idle_cores: float = NOISY_CORES, sample_s: float = 0.5) -> bool:
    """Wait up to ``limit_s`` for a ``sample_s`` window in which all other processes
    together use less than ``idle_cores`` of a core; whether one was found."""
    deadline = time.monotonic() + limit_s
    while True:
        b0, t0 = machine_busy_s(), time.monotonic()
        time.sleep(sample_s)
        if (machine_busy_s() - b0) / (time.monotonic() - t0) < idle_cores:
            return True
        if time.monotonic() >= deadline:
            print(f"  (machine still busy after waiting {limit_s:g} s; running anyway)",
                  flush=True)
            return False


# -- processes --------------------------------------------------------------------------

@dataclass(frozen=True)
class ServerSpec:
    name: str
    script: str          # relative to the repository root
    label: str           # as shown in the tables
    echo: bool = False   # replies are echoes of the requests (no JSON-RPC)
    extra: tuple[str, ...] = ()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_plan(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    return env


class ServerProcess:
    def __init__(self, spec: ServerSpec, loop: str, cpus: set[int] | None, logdir: Path,
                 env: dict[str, str] | None = None):
        """``env``: the server's environment (``child_env()`` unless given)."""
        self.spec, self.loop = spec, loop
        self.port = free_port()
        self.log_path = logdir / f"server-{spec.name}-{loop}.log"
        self.cmd = [sys.executable, spec.script, "--port", str(self.port), "--loop", loop,
                    *spec.extra]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, env=env or child_env(), stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     preexec_fn=pinned(cpus))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until it prints ``listening`` (or, failing that, accepts TCP), or raise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with code {self.proc.returncode}: "
                                   + self.output()[-600:])
            if b"listening" in self.log_path.read_bytes():
                return
            if time.monotonic() > deadline - timeout / 2:
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                    return
                except OSError:
                    pass
            time.sleep(0.05)
        raise RuntimeError(f"not listening on port {self.port} after {timeout:.0f} s")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def unexpected_output(self) -> list[str]:
        """Lines it printed besides its ``listening`` line (tracebacks, warnings)."""
        return [ln for ln in self.output().splitlines()
                if ln.strip() and not ln.startswith("listening on")]


def read_status(pid: int) -> dict[str, int]:
    """``VmRSS``, ``RssAnon``, ``RssFile``, ``RssShmem`` of a process, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


def tail(path: Path, lines: int = 6) -> str:
    """The last ``lines`` lines of a log, joined with `` | `` ("" when unreadable)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


PR_SET_PDEATHSIG = 1  # prctl option, <linux/prctl.h>


def die_with_parent() -> None:
    """In a child, before exec: SIGTERM it when this script dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def child_setup(pin: Callable[[], None] | None = None) -> Callable[[], None]:
    """A ``preexec_fn``: ``die_with_parent``, then ``pin`` (``pinned(cpus)``) if given."""
    if pin is None:
        return die_with_parent

    def setup() -> None:
        die_with_parent()
        pin()
    return setup


def readline(proc: subprocess.Popen, timeout: float) -> str:
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if r else ""



def environment(extra_dists: Sequence[str] = ()) -> dict[str, Any]:
    """The machine, the interpreter, the versions of the peers' libraries (and of
    ``extra_dists``) and this tree's commit."""
    def ver(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit, dirty = "?", False
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", ".", ":!benchmarks/results"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        pass
    dists = ("websockets", "aiohttp", "picows", "aiofastnet", "uvloop", "orjson", "Cython")
    return {
        "cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {d: ver(d) for d in dict.fromkeys((*dists, *extra_dists))},
        "commit": commit, "dirty": dirty,
    }


def tree_state(path: Path, *dirs: str) -> dict[str, Any]:
    """Commit and branch of the git tree at ``path``; ``dirty``: changes under ``dirs``."""
    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=path, capture_output=True, text=True).stdout.strip()

    return {"path": str(path), "commit": git("rev-parse", "HEAD"),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", *dirs))}


# -- client processes driven by line commands -------------------------------------------------

class StageError(Exception):
    """A run cannot go on; ``stage`` says where it stopped."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


def shares(n: int, k: int) -> list[tuple[int, int]]:
    """``n`` connections over at most ``k`` workers: (index of the first, count) each,
    the counts differing by at most one."""
    k = max(1, min(k, n))
    per, extra = divmod(n, k)
    out, first = [], 0
    for i in range(k):
        c = per + (i < extra)
        out.append((first, c))
        first += c
    return out


class LineWorkers:
    """Client processes driven by lines: one command per line on their stdin, one JSON
    object per line on their stdout (``memory_client.py``, ``soak_client.py``); stderr
    goes to a log per worker, quoted when one exits early. A worker exits after its
    ``last_event``: an exit before it is an error. ``pin`` runs in each worker before
    exec (``pinned(cpus)``: its CPUs)."""

    def __init__(self, cmds: Sequence[Sequence[str]], logdir: Path,
                 env: dict[str, str] | None = None, last_event: str = "closed",
                 pin: Callable[[], None] | None = None) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.bufs: dict[int, bytes] = {}
        self.last_event = last_event
        self.finished: set[int] = set()  # workers that reported their last event
        self.sel = selectors.DefaultSelector()
        for i, cmd in enumerate(cmds):
            log = logdir / f"client-{i}.log"
            self.logs.append(log)
            with open(log, "wb") as err:
                p = subprocess.Popen(list(cmd), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=err, env=env, start_new_session=True,
                                     preexec_fn=child_setup(pin))
            os.set_blocking(p.stdout.fileno(), False)  # type: ignore[union-attr]
            self.sel.register(p.stdout, selectors.EVENT_READ, i)  # type: ignore[arg-type]
            self.bufs[i] = b""
            self.procs.append(p)

    def command(self, line: str) -> None:
        """Send ``line`` to every worker (one that already exited is skipped)."""
        for p in self.procs:
            try:
                p.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass

    def events(self, timeout: float, stage: str) -> list[tuple[int, dict[str, Any]]]:
        """The objects the workers wrote within ``timeout`` seconds, as (worker, object);
        StageError if one exited."""
        out: list[tuple[int, dict[str, Any]]] = []
        for key, _ in self.sel.select(max(0.0, timeout)):
            i = key.data
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self.sel.unregister(key.fileobj)
                if i in self.finished:
                    continue
                raise StageError(stage, f"client worker {i} exited: "
                                        f"{tail(self.logs[i]) or '(no output)'}")
            self.bufs[i] += chunk
            while b"\n" in self.bufs[i]:
                line, self.bufs[i] = self.bufs[i].split(b"\n", 1)
                obj = json.loads(line)
                if obj.get("event") == self.last_event:
                    self.finished.add(i)
                out.append((i, obj))
        return out

    def wait(self, event: str, stage: str, deadline: float) -> list[dict[str, Any]]:
        """One ``event`` object from every worker, in worker order."""
        got: dict[int, dict[str, Any]] = {}
        while len(got) < len(self.procs):
            left = deadline - time.monotonic()
            if left <= 0:
                raise StageError(stage, f"client workers did not report {event!r} in time "
                                        f"({len(got)}/{len(self.procs)} did)")
            for i, obj in self.events(min(left, 1.0), stage):
                if obj.get("event") == event:
                    got[i] = obj
        return [got[i] for i in range(len(self.procs))]

    def close(self, command: str = "close", event: str = "closed", timeout: float = 20.0) -> None:
        """``command`` to every worker, wait (bounded) for its ``event``, reap them all."""
        self.command(command)
        try:
            self.wait(event, "close", time.monotonic() + timeout)
        except StageError:
            pass
        self.reap()

    def reap(self) -> None:
        """Wait (5 s each) for every worker to exit, killing those that do not."""
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    try:
                        f.close()
                    except BrokenPipeError:  # a worker that died before reading it all
                        pass
        self.sel.close()


# -- the runs ---------------------------------------------------------------------------------

def new_row(kind: str, name: str, label: str, loop: str, scenario: str, **extra: Any) -> Row:
    """A run's row before it is measured (``valid`` False); ``kind`` is ``server`` or
    ``client``, what the rows compare."""
    return {kind: name, "label": label, "loop": loop, "scenario": scenario, "valid": False,
            **extra}


def print_plan(n: int, warmup: float, duration: float, seconds: float) -> None:
    print(f"{n} runs of {warmup:g} s warm-up + {duration:g} s: about {seconds:.0f} s",
          flush=True)


def round_robin(repeat: int, scenarios: Sequence[Any], units: Sequence[Any],
                key: Callable[[Any, Any], tuple], measure: Callable[[Any, Any], Row],
                progress: Callable[[Row], str], wait_quiet_s: float = 0.0
                ) -> dict[tuple, list[Row]]:
    """Every repeat of every (scenario, unit), the repeats going round the units:
    repeat 1 of each scenario on every unit, then repeat 2, ... A slow spell of a
    shared machine then lands on every unit instead of on all the repeats of one.
    Returns the rows of each ``key(unit, scenario)``, in the order of units, then
    scenarios."""
    reps: dict[tuple, list[Row]] = {key(u, sc): [] for u in units for sc in scenarios}
    for _ in range(repeat):
        for sc in scenarios:
            for u in units:
                if wait_quiet_s:
                    wait_quiet(wait_quiet_s)
                row = measure(u, sc)
                reps[key(u, sc)].append(row)
                print("  " + progress(row), flush=True)
    return reps


def run_servers(servers: list[ServerProcess], loop: str, scenarios: Sequence[Any],
                args: argparse.Namespace, measure: Callable[[ServerProcess, Any], Row],
                combine: Callable[[list[Row]], Row], progress: Callable[[Row], str],
                problems: list[str]) -> list[Row]:
    """The repeats of every scenario round ``servers`` (started, all of one loop), then
    stop them; one combined row per (server, scenario), and a problem for any server
    that printed more than its ``listening`` line."""
    def one(server: ServerProcess, sc: Any) -> Row:
        if not server.alive():
            return new_row("server", server.spec.name, server.spec.label, loop, sc.key,
                           failure="server died")
        return measure(server, sc)

    try:
        reps = round_robin(args.repeat, scenarios, servers,
                           lambda s, sc: (s.spec.name, sc.key), one, progress,
                           args.wait_quiet)
    finally:
        for server in servers:
            server.stop()
    rows: list[Row] = []
    for server in servers:
        rows += [combine(reps[(server.spec.name, sc.key)]) for sc in scenarios]
        extra = server.unexpected_output()
        if extra:
            problems.append(f"{server.spec.label} on {loop} printed: "
                            + " | ".join(extra[:6])[:800])
    return rows


def combine(reps: list[Row], metric: str, fields: Sequence[str],
            rate: str | None = None) -> Row:
    """One row for the repeats of a configuration: the repeat with the median
    ``metric`` (the lower of the middle two for an even count), its ``fields`` for
    every repeat under ``repeats``, the range of ``metric`` (and of ``rate``) beside
    it. Invalid if any repeat was."""
    if len(reps) == 1:
        return reps[0]
    bad = [r for r in reps if not r.get("valid")]
    if bad:
        return bad[0]
    by_metric = sorted(reps, key=lambda r: r[metric])
    row = dict(by_metric[(len(by_metric) - 1) // 2])
    row["repeats"] = [{k: r[k] for k in fields} for r in reps]
    row[f"{metric}_range"] = [by_metric[0][metric], by_metric[-1][metric]]
    if rate is not None:
        rates = sorted(r[rate] for r in reps)
        row[f"{rate}_range"] = [rates[0], rates[-1]]
    return row


def combine_server_cpu(reps: list[Row]) -> Row:
    """``combine`` by server CPU per request (``load.py``, ``http_load.py``)."""
    return combine(reps, "server_cpu_us_per_req",
                   ("requests_per_s", "server_cpu_us_per_req", "p50_us", "p99_us",
                    "other_cores"))


def flag_problems(rows: Iterable[Row], problems: list[str], where: Callable[[Row], str],
                  errors: Callable[[Row], str]) -> None:
    """A problem for every invalid row (its failure, or ``errors(row)``) and every
    noisy one; rows already ``reported`` are skipped."""
    for r in rows:
        if r.get("reported"):
            continue
        if not r.get("valid"):
            why = r.get("failure") or errors(r)
            problems.append(f"invalid run: {r['label']} / {r['loop']} / {where(r)}: {why}")
        elif r["other_cores"] > NOISY_CORES:
            problems.append(f"noisy run: {r['label']} / {r['loop']} / {where(r)}: "
                            f"other processes used {r['other_cores']:.2f} of a core")


def run_header(script: str, argv: list[str], started: float) -> dict[str, Any]:
    """The first fields of a result file."""
    return {
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": f"python benchmarks/{script} " + shlex.join(argv),
        "wall_s": round(time.monotonic() - started, 1),
    }


# -- report ---------------------------------------------------------------------------------

def header_lines(data: dict[str, Any], title: str, script: str) -> list[str]:
    """Title, when and how the run was made."""
    return [
        f"# {title}",
        "",
        f"Generated by `benchmarks/{script}` at {data['generated']} ({data['wall_s']} s). "
        "Command, from the repository root:",
        "",
        "```",
        data["command"],
        "```",
        "",
    ]


def environment_text(env: dict[str, Any], fastrpc: str = "fastrpc") -> str:
    """The report's ``Environment: ...`` sentence, through the commit."""
    return (f"Environment: {env['cpu']} ({env['cpus']} CPUs), Linux {env['kernel']}, CPython "
            f"{env['python']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
            + f"; {fastrpc} at `{env['commit'][:12]}`"
            + (" (with uncommitted changes)" if env["dirty"] else "") + ". ")


def note_lines(data: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for n in data["notes"]:
        out += [f"> **Note.** {n}", ""]
    return out


def footer_lines(data: dict[str, Any], method: str) -> list[str]:
    """The problems of the run, then where the method is described."""
    out: list[str] = []
    if data["problems"]:
        out += ["## Problems in this run", ""] + [f"* {p}" for p in data["problems"]] + [""]
    return out + ["## Method and caveats", "", method, ""]


def find(data: dict[str, Any], kind: str, name: str, loop: str, scenario: str) -> Row | None:
    """The valid row of ``name`` (a ``kind``: server or client) on ``loop`` and
    ``scenario``."""
    return next((r for r in data["runs"] if r[kind] == name and r["loop"] == loop
                 and r["scenario"] == scenario and r.get("valid")), None)


def scenario_rows(data: dict[str, Any], scenario: str, kind: str,
                  order: Sequence[str]) -> list[Row]:
    """The rows of a scenario, by loop, then in ``order``."""
    rows = [r for r in data["runs"] if r["scenario"] == scenario]
    rows.sort(key=lambda r: (LOOPS.index(r["loop"]) if r["loop"] in LOOPS else 9,
                             order.index(r[kind]) if r[kind] in order else 99))
    return rows


def failure_line(name: str, r: Row, why: str) -> str:
    """A table line for a run that failed or was invalid: ``why`` across the row."""
    why = " ".join(why.split()).replace("|", "\\|")[:300]
    return f"| {name} | {r['loop']} | {why} ||||||||||"


def ratios(b: Row | None, r: Row, cpu: str, rate: str,
           fmt: Callable[[float], str]) -> tuple[str, str]:
    """Against the baseline row ``b``: (this row's ``cpu`` ÷ the baseline's, the
    baseline's ``rate`` ÷ this row's), both "—" for the baseline itself or none."""
    if b is None or b is r:
        return "—", "—"
    return fmt(r[cpu] / b[cpu]), fmt(b[rate] / r[rate])


def range_text(lo_hi: list[float] | None) -> str:
    return f" ({lo_hi[0]:.2f}–{lo_hi[1]:.2f})" if lo_hi else ""


def noisy(cores: float) -> str:
    return f"**{cores:.2f}** (noisy)" if cores > NOISY_CORES else f"{cores:.2f}"


def spread(devs: list[float]) -> tuple[float, float]:
    """The largest and the median (upper middle) of ``devs``."""
    return max(devs), sorted(devs)[len(devs) // 2]


# -- the command line -------------------------------------------------------------------------

def add_wait_quiet(ap: argparse.ArgumentParser, help_: str) -> None:
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS", help=help_)


def add_outputs(ap: argparse.ArgumentParser, stem: str) -> None:
    ap.add_argument("--json", type=Path, default=RESULTS / f"{stem}.json")
    ap.add_argument("--markdown", type=Path, default=RESULTS / f"{stem}.md")
    ap.add_argument("--from-json", type=Path, help="only render an existing JSON file")


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace,
               lists: Sequence[tuple[str, Sequence[str]]], duration: str = "(0, 120]") -> None:
    """Comma-separated options: only known values, none twice; the run's durations and
    repeat count in range."""
    for opt, allowed in lists:
        vals = getattr(args, opt).split(",")
        bad = [v for v in vals if v not in allowed]
        if bad:
            ap.error(f"--{opt}: unknown {bad}; choose from {allowed}")
        if len(set(vals)) != len(vals):
            ap.error(f"--{opt}: a value is repeated")
    if not 0 < args.duration <= 120 or not 0 <= args.warmup <= 30 or not 1 <= args.repeat <= 20:
        ap.error(f"--duration must be in {duration}, --warmup in [0, 30], --repeat in [1, 20]")
    if getattr(args, "fastrpc_path", None) is not None:
        args.fastrpc_path = args.fastrpc_path.resolve()


def results(args: argparse.Namespace, argv: list[str],
            run: Callable[[argparse.Namespace, list[str]], dict[str, Any]]) -> dict[str, Any]:
    """``--from-json``'s data, or a new run's, written to ``--json``."""
    if args.from_json:
        return json.loads(args.from_json.read_text())
    data = run(args, argv)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {os.path.relpath(args.json)}")
    return data


def write_report(args: argparse.Namespace, data: dict[str, Any],
                 render: Callable[[dict[str, Any]], str]) -> None:
    """The Markdown to ``--markdown``; the run's problems on stdout."""
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(render(data) + "\n")
    print(f"wrote {os.path.relpath(args.markdown)}")
    for p in data["problems"]:
        print("problem:", p)
