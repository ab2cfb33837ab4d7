"""The published report's Markdown (``docs/report.md``) and the data of its charts,
from the JSON each benchmark script writes (``report.py`` runs them; ``_charts.py`` draws).

Every section has the same shape: its chart, then one table whose first columns are
the ratios (peer ÷ fastrpc, oriented so that above 1× fastrpc is better), then the
medians and the repeats behind them, then the command that produced it and the
commit and machine it ran on (read from that part's own JSON, so a report rendered
from results of different runs says so).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

Data = dict[str, Any]
LOOPS = ("asyncio", "uvloop")
BASELINE = "fastrpc"
#: the peers of the summary table, in its column order
SUMMARY_PEERS = ("websockets", "aiohttp", "picows", "web3")


@dataclass
class Chart:
    """One panel: grouped bars, one group per category, one bar per series."""

    title: str
    ylabel: str
    categories: list[str]
    series: dict[str, list[float | None]]
    log: bool | None = None     # None: a log axis when the values span more than 20×
    reference: float | None = 1.0  # a line at 1× (ratios); None for absolute values
    #: the part of each bar to hatch (e.g. the kernel's share), by series
    hatched: dict[str, list[float | None]] = field(default_factory=dict)
    hatch_label: str = ""
    horizontal: bool = False


@dataclass
class Section:
    key: str                 # the part: micro, load, memory, client, fanout
    title: str
    png: str                 # file name in the docs directory
    charts: list[Chart]
    lines: list[str]         # Markdown after the chart
    summary: dict[str, list[float]]  # peer -> every ratio of this part (the summary row)
    what: str                # what the summary's ratios compare
    #: where it ran, from its own JSON: cpu, cpus, kernel, python, commit, versions
    env: Data = field(default_factory=dict)


# -- shared cells -------------------------------------------------------------------------

def x(v: float | None) -> str:
    """A ratio cell."""
    if v is None:
        return "—"
    return f"{v:,.0f}×" if v >= 99.5 else (f"{v:.1f}×" if v >= 9.95 else f"{v:.2f}×")


def num(v: float | None, digits: int = 2) -> str:
    if v is None:
        return "—"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:,.{digits}f}"


def with_range(v: float | None, rng: Sequence[float] | None, digits: int = 2) -> str:
    if v is None:
        return "—"
    if not rng:
        return num(v, digits)
    return f"{num(v, digits)} ({num(rng[0], digits)}–{num(rng[1], digits)})"


def span(vals: Sequence[float]) -> str:
    """The summary cell: the smallest and largest ratio."""
    if not vals:
        return "—"
    lo, hi = min(vals), max(vals)
    return x(lo) if x(lo) == x(hi) else f"{x(lo)}–{x(hi)}"


def env_line(env: Data | None, command: str | None, generated: str | None) -> list[str]:
    """Where a part ran: its command, commit and machine, from its own JSON."""
    out: list[str] = []
    if command:
        out += ["", "```sh", command, "```"]
    if env:
        commit = str(env.get("commit", "?"))[:12]
        dirty = " (with uncommitted changes)" if env.get("dirty") else ""
        out += ["", f"Ran at {generated or '?'} on {env.get('cpu', '?')} ({env.get('cpus', '?')} "
                    f"CPUs), Linux {env.get('kernel', '?')}, CPython {env.get('python', '?')}; "
                    f"fastrpc at `{commit}`{dirty}."]
    return out


def ratio(r: Data | None, base: Data | None, metric: str) -> float | None:
    """``r``'s ``metric`` ÷ the baseline's; None where either is missing or zero (a
    window shorter than a clock tick reads 0 s of CPU: no ratio to show)."""
    if not r or not base or not r.get(metric) or not base.get(metric):
        return None
    return r[metric] / base[metric]


def repeats_text(n: int, how: str) -> str:
    return f"{n} repeats {how}: the median and (range)." if n > 1 else "one repeat."


def harness_rows(data: Data, kind: str) -> dict[tuple[str, str, str], Data]:
    """The valid rows of a harness result (``load.py``, ``client_load.py``,
    ``fanout.py``) by (name, loop, scenario)."""
    return {(r[kind], r["loop"], r["scenario"]): r for r in data["runs"] if r.get("valid")}


def names_in(data: Data, kind: str, order: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(r[kind] for r in data["runs"]))
    return sorted(seen, key=lambda n: (n != BASELINE, order.index(n) if n in order else 99))


def loops_in(data: Data) -> list[str]:
    return [lp for lp in LOOPS if any(r["loop"] == lp for r in data["runs"])]


def repeats_of(r: Data) -> int:
    return len(r.get("repeats") or [r])


def failed_rows(data: Data, kind: str) -> list[str]:
    out = []
    for r in data["runs"]:
        if not r.get("valid"):
            why = " ".join(str(r.get("failure") or "invalid").split())[:200]
            out.append(f"* {r['label']} / {r['loop']} / {r['scenario']}: {why}")
    return (["", "Not measured (failed or invalid, see the part's own report):", *out]
            if out else [])


def summary_key(name: str) -> str | None:
    """The summary column a peer's ratios go to (variants like ``websockets-nocomp``
    stay in their part's table)."""
    return name if name in SUMMARY_PEERS else None


