"""PNG charts of benchmark rows, for where a picture reads better than a table.

:func:`plot_module` draws one benchmark's medians (one panel per unit, log
scale where they spread widely) with each row's ratio written beside its
bar; :func:`plot_speedups` draws every compared row of a suite run as "times
better than its baseline", so that one axis reads the same way for times and
rates. matplotlib (the ``bench`` extra) with the Agg backend, no pyplot:
nothing global, no window.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from ._common import HIGHER_IS_BETTER, Row, better_note, show, show_ratio

#: A panel uses a log scale when its largest median is this many times its smallest.
LOG_SPREAD = 20.0
#: Row labels are wrapped at this many characters.
LABEL_WIDTH = 48

BASELINE_COLOR = "#9e9e9e"
ROW_COLOR = "#4c72b0"
FASTER_COLOR = "#55a868"
WORSE_COLOR = "#c44e52"

UNIT_AXIS = {"us": "median, µs per op", "ops/s": "median, ops per second", "KiB": "median, KiB"}


def _label(row: Row) -> str:
    return textwrap.fill(f"({row.group}) {row.name.strip()}", LABEL_WIDTH)


def _color(row: Row) -> str:
    if row.baseline is None:
        return BASELINE_COLOR
    return FASTER_COLOR if row.faster else ROW_COLOR


def _ratio_text(row: Row, rows: Sequence[Row]) -> str:
    """The ratio beside a bar; nothing for a row that nothing is compared
    with (calling it "baseline" would name a comparison that is not there)."""
    if row.ratio is None and not any(other.baseline == row.name for other in rows):
        return ""
    return f"  ·  {show_ratio(row)}"


def _panel(ax: Axes, rows: Sequence[Row], unit: str) -> None:
    medians = [row.median for row in rows]
    # Whiskers stop at zero: no time, rate or size is negative, and a noisy
    # p10 below zero (a memory reading) must not draw one.
    low = [max(0.0, row.median - max(0.0, row.quantile(0.10))) for row in rows]
    high = [max(0.0, row.quantile(0.90) - row.median) for row in rows]
    positions = list(range(len(rows)))
    # A rate is one sample per round: its spread says little, as in the table.
    errors = None if unit == "ops/s" else [low, high]
    ax.barh(
        positions,
        medians,
        xerr=errors,
        color=[_color(row) for row in rows],
        error_kw={"elinewidth": 0.8, "capsize": 2, "ecolor": "#444444"},
    )
    ax.set_yticks(positions, [_label(row) for row in rows], fontsize=7)
    ax.invert_yaxis()
    positive = [m for m in medians if m > 0]
    if positive and max(positive) / min(positive) >= LOG_SPREAD:
        ax.set_xscale("log")
    # Ticks in the table's own units (and no mathtext "10^n" labels).
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: show(x, unit) if x > 0 else "0"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(
        UNIT_AXIS.get(unit, unit)
        + (" (log)" if ax.get_xscale() == "log" else "")
        + f", {better_note([unit])}"
    )
    ax.grid(axis="x", linestyle=":", linewidth=0.6)
    for pos, row in zip(positions, rows, strict=True):
        # Written past the whisker, so that the two do not cross.
        end = row.median if errors is None else max(row.median, row.quantile(0.90))
        ax.annotate(
            f"{show(row.median, unit)}{_ratio_text(row, rows)}",
            xy=(end, pos),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    ax.margins(x=0.3 if ax.get_xscale() == "linear" else 0.2)
    if ax.get_xscale() == "linear":
        ax.set_xlim(left=0)


def plot_module(rows: Sequence[Row], *, title: str, path: Path, subtitle: str = "") -> Path:
    """One benchmark's medians as horizontal bars (whiskers p10-p90), a
    panel per unit; baselines grey, rows shown as speed-ups green. Call
    after the ratios are filled (``_common.report``). Returns ``path``."""
    units = list(dict.fromkeys(row.unit for row in rows))
    by_unit = {unit: [row for row in rows if row.unit == unit] for unit in units}
    heights = [max(1.2, 0.42 * sum(_label(r).count("\n") + 1 for r in by_unit[u])) for u in units]
    fig = Figure(figsize=(12, sum(heights) + 1.2), layout="constrained")
    axes = fig.subplots(len(units), 1, squeeze=False, height_ratios=heights)
    for ax, unit in zip(axes[:, 0], units, strict=True):
        _panel(ax, by_unit[unit], unit)
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def speedup(row: Row) -> float | None:
    """How many times better than its baseline ``row`` is (> 1: better):
    baseline / this for times and memory, this / baseline for rates."""
    if not row.ratio:
        return None
    return row.ratio if row.unit in HIGHER_IS_BETTER else 1 / row.ratio


def plot_speedups(modules: Mapping[str, Sequence[Row]], *, path: Path, subtitle: str = "") -> Path:
    """Every row with a baseline, of every module, as times better than
    that baseline (log scale, 1x marked). Returns ``path``."""
    labels: list[str] = []
    values: list[float] = []
    for name, rows in modules.items():
        for row in rows:
            value = speedup(row)
            if value is not None:
                labels.append(textwrap.fill(f"{name} ({row.group}) {row.name.strip()}", 64))
                values.append(value)
    height = max(2.0, 0.3 * sum(label.count("\n") + 1 for label in labels) + 1.2)
    fig = Figure(figsize=(12, height), layout="constrained")
    ax = fig.subplots()
    positions = list(range(len(values)))
    # Each bar grows from the 1x line: right when better, left when worse.
    ax.barh(
        positions,
        [abs(v - 1.0) for v in values],
        left=[min(v, 1.0) for v in values],
        color=[FASTER_COLOR if v >= 1 else WORSE_COLOR for v in values],
    )
    ax.set_yticks(positions, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(1.0, color="#222222", linewidth=0.8)
    ax.grid(axis="x", linestyle=":", linewidth=0.6)
    ax.set_xlabel(
        "times better than the same run's baseline (log): baseline / this for times, "
        "this / baseline for rates"
    )
    for pos, value in zip(positions, values, strict=True):
        ax.annotate(
            f" {value:,.2f}x" if value < 10 else f" {value:,.0f}x",
            xy=(value, pos),
            va="center",
            fontsize=7,
        )
    ax.margins(x=0.15)
    title = "nspool bench: every comparison against its baseline"
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
