"""The published comparison (issue 11 §4): every benchmark in one go, then
``docs/report.md`` and its charts.

    python -m benchmarks.report                        # the full run: about 19 minutes
    python -m benchmarks.report --quick                # smoke test: tiny sizes, 2-3.5 minutes
    python -m benchmarks.report --only memory,fanout   # some parts only
    python -m benchmarks.report --from-json benchmarks/results/report   # re-render only

(``python benchmarks/report.py ...`` is the same.) The parts, each its own script run as
a subprocess that writes its ``--json`` (and its own ``--markdown``) into ``--out``:

* ``micro``: ``bench_frames.py`` + ``bench_dispatch.py`` under pytest-benchmark, with
  ``--benchmark-json`` (rendered here, its per-round timings dropped) and ``--benchmark-save`` into
  ``--out``/pytest-benchmark, for ``--benchmark-compare`` against this run later;
* ``load``: ``load.py`` (server CPU per request; fastrpc, websockets, aiohttp, picows);
* ``memory``: ``memory.py`` (RSS per idle connection, N = 19,000);
* ``client``: ``client_load.py`` (client CPU per call; fastrpc.Client, websockets, web3.py);
* ``fanout``: ``fanout.py`` (server CPU per delivered notification, 1,000 and 10,000
  subscribers; fastrpc, websockets' ``broadcast()``, picows).

All on asyncio and uvloop. Then ``--docs``/report.md: the machine, the versions, this
command, a summary of the ratios, and per part a chart (``--docs``/<part>.png) and a
table with the ratios first, then the medians and their repeats. ``report.json`` in
``--out`` records what ran, how long each part took and its exit status. A part that
fails is reported as such; the others still render. The exit status is 1 if any part
failed or had an invalid run.

``--quick`` writes to ``build/report-quick/`` (and its ``docs/``) unless ``--out`` /
``--docs`` say otherwise, so a smoke test never overwrites the published report.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

if not __package__:  # run as a script: import the package this file belongs to
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks import _charts, _harness as h, _render  # noqa: E402

ROOT = h.ROOT
DEFAULT_OUT = Path("benchmarks/results/report")
DEFAULT_DOCS = Path("docs")
QUICK_OUT = Path("build/report-quick")
MANIFEST = "report.json"
#: the versions the report names (the machine's, at render time for a new run)
DISTS = ("fastrpc", "websockets", "aiohttp", "picows", "uvloop", "web3", "orjson",
         "aiofastnet", "pytest-benchmark", "matplotlib")
WAIT_QUIET_S = "10"  # per measured run of the full report: a shared machine settles


@dataclass(frozen=True)
class Part:
    name: str
    stem: str                                  # its JSON is <stem>.json in --out
    full: Callable[[Path], list[str]]          # the command, after "python"
    quick: Callable[[Path], list[str]]
    estimate_s: int  # the full run's seconds on a quiet 2-core machine (see the README)


def _micro(out: Path, max_time: str, min_rounds: str, save: bool = True) -> list[str]:
    saving = [f"--benchmark-storage=file://{out / 'pytest-benchmark'}",
              "--benchmark-save=report"] if save else []
    return ["-m", "pytest", "benchmarks/bench_frames.py", "benchmarks/bench_dispatch.py",
            "-q", "-p", "no:cacheprovider", f"--benchmark-json={out / 'micro.json'}",
            *saving, f"--benchmark-max-time={max_time}", f"--benchmark-min-rounds={min_rounds}"]


def drop_rounds(path: Path) -> None:
    """Drop every round's timing from a ``--benchmark-json`` file (megabytes of them; the
    report reads the statistics, and the saved run keeps no rounds either)."""
    data = load_json(path)
    if data is None:
        return
    for b in data.get("benchmarks", []):
        b.get("stats", {}).pop("data", None)
    path.write_text(json.dumps(data, indent=1) + "\n")


def _script(name: str, stem: str, *opts: str) -> Callable[[Path], list[str]]:
    def cmd(out: Path) -> list[str]:
        return [f"benchmarks/{name}", *opts, "--json", str(out / f"{stem}.json"),
                "--markdown", str(out / f"{stem}.md")]
    return cmd


LOOPS = ("--loops", "asyncio,uvloop")
PARTS: dict[str, Part] = {p.name: p for p in (
    Part("micro", "micro", lambda o: _micro(o, "0.8", "20"), lambda o: _micro(o, "0.01", "3"),
         90),
    Part("load", "load",
         _script("load.py", "load", "--servers", "fastrpc,websockets,aiohttp,picows", *LOOPS,
                 "--scenarios", "b,c", "--duration", "3", "--repeat", "3",
                 "--wait-quiet", WAIT_QUIET_S),
         _script("load.py", "load", "--servers", "fastrpc,websockets,aiohttp,picows", *LOOPS,
                 "--scenarios", "b,c", "--duration", "0.3", "--warmup", "0.2"), 250),
    Part("memory", "memory",
         _script("memory.py", "memory", "--servers",
                 "fastrpc,websockets,websockets-nocomp,aiohttp,picows", *LOOPS, "--n", "19000"),
         _script("memory.py", "memory", "--servers", "fastrpc,websockets,aiohttp,picows",
                 *LOOPS, "--n", "200", "--no-reserve-probe", "--settle-window", "0.5",
                 "--settle-max", "2"), 250),
    Part("client", "client_load",
         _script("client_load.py", "client_load", "--clients", "fastrpc,websockets,web3",
                 *LOOPS, "--duration", "3", "--repeat", "3", "--wait-quiet", WAIT_QUIET_S),
         _script("client_load.py", "client_load", "--clients", "fastrpc,websockets,web3",
                 *LOOPS, "--duration", "0.3", "--warmup", "0.2"), 220),
    Part("fanout", "fanout",
         _script("fanout.py", "fanout", "--n", "1000,10000", *LOOPS, "--repeat", "3",
                 "--wait-quiet", WAIT_QUIET_S),
         _script("fanout.py", "fanout", "--n", "200", *LOOPS, "--publishes", "30",
                 "--repeat", "1", "--warmup", "1"), 330),
)}


def shown(path: Path) -> Path:
    """``path`` relative to the repository root when it is inside it."""
    try:
        return path.resolve().relative_to(ROOT)
    except ValueError:
        return path


# -- running --------------------------------------------------------------------------------

def run_parts(names: list[str], out: Path, quick: bool) -> dict[str, Any]:
    """Run every part in turn; what ran, its exit status and wall time."""
    out.mkdir(parents=True, exist_ok=True)
    plan = sum(PARTS[n].estimate_s for n in names)
    print(f"parts: {', '.join(names)}" + ("" if quick else f"; about {plan / 60:.0f} min"),
          flush=True)
    done: dict[str, Any] = {}
    for name in names:
        part = PARTS[name]
        args = (part.quick if quick else part.full)(shown(out))
        cmd = ["python", *args]
        print(f"\n=== {name}: {shlex.join(cmd)}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.run([sys.executable, *args], cwd=ROOT, env=h.child_env()).returncode
        done[name] = {"command": shlex.join(cmd), "exit": rc,
                      "wall_s": round(time.monotonic() - t0, 1), "json": f"{part.stem}.json"}
        if name == "micro":
            drop_rounds(out / "micro.json")
            saved = sorted((out / "pytest-benchmark").glob("*/*_report.json"))
            done[name]["saved"] = str(shown(saved[-1])) if saved else None
        print(f"=== {name}: exit {rc} after {done[name]['wall_s']:.0f} s", flush=True)
    return done


def versions() -> dict[str, str]:
    out = {}
    for d in DISTS:
        try:
            out[d] = metadata.version(d)
        except metadata.PackageNotFoundError:
            out[d] = "not installed"
    return out


# -- rendering -------------------------------------------------------------------------------

def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def sections(src: Path, names: list[str], manifest: dict[str, Any]
             ) -> tuple[list[_render.Section], list[str]]:
    """The sections of the parts whose JSON is in ``src``; notes for those missing."""
    made, missing = [], []
    ran = manifest.get("parts", {})
    for name in names:
        part = PARTS[name]
        data = load_json(src / f"{part.stem}.json")
        info = ran.get(name, {})
        if data is None:
            why = (f"exited with status {info['exit']}" if "exit" in info
                   else f"no `{part.stem}.json` in `{shown(src)}`")
            missing.append(f"**{name}**: not in this report ({why}).")
            continue
        if name == "micro":
            storage = str(shown(src / "pytest-benchmark"))
            command = info.get("command")
            if command is None and data.get("benchmarks"):
                # no manifest: the part's command with the options this run recorded
                opts = data["benchmarks"][0].get("options", {})
                command = shlex.join(["python", *_micro(
                    shown(src), str(opts.get("max_time")), str(opts.get("min_rounds")),
                    save=(src / "pytest-benchmark").exists())])
            made.append(_render.micro(data, command, info.get("saved"),
                                      storage if (src / "pytest-benchmark").exists() else None))
        else:
            made.append(getattr(_render, name)(data))
        if info.get("exit"):
            missing.append(f"**{name}** exited with status {info['exit']}: some of its runs "
                           f"failed or were invalid (its section lists them).")
    return made, missing


def header(manifest: dict[str, Any], src: Path, rendered: str,
           made: list[_render.Section]) -> list[str]:
    m = manifest.get("machine") or {}
    v = manifest.get("versions") or {}
    parts = manifest.get("parts") or {}
    out = ["# fastrpc against its peers: the published comparison", ""]
    if manifest.get("command"):
        total = sum(p["wall_s"] for p in parts.values())
        out += [f"One run of the command below at {manifest.get('generated', '?')}, "
                f"{total / 60:.1f} minutes in all ("
                + ", ".join(f"{k} {p['wall_s']:.0f} s" for k, p in parts.items()) + "):",
                "", "```sh", manifest["command"], "```", ""]
        if manifest.get("quick"):
            out += ["> **A `--quick` smoke test**: tiny durations and sizes, one repeat. "
                    "Its figures show that every part runs, not what it measures.", ""]
    else:
        out += [f"Rendered with `{rendered}` from the results in `{shown(src)}`: each "
                "part's own run, made separately (each section names its command, commit and "
                "machine). `python -m benchmarks.report` runs them all in one go.", ""]
    if m:
        commit = str(m.get("commit", "?"))[:12] + (" (with uncommitted changes)"
                                                   if m.get("dirty") else "")
        out += [f"**Machine**: {m.get('cpu', '?')}, {m.get('cpus', '?')} cores, Linux "
                f"{m.get('kernel', '?')}, CPython {m.get('python', '?')}.", "",
                "**Versions**: " + ", ".join(f"{k} {val}" for k, val in v.items())
                + f"; fastrpc at `{commit}`.", ""]
    elif made:
        out += [*_render.machines(made), ""]
    out += ["Every benchmark runs fastrpc and its peers in the same run, on the same input, "
            "on asyncio and uvloop; ratios are peer ÷ fastrpc on the same loop and scenario "
            "(above 1×: fastrpc costs less). Medians of the repeats, ranges in parentheses. "
            "Tests never assert on speed: these figures come only from `benchmarks/`."]
    return out


def render(src: Path, docs: Path, names: list[str], rendered: str) -> Path:
    manifest = load_json(src / MANIFEST) or {}
    made, missing = sections(src, names, manifest)
    docs.mkdir(parents=True, exist_ok=True)
    for s in made:
        _charts.draw(docs / s.png, s.charts)
    text = _render.document(made, header(manifest, src, rendered, made), missing)
    path = docs / "report.md"
    path.write_text(text + "\n")
    print(f"wrote {shown(path)} and {len(made)} charts", flush=True)
    return path


# -- the command line -------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="tiny durations and sizes, one repeat: a smoke test (2-3.5 min)")
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated parts, from: {', '.join(PARTS)}")
    ap.add_argument("--from-json", type=Path, metavar="DIR",
                    help="render the JSON already in DIR (a report's --out, or "
                         "benchmarks/results); run nothing")
    ap.add_argument("--out", type=Path, help=f"the parts' JSON and Markdown (default "
                    f"{DEFAULT_OUT}; --quick: {QUICK_OUT})")
    ap.add_argument("--docs", type=Path, help=f"report.md and the charts (default "
                    f"{DEFAULT_DOCS}; --quick: {QUICK_OUT / 'docs'})")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    bad = [n for n in names if n not in PARTS]
    if bad or not names or len(set(names)) != len(names):
        ap.error(f"--only: distinct parts from {', '.join(PARTS)}")
    names = [n for n in PARTS if n in names]  # always in the report's order
    base = QUICK_OUT if args.quick else DEFAULT_OUT
    out = args.out or base
    docs = args.docs or (QUICK_OUT / "docs" if args.quick else DEFAULT_DOCS)
    out, docs = (p if p.is_absolute() else ROOT / p for p in (out, docs))
    command = shlex.join(["python", "-m", "benchmarks.report", *argv])
    if args.from_json:
        src = args.from_json if args.from_json.is_absolute() else Path.cwd() / args.from_json
        if not src.is_dir():
            ap.error(f"--from-json: {args.from_json} is not a directory")
        render(src, docs, names, command)
        return 0
    started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    env = h.environment()
    parts = run_parts(names, out, args.quick)
    manifest = {
        "generated": started, "command": command, "quick": args.quick,
        "machine": {k: env[k] for k in ("cpu", "cpus", "kernel", "python", "commit", "dirty")},
        "versions": versions(), "parts": parts,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    render(out, docs, names, command)
    failed = [n for n, p in parts.items() if p["exit"]]
    for n in failed:
        print(f"part {n} exited with status {parts[n]['exit']}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