# -- micro-benchmarks (pytest-benchmark) ---------------------------------------------------

MICRO_IMPLS = {  # implementation -> column label (the like-for-like entries)
    "websockets": "websockets",
    "aiohttp": "aiohttp",
    "picows": "picows",
    "floor-orjson": "orjson floor",
    "naive-stdlib": "json stdlib dispatcher",
}


def micro(data: Data, command: str | None, saved: str | None, storage: str | None) -> Section:
    groups: dict[str, dict[str, Data]] = {}
    for b in data["benchmarks"]:
        impl = b.get("extra_info", {}).get("impl") or b["name"]
        groups.setdefault(b["group"], {})[impl] = b
    cols = [i for i in MICRO_IMPLS if any(i in g for g in groups.values())]
    ratios: dict[str, list[float | None]] = {MICRO_IMPLS[i]: [] for i in cols}
    summary: dict[str, list[float]] = {}
    lines = ["| group | " + " | ".join(f"{MICRO_IMPLS[i]} ÷ fastrpc" for i in cols)
             + " | fastrpc median | fastrpc rounds |",
             "|---|" + "---:|" * (len(cols) + 2)]
    cats = []
    for g, impls in groups.items():
        base = impls.get(BASELINE)
        if base is None:
            continue
        cats.append(g)
        bm = base["stats"]["median"]
        cells = []
        for i in cols:
            r = impls[i]["stats"]["median"] / bm if i in impls else None
            ratios[MICRO_IMPLS[i]].append(r)
            cells.append(x(r))
            if r is not None and summary_key(i):
                summary.setdefault(i, []).append(r)
        lines.append(f"| `{g}` | " + " | ".join(cells) + f" | {time_text(bm)} | "
                     f"{base['stats']['rounds']:,} |")
    mi, ci = data.get("machine_info", {}), data.get("commit_info", {})
    env = {"cpu": mi.get("cpu", {}).get("brand_raw", "?"), "cpus": mi.get("cpu", {}).get("count"),
           "kernel": mi.get("release"), "python": mi.get("python_version"),
           "commit": ci.get("id", "?"), "dirty": ci.get("dirty")}
    lines += [
        "",
        "Medians of each implementation's rounds, peer ÷ fastrpc: above 1× fastrpc is "
        "faster. The frame groups (`bench_frames.py`) time each library's own parser and "
        "encoder on the same bytes; the `rpc-*` groups (`bench_dispatch.py`) time fastrpc's "
        "dispatcher beside the bare orjson work of any dispatcher (the floor) and a "
        "textbook `json` dispatcher. What each entry runs: `benchmarks/frames_report.py` "
        "and `benchmarks/bench_dispatch.py`."]
    if saved or storage:
        lines += ["", f"Saved for comparison: `{saved or storage}`. A later run compares "
                      "against it with", "", "```sh",
                  "python -m pytest benchmarks/bench_frames.py benchmarks/bench_dispatch.py "
                  f"-p no:cacheprovider --benchmark-storage=file://{storage} "
                  "--benchmark-compare --benchmark-compare-fail=median:10%",
                  f"pytest-benchmark --storage file://{storage} compare --group-by=group",
                  "```"]
    lines += env_line(env, command, data.get("datetime"))
    chart = Chart("Micro-benchmarks: median time, peer ÷ fastrpc", "peer ÷ fastrpc (×)",
                  cats, ratios, horizontal=True)
    env["versions"] = {"pytest-benchmark": data.get("version", "?")}
    return Section("micro", "Micro-benchmarks: frame codec and dispatch", "micro.png", [chart],
                   lines, summary, "time per operation (median)", env)


