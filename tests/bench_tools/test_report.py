"""``python -m benchmarks.report`` renders ``docs/report.md`` and its charts from the
parts' JSON. These tests render the committed fixture (``report_fixture/``: the files
a ``--quick`` run wrote, every part's real format) and check that the report has every
section, names the machine, the versions and the command, takes its ratios from the
data, and that each chart is a valid PNG of real size. No speed is asserted."""
from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).resolve().parent / "report_fixture"
sys.path.insert(0, str(ROOT))
from benchmarks import _render  # noqa: E402

SECTIONS = {  # part -> (heading, chart)
    "micro": ("Micro-benchmarks: frame codec and dispatch", "micro.png"),
    "load": ("Server load: JSON-RPC over WebSocket", "load.png"),
    "memory": ("Memory per idle connection", "memory.png"),
    "client": ("Client libraries: CPU per call", "client.png"),
    "fanout": ("Fan-out: one publish to N subscribers", "fanout.png"),
}


def render(src: Path, docs: Path, *extra: str) -> str:
    p = subprocess.run([sys.executable, "-m", "benchmarks.report", "--from-json", str(src),
                        "--docs", str(docs), *extra], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return (docs / "report.md").read_text()


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG whose every chunk's CRC is right."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    pos, kinds = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, (path, kind)
        kinds.append(kind)
        pos += 12 + length
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds, kinds
    return struct.unpack(">II", data[16:24])


def test_every_section_and_chart(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    text = render(FIXTURE, docs)
    manifest = json.loads((FIXTURE / "report.json").read_text())
    m = manifest["machine"]
    assert manifest["command"] in text
    assert f"**Machine**: {m['cpu']}, {m['cpus']} cores, Linux {m['kernel']}, CPython " \
           f"{m['python']}." in text
    for dist, version in manifest["versions"].items():
        assert f"{dist} {version}" in text
    assert "A `--quick` smoke test" in text  # the fixture is one, and must say so
    assert "## Ratios" in text
    headings = [ln[3:] for ln in text.splitlines() if ln.startswith("## ")]
    assert headings == ["Ratios"] + [h for h, _ in SECTIONS.values()]
    for part, (heading, png) in SECTIONS.items():
        assert f"![{heading}]({png})" in text
        assert f"| [{heading}](#{_render.anchor(heading)}) |" in text  # the summary row
        width, height = png_size(docs / png)
        assert width >= 500 and height >= 300, (png, width, height)
        assert (docs / png).stat().st_size > 10_000, png
        assert manifest["parts"][part]["command"] in text  # each part's own command
    assert "--benchmark-compare" in text  # how to compare against the saved micro run


def row_of(text: str, heading: str, name: str, loop: str) -> list[str]:
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    for ln in section.splitlines():
        cells = [c.strip() for c in ln.strip("|").split("|")]
        if len(cells) > 2 and cells[0].strip("*") == name and cells[1] == loop:
            return cells
    raise AssertionError(f"no row {name} / {loop} under {heading}")


def test_ratios_are_the_medians_of_the_data(tmp_path: Path) -> None:
    text = render(FIXTURE, tmp_path / "docs")
    fan = json.loads((FIXTURE / "fanout.json").read_text())
    runs = {(r["server"], r["loop"], r["scenario"]): r for r in fan["runs"] if r["valid"]}
    keys = list(fan["scenarios"])
    checked = 0
    for (server, loop, sc), r in runs.items():
        if server == "fastrpc":
            continue
        base = runs[("fastrpc", loop, sc)]["server_cpu_us_per_notification"]
        mine = r["server_cpu_us_per_notification"]
        cells = row_of(text, SECTIONS["fanout"][0], r["label"], loop)
        # a tiny window can hold no clock tick: then there is no ratio to show
        want = mine / base if mine and base else None
        assert cells[2 + keys.index(sc)] == _render.x(want)
        checked += want is not None
    load = json.loads((FIXTURE / "load.json").read_text())
    runs = {(r["server"], r["loop"], r["scenario"]): r for r in load["runs"] if r["valid"]}
    keys = list(load["scenarios"])
    for (server, loop, sc), r in runs.items():
        if server == "fastrpc":
            continue
        cells = row_of(text, SECTIONS["load"][0], r["label"], loop)
        want = r["server_cpu_us_per_req"] / runs[("fastrpc", loop, sc)]["server_cpu_us_per_req"]
        assert cells[2 + keys.index(sc)] == _render.x(want)
        checked += 1
    assert checked >= 6


def test_a_missing_part_is_named_not_drawn(tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(FIXTURE, src)
    (src / "fanout.json").unlink()
    (src / "report.json").unlink()  # and no manifest: the sections' own records only
    docs = tmp_path / "docs"
    text = render(src, docs)
    assert "**fanout**: not in this report (no `fanout.json` in" in text
    assert "## Fan-out" not in text and not (docs / "fanout.png").exists()
    assert "each part's own run, made separately" in text
    for part in ("micro", "load", "memory", "client"):
        assert (docs / SECTIONS[part][1]).exists()


def test_only_renders_the_parts_asked_for(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    text = render(FIXTURE, docs, "--only", "memory,fanout")
    headings = [ln[3:] for ln in text.splitlines() if ln.startswith("## ")]
    assert headings == ["Ratios", SECTIONS["memory"][0], SECTIONS["fanout"][0]]
    assert sorted(p.name for p in docs.glob("*.png")) == ["fanout.png", "memory.png"]


@pytest.mark.parametrize("argv, message", [
    (["--only", "memory,nope"], "--only: distinct parts"),
    (["--only", "memory,memory"], "--only: distinct parts"),
    (["--from-json", "/nonexistent/dir"], "is not a directory"),
])
def test_bad_options_are_refused(argv: list[str], message: str) -> None:
    p = subprocess.run([sys.executable, "-m", "benchmarks.report", *argv], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and message in p.stderr, p.stderr
