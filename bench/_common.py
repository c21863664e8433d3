"""What the benchmarks share: a result row, interleaved measuring, and the
report (a rich table, ratios, JSON). Quantiles, ratios, waiting for quiet
CPUs, the machine's line, tables and the JSON file are ``nspool._measure``'s,
shared with ``python -m nspool demo``.

Benchmarks are run as modules from the repository root
(``python -m bench.kernel_costs``) or through ``python -m nspool bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from nspool import _sys
from nspool._measure import (
    Column,
    environment,
    environment_line,
    new_table,
    quantile,
    ratio,
    say,
    show_times,
    write_json,
)
from nspool._measure import make_console as _make_console

T = TypeVar("T")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
#: Console width when stdout is not a terminal (and ``COLUMNS`` is unset).
PIPE_WIDTH = 140


@dataclasses.dataclass
class Row:
    """One measured line of the table."""

    group: str
    name: str
    unit: str  # "us" per op, or "ops/s"
    samples: list[float]
    baseline: str | None = None  # name of the row it is compared with
    #: The figure aimed at or expected, as text: "goal >= 20x faster",
    #: "goal <= 0.85x" (of the ratio), "goal: p99 < 0.1 ms", or a reference
    #: figure such as "~0.5 ms kernel CPU" (not checked).
    goal: str = ""
    ratio: float | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Show the ratio as a speed-up too (baseline's median / this median):
    #: for rows whose point is how many times faster they are.
    faster: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        return quantile(self.samples, q)

    @property
    def met(self) -> bool | None:
        """Whether this run met :attr:`goal`; ``None`` if the goal is not a
        checkable one (or the row has no ratio to check it against)."""
        return goal_met(self.goal, self)

    def as_json(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "unit": self.unit,
            "n": len(self.samples),
            "median": self.median,
            "p10": self.quantile(0.10),
            "p90": self.quantile(0.90),
            "p99": self.quantile(0.99),
            "mean": statistics.fmean(self.samples),
            "baseline": self.baseline,
            "ratio": self.ratio,
            "speedup": None if not self.ratio else 1 / self.ratio,
            "goal": self.goal,
            "met": self.met,
            **self.extra,
        }


_RATIO_GOAL = re.compile(r"goal\s*(>=|<=|>|<)\s*([0-9.]+)x(\s+faster)?\s*$")
_P99_GOAL = re.compile(r"goal:\s*p99\s*(<=|<)\s*([0-9.]+)\s*(ms|µs|us)\s*$")
_UNIT_US = {"ms": 1000.0, "µs": 1.0, "us": 1.0}


def _compare(value: float, op: str, bound: float) -> bool:
    return {
        ">=": value >= bound,
        "<=": value <= bound,
        ">": value > bound,
        "<": value < bound,
    }[op]


def goal_met(goal: str, row: Row) -> bool | None:
    """Whether ``row`` meets ``goal``: "goal OP Nx" compares the ratio (the
    speed-up with "faster"), "goal: p99 < N ms" the row's p99; any other
    text is a reference figure, ``None``."""
    ratio = _RATIO_GOAL.fullmatch(goal.strip())
    if ratio:
        op, bound, faster = ratio.groups()
        if not row.ratio:
            return None
        value = 1 / row.ratio if faster else row.ratio
        return _compare(value, op, float(bound))
    p99 = _P99_GOAL.fullmatch(goal.strip())
    if p99:
        op, bound, unit = p99.groups()
        if row.unit != "us":
            return None
        return _compare(row.quantile(0.99), op, float(bound) * _UNIT_US[unit])
    return None


def show_met(met: bool | None) -> str:
    """The "met?" cell: ``yes``, ``NO`` (a missed goal stands out), or empty."""
    return "" if met is None else ("yes" if met else "NO")


#: Units where more is better; in the others (times, memory) less is better.
HIGHER_IS_BETTER = frozenset({"ops/s"})


def better_note(units: Sequence[str]) -> str:
    """Which way is better, for a table or plot of rows in ``units``."""
    shown = {"us": "µs"}
    lower = [shown.get(u, u) for u in dict.fromkeys(units) if u not in HIGHER_IS_BETTER]
    higher = [shown.get(u, u) for u in dict.fromkeys(units) if u in HIGHER_IS_BETTER]
    if not higher:
        return "lower is better"
    if not lower:
        return "higher is better"
    return f"{', '.join(lower)}: lower is better; {', '.join(higher)}: higher is better"


def on_thread(fn: Callable[[], T], name: str = "bench") -> T:
    """Run ``fn`` on a fresh thread that exits afterwards (whatever
    namespaces it entered die with it); return its result or raise."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name=name)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: T = box["result"]
    return result


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def interleave(
    variants: Mapping[str, Callable[[int], list[float]]], total: int, rounds: int
) -> dict[str, list[float]]:
    """Run each variant ``total`` times in all, in ``rounds`` alternating
    chunks (A B A B ...); each call returns per-op times in µs."""
    samples: dict[str, list[float]] = {name: [] for name in variants}
    chunk = max(1, total // rounds)
    for _ in range(rounds):
        for name, run in variants.items():
            samples[name].extend(run(chunk))
    return samples


def fill_ratios(rows: Sequence[Row]) -> None:
    """Each row's median over its baseline's, measured in the same run."""
    by_name = {row.name: row for row in rows}
    for row in rows:
        if row.baseline is not None:
            row.ratio = ratio(row.median, by_name[row.baseline].median)


def show_ratio(row: Row) -> str:
    """The ratio cell: ``baseline``, ``1.23x``, or with ``faster``
    ``0.0213x = 47x faster``, ``1.06x = 1.06x slower`` or ``1.00x = same``."""
    if row.ratio is None:
        return "baseline"
    text = show_times(row.ratio)
    if row.faster and row.ratio > 0:
        speedup = 1 / row.ratio
        if f"{row.ratio:.2f}" == "1.00" and f"{speedup:.2f}" == "1.00":
            text += " = same"
        elif speedup < 1:
            text += f" = {row.ratio:,.2f}x slower"
        elif speedup < 10:
            text += f" = {speedup:,.2f}x faster"
        else:
            text += f" = {speedup:,.0f}x faster"
    return text


def show(value: float, unit: str) -> str:
    if unit == "ops/s":
        return f"{value:,.0f}/s"
    if unit == "KiB":
        return f"{value:,.0f} KiB"
    return f"{value:,.1f} µs" if value < 1000 else f"{value / 1000:,.2f} ms"


def render(rows: Sequence[Row], meta: dict[str, Any], console: Console, *, title: str) -> None:
    line = environment_line(
        meta,
        f"nspool backends: {', '.join(meta['backends'])}",
        f"{'quick' if meta['quick'] else 'full'} run, {meta['seconds']:.1f} s",
    )
    say(console, line)
    note = better_note([row.unit for row in rows])
    columns = [
        Column(""),
        Column("measurement", justify="left", overflow="fold"),
        *(Column(header) for header in ("median", "p90", "p99", "n", "ratio")),
        Column("goal", justify="left"),
        Column("met?", justify="left"),
    ]
    table = new_table(f"{title} (ratio = median / baseline's median, same run; {note})", columns)
    previous = ""
    referenced = {row.baseline for row in rows}
    for row in rows:
        group, previous = ("" if row.group == previous else row.group), row.group
        # A row nothing is compared with is no baseline: no ratio at all.
        ratio = show_ratio(row) if row.ratio is not None or row.name in referenced else "-"
        # A rate is one sample per round, not per op: its quantiles mean little.
        rate = row.unit == "ops/s"
        p90 = "-" if rate else show(row.quantile(0.9), row.unit)
        p99 = "-" if rate else show(row.quantile(0.99), row.unit)
        table.add_row(
            group,
            row.name,
            show(row.median, row.unit),
            p90,
            p99,
            str(len(row.samples)),
            ratio,
            row.goal,
            show_met(row.met),
            end_section=row is not rows[-1] and rows[rows.index(row) + 1].group != row.group,
        )
    console.print(table)


def run_main(
    argv: list[str] | None,
    *,
    name: str,
    doc: str | None,
    title: str,
    quick: Any,
    full: Any,
    measure: Callable[[Any, Console], list[Row]],
) -> int:
    """The command line every benchmark shares: ``--quick`` picks the
    ``quick`` sizes over ``full``, ``--out`` the JSON path (default
    ``bench/results/NAME.json``); needs root; measures, prints, writes."""
    default_out = RESULTS_DIR / f"{name}.json"
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--out", type=Path, default=default_out, help=f"JSON ({default_out})")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(f"bench.{name} needs root (it creates namespaces)", file=sys.stderr)
        return 1
    sizes = quick if args.quick else full
    console = make_console()
    started, start = time.time(), time.perf_counter()
    rows = measure(sizes, console)
    report(
        rows,
        title=title,
        sizes=sizes,
        quick=args.quick,
        started=started,
        elapsed=time.perf_counter() - start,
        out=args.out,
        console=console,
    )
    return 0


def report(
    rows: Sequence[Row],
    *,
    title: str,
    sizes: Any,
    quick: bool,
    started: float,
    elapsed: float,
    out: Path,
    console: Console,
) -> dict[str, Any]:
    """Fill the ratios, print the table and write the JSON of one run;
    return the run's metadata (as written)."""
    fill_ratios(rows)
    meta: dict[str, Any] = {
        **environment(),
        "backends": list(_sys.available_backends()),
        "default_backend": _sys.backend(),
        "quick": quick,
        "sizes": dataclasses.asdict(sizes),
        "started": started,
        "seconds": elapsed,
    }
    render(rows, meta, console, title=title)
    write_rows(out, meta, rows, console)
    return meta


def write_rows(path: Path, meta: dict[str, Any], rows: Sequence[Row], console: Console) -> None:
    """Write one run's JSON, ``{"meta": ..., "results": [row, ...]}``, and say where."""
    write_json(path, {"meta": meta, "results": [row.as_json() for row in rows]})
    say(console, f"JSON: {path}")


def make_console() -> Console:
    """A console that keeps table rows on one line when piped."""
    return _make_console(PIPE_WIDTH)