def time_text(seconds: float) -> str:
    for unit, scale in (("ns", 1e9), ("µs", 1e6), ("ms", 1e3)):
        if seconds * scale < 1000:
            return f"{seconds * scale:,.1f} {unit}"
    return f"{seconds:,.2f} s"


# -- the three harness results (load, client, fan-out) ---------------------------------------

def harness_section(data: Data, *, key: str, kind: str, metric: str, unit: str,
                    title: str, png: str, chart_title: str, what: str,
                    rate: str | None, rate_label: str, order: Sequence[str],
                    extra: Callable[[Data], str] | None = None, extra_label: str = "",
                    notes: Sequence[str] = (), absolute: Chart | None = None) -> Section:
    rows = harness_rows(data, kind)
    scen = data["scenarios"]
    names = names_in(data, kind, order)
    labels = {n: next(r["label"] for r in data["runs"] if r[kind] == n) for n in names}
    loops = loops_in(data)
    head = (["| " + kind + " | loop | "]
            + [f"÷ fastrpc, {sc['short']} | " for sc in scen.values()]
            + [f"{unit}, {sc['short']} | " for sc in scen.values()]
            + ([f"{extra_label}, {sc['short']} | " for sc in scen.values()] if extra else [])
            + ([f"{rate_label}, {sc['short']} | " for sc in scen.values()] if rate else [])
            + ["repeats |"])
    ncols = len(scen) * (2 + bool(extra) + bool(rate)) + 1
    lines = ["".join(head), "|---|---|" + "---:|" * ncols]
    cats = [f"{lp}\n{sc['short']}" for lp in loops for sc in scen.values()]
    series: dict[str, list[float | None]] = {labels[n]: [] for n in names if n != BASELINE}
    summary: dict[str, list[float]] = {}
    for lp in loops:
        for sk in scen:
            base = rows.get((BASELINE, lp, sk))
            for n in names:
                if n == BASELINE:
                    continue
                r = rows.get((n, lp, sk))
                v = ratio(r, base, metric)
                series[labels[n]].append(v)
                if v is not None and summary_key(n):
                    summary.setdefault(n, []).append(v)
    for lp in loops:
        for n in names:
            got = [rows.get((n, lp, sk)) for sk in scen]
            if not any(got):
                continue
            bases = [rows.get((BASELINE, lp, sk)) for sk in scen]
            name = f"**{labels[n]}**" if n == BASELINE else labels[n]
            cells = []
            for r, b in zip(got, bases):
                if n == BASELINE:
                    cells.append("1×" if r else "—")
                else:
                    cells.append(x(ratio(r, b, metric)))
            cells += [with_range(r[metric], r.get(f"{metric}_range")) if r else "—" for r in got]
            if extra:
                cells += [extra(r) if r else "—" for r in got]
            if rate:
                cells += [num(r[rate], 0) if r else "—" for r in got]
            reps = sorted({repeats_of(r) for r in got if r})
            lines.append(f"| {name} | {lp} | " + " | ".join(cells) + " | "
                         + "/".join(map(str, reps)) + " |")
    lines += ["", *notes] if notes else []
    lines += failed_rows(data, kind)
    lines += env_line(data.get("environment"), data.get("command"), data.get("generated"))
    chart = Chart(chart_title, "peer ÷ fastrpc (×)", cats, series)
    return Section(key, title, png, [chart] + ([absolute] if absolute else []), lines,
                   summary, what, dict(data.get("environment") or {}))


def load(data: Data) -> Section:
    st = data["settings"]
    return harness_section(
        data, key="load", kind="server", metric="server_cpu_us_per_req",
        unit="µs server CPU per request", title="Server load: JSON-RPC over WebSocket",
        png="load.png", chart_title="Server CPU per request, peer ÷ fastrpc",
        what="server CPU per request", rate="requests_per_s", rate_label="req/s",
        order=("fastrpc", "fastrpc-echo", "picows", "aiohttp", "websockets"),
        notes=[f"Server CPU time (user + sys of the server process) per request answered "
               f"and checked, loopback, the load generator pinned to the other core; "
               f"{st['duration_s']:g} s measured per run after {st['warmup_s']:g} s of "
               f"warm-up, {repeats_text(st['repeat'], 'going round the servers')} Method: "
               "`benchmarks/README.md`, *Loopback load benchmark*."])


