"""The published report's PNG charts: grouped bars drawn with matplotlib (Agg, no
display), one file per benchmark, one panel per :class:`_render.Chart`.

Ratios get a line at 1× and a log axis when they and 1× span more than 20× (memory:
two to three orders of magnitude); every bar carries its value, so the chart reads
without the table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display, the same output everywhere

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

from ._render import Chart  # noqa: E402

COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")
LOG_SPAN = 20.0  # a ratio axis goes logarithmic past this max/min


def _label(v: float, ratio: bool) -> str:
    if ratio:
        return f"{v:,.0f}×" if v >= 99.5 else (f"{v:.1f}×" if v >= 9.95 else f"{v:.2f}×")
    return f"{v:,.0f}" if v >= 100 else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def _panel(ax: plt.Axes, c: Chart, colours: dict[str, str]) -> None:
    vals = [v for vs in c.series.values() for v in vs if v is not None and v > 0]
    if c.reference is not None:
        vals.append(c.reference)  # the 1× line must fit on the axis too
    log = c.log if c.log is not None else bool(vals) and max(vals) / min(vals) > LOG_SPAN
    n = max(1, len(c.series))
    width = 0.8 / n
    ratio = c.reference is not None
    crowded = n >= 4 and not c.horizontal  # upright labels would overlap their neighbours
    for i, (name, vs) in enumerate(c.series.items()):
        pos = [k + (i - (n - 1) / 2) * width for k in range(len(c.categories))]
        heights = [v if v is not None else 0.0 for v in vs]
        colour = colours[name]
        bar = ax.barh if c.horizontal else ax.bar
        bars = bar(pos, heights, width * 0.92, label=name, color=colour)
        under = c.hatched.get(name)
        if under:
            bar(pos, [u if u is not None else 0.0 for u in under], width * 0.92,
                color="none", edgecolor="white", hatch="///", linewidth=0)
        for b, v in zip(bars, vs):
            if v is None:
                continue
            if c.horizontal:
                ax.annotate(_label(v, ratio), (b.get_width(), b.get_y() + b.get_height() / 2),
                            xytext=(3, 0), textcoords="offset points", va="center", fontsize=7)
            else:
                ax.annotate(_label(v, ratio), (b.get_x() + b.get_width() / 2, b.get_height()),
                            xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=7, rotation=90 if crowded else 0)
    ticks = range(len(c.categories))
    value_axis = ax.xaxis if c.horizontal else ax.yaxis
    if c.horizontal:
        ax.set_yticks(list(ticks), c.categories, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(c.ylabel)
        if log:
            ax.set_xscale("log")
        if c.reference is not None:
            ax.axvline(c.reference, color="black", linewidth=0.8)
        ax.margins(x=0.15)
    else:
        ax.set_xticks(list(ticks), c.categories, fontsize=8)
        ax.set_ylabel(c.ylabel)
        if log:
            ax.set_yscale("log")
        if c.reference is not None:
            ax.axhline(c.reference, color="black", linewidth=0.8)
        ax.margins(y=0.15)
    if ratio:  # "10×", not "10^1"
        value_axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        value_axis.set_minor_formatter(NullFormatter())
    elif log:
        value_axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        value_axis.set_minor_formatter(NullFormatter())
    ax.set_title(c.title, fontsize=10)
    # below the plot: inside it, it would hide the tallest bars
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.07 if c.horizontal
                                                              else -0.16),
              ncol=2, title=c.hatch_label or None, title_fontsize=7, frameon=False)
    ax.grid(axis="x" if c.horizontal else "y", alpha=0.3, which="both")


def draw(path: Path, charts: Sequence[Chart]) -> Path:
    """Draw ``charts`` side by side into the PNG ``path``."""
    height = max([4.0] + [0.3 * len(c.categories) * (1 + len(c.series) / 4)
                          for c in charts if c.horizontal])
    fig, axes = plt.subplots(1, len(charts), figsize=(6.5 * len(charts), height),
                             squeeze=False)
    # one colour per name across the panels (a ratio panel has no fastrpc bar)
    names = list(dict.fromkeys(n for c in charts for n in c.series))
    names.sort(key=lambda n: not n.startswith("fastrpc"))
    colours = {n: COLOURS[i % len(COLOURS)] for i, n in enumerate(names)}
    for ax, c in zip(axes[0], charts):
        _panel(ax, c, colours)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