def client(data: Data) -> Section:
    st = data["settings"]
    return harness_section(
        data, key="client", kind="client", metric="client_cpu_us_per_call",
        unit="µs client CPU per call", title="Client libraries: CPU per call",
        png="client.png", chart_title="Client CPU per call, peer ÷ fastrpc.Client",
        what="client CPU per call", rate="calls_per_s", rate_label="calls/s",
        order=("fastrpc", "websockets", "web3", "web3-eth"),
        notes=[f"Client process CPU time per call answered and checked, against one fastrpc "
               f"server on {st['server_loop']} (pinned to the other core); the loop column is "
               f"the client's. {st['duration_s']:g} s measured per run, "
               f"{repeats_text(st['repeat'], 'going round the clients')} Method: "
               "`benchmarks/README.md`, *Client load benchmark*."])


def fanout(data: Data) -> Section:
    st = data["settings"]
    rows = harness_rows(data, "server")
    names = names_in(data, "server", ("fastrpc", "websockets", "picows", "picows-send"))
    labels = {n: next(r["label"] for r in data["runs"] if r["server"] == n) for n in names}
    cats, total, kernel = [], {}, {}
    for lp in loops_in(data):
        for sk, sc in data["scenarios"].items():
            cats.append(f"{lp}\n{sc['short']}")
            for n in names:
                r = rows.get((n, lp, sk))
                total.setdefault(labels[n], []).append(
                    r["server_cpu_us_per_notification"] if r else None)
                kernel.setdefault(labels[n], []).append(
                    r["server_sys_us_per_notification"] if r else None)
    absolute = Chart("Server CPU per delivered notification", "µs of server CPU",
                     cats, total, log=False, reference=None,
                     hatched=kernel, hatch_label="hatched: kernel (sys)")
    per = ", ".join(f"{int(n):,} subscribers × {k} publishes" for n, k in st["publishes"].items())
    return harness_section(
        data, key="fanout", kind="server", metric="server_cpu_us_per_notification",
        unit="µs server CPU per notification", title="Fan-out: one publish to N subscribers",
        png="fanout.png", chart_title="Server CPU per delivered notification, peer ÷ fastrpc",
        what="server CPU per delivered notification", rate=None, rate_label="",
        order=("fastrpc", "websockets", "picows", "picows-send"),
        extra=lambda r: num(r["server_sys_us_per_notification"]), extra_label="of which sys",
        notes=[f"Server CPU time (user + sys) per notification delivered and checked by "
               f"every subscriber (real WebSocket connections in {st['workers']} other "
               f"processes); {per} per repeat, each publish waiting for the last to reach "
               f"everyone, {repeats_text(st['repeat'], 'going round the servers')} Method: "
               "`benchmarks/README.md`, *Fan-out benchmark*."],
        absolute=absolute)


# -- memory ---------------------------------------------------------------------------------

MEMORY_ORDER = ("fastrpc", "websockets", "websockets-nocomp", "aiohttp", "aiohttp-nocomp",
                "picows")


def memory(data: Data) -> Section:
    meta, results = data["meta"], data["results"]
    ok = [r for r in results if r["status"] == "ok"]
    base = {(r["loop"], r["n"]): r for r in ok if r["server"] == BASELINE}
    ns = sorted({r["n"] for r in results})
    loops = [lp for lp in LOOPS if any(r["loop"] == lp for r in results)]
    servers = sorted({r["server"] for r in results},
                     key=lambda s: MEMORY_ORDER.index(s) if s in MEMORY_ORDER else 99)

    def vs_base(r: Data, what: str) -> float | None:
        b = base.get((r["loop"], r["n"]))
        return r[what] / b[what] if b and b[what] and r[what] is not None else None

    lines = ["| server | loop | N | idle ÷ fastrpc | touched ÷ fastrpc | idle B/conn | "
             "touched B/conn | readings |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    summary: dict[str, list[float]] = {}
    for n in ns:
        for lp in loops:
            for s in servers:
                r = next((r for r in results if (r["server"], r["loop"], r["n"]) == (s, lp, n)),
                         None)
                if r is None:
                    continue
                name = f"**{s}**" if s == BASELINE else s
                if r["status"] != "ok":
                    why = " ".join(f"failed at {r['stage']}: {r['reason']}".split())[:200]
                    lines.append(f"| {name} | {lp} | {n:,} | {why.replace('|', '/')} |||||")
                    continue
                ri, rt = vs_base(r, "idle_per_conn"), vs_base(r, "touched_per_conn")
                if s != BASELINE and ri is not None and summary_key(s) and n == ns[-1]:
                    summary.setdefault(s, []).append(ri)
                lines.append(f"| {name} | {lp} | {n:,} | {'1×' if s == BASELINE else x(ri)} | "
                             f"{'1×' if s == BASELINE else x(rt)} | {num(r['idle_per_conn'], 0)} | "
                             f"{num(r['touched_per_conn'], 0)} | 1 |")
    top = ns[-1] if ns else 0
    series: dict[str, list[float | None]] = {}
    size: dict[str, list[float | None]] = {}
    for s in servers:
        for lp in loops:
            r = next((r for r in ok if (r["server"], r["loop"], r["n"]) == (s, lp, top)), None)
            size.setdefault(s, []).append(r["idle_per_conn"] if r else None)
            if s != BASELINE:
                series.setdefault(s, []).append(vs_base(r, "idle_per_conn") if r else None)
    v = meta.get("versions", {})
    env = {"cpu": meta.get("cpu", "?"), "cpus": meta.get("cpus"), "kernel": v.get("kernel"),
           "python": v.get("python"), "commit": str(v.get("fastrpc", "?")).split()[0],
           "dirty": "uncommitted" in str(v.get("fastrpc", ""))}
    lines += ["", "Server RSS per connection: (RSS with N idle connections − the RSS before "
                  "any) ÷ N (*idle*), and after one 200-byte message was echoed on each "
                  "(*touched*); one reading per configuration, each server in its own "
                  "process with the connections opened from others. The ±0.2 MiB by which two "
                  "starts of a process differ is ±11 B per connection at 19,000. Method: "
                  "`benchmarks/README.md`, *Memory per connection*."]
    lines += env_line(env, meta.get("command"), meta.get("date"))
    chart = Chart(f"Idle memory per connection, N = {top:,}: peer ÷ fastrpc",
                  "peer ÷ fastrpc (×)",
                  list(loops), series)
    absolute = Chart(f"Idle memory per connection, N = {top:,}",
                     "bytes of server RSS (log scale)", list(loops), size,
                     log=True, reference=None)
    env["versions"] = {k: val for k, val in v.items()
                       if k not in ("python", "kernel", "fastrpc")}
    return Section("memory", "Memory per idle connection", "memory.png", [chart, absolute],
                   lines, summary, f"RSS per idle connection (N = {top:,})", env)


# -- the whole report --------------------------------------------------------------------------

def machines(sections: Sequence[Section]) -> list[str]:
    """Without a one-go run's record: where each part ran, and the versions they name."""
    where: dict[str, list[str]] = {}
    for s in sections:
        e = s.env
        desc = (f"{e.get('cpu') or '?'}, {e.get('cpus') or '?'} CPUs, Linux "
                f"{e.get('kernel') or '?'}, CPython {e.get('python') or '?'}, fastrpc at "
                f"`{str(e.get('commit') or '?')[:12]}`")
        where.setdefault(desc, []).append(s.key)
    versions: dict[str, list[str]] = {}
    for s in sections:
        for dist, ver in (s.env.get("versions") or {}).items():
            if ver not in versions.setdefault(dist, []):
                versions[dist].append(ver)
    out = ["**Machines** (each part's own record): "
           + "; ".join(f"{', '.join(keys)}: {desc}" for desc, keys in where.items()) + "."]
    if versions:
        out += ["", "**Versions** (as the parts recorded them): "
                + ", ".join(f"{d} {' / '.join(v)}" for d, v in versions.items()) + "."]
    return out


def summary_table(sections: Sequence[Section]) -> list[str]:
    lines = ["| benchmark | ratio of | " + " | ".join(p if p != "web3" else "web3.py"
                                                      for p in SUMMARY_PEERS) + " |",
             "|---|---|" + "---:|" * len(SUMMARY_PEERS)]
    for s in sections:
        lines.append(f"| [{s.title}](#{anchor(s.title)}) | {s.what} | "
                     + " | ".join(span(s.summary.get(p, [])) for p in SUMMARY_PEERS) + " |")
    return lines


def anchor(title: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


def document(sections: Sequence[Section], header: Sequence[str],
             missing: Sequence[str]) -> str:
    out = [*header, "", "## Ratios", "",
           "Each cell: the smallest and largest ratio over the loops and scenarios of that "
           "benchmark, peer ÷ fastrpc, above 1× fastrpc costs less (less time, CPU or "
           "memory). The sections below give every configuration, the medians and the "
           "repeats.", "", *summary_table(sections), ""]
    for m in missing:
        out += [f"> {m}", ""]
    for s in sections:
        out += [f"## {s.title}", "", f"![{s.title}]({s.png})", "", *s.lines, ""]
    return "\n".join(out)
