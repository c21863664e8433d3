"""The whole benchmark suite: ``python -m nspool bench`` (or ``python -m bench``).

    python -m nspool bench [--quick] [--only NAME ...]

Runs each benchmark module of ``bench/`` in turn (:data:`MODULES`), each
against its baselines in one run, with a progress bar across them; prints
each module's table as its own command does and writes, to
``bench/results/`` (``_common.RESULTS_DIR``):

- ``NAME.json`` per module, as ``python -m bench.NAME`` writes it;
- ``suite.json``: every module's metadata and rows in one file;
- ``NAME.png`` per module: its medians as bars, ratios written beside them;
- ``suite_speedups.png``: every comparison as "times better than its
  baseline" on one log axis.

Plots need matplotlib (the ``bench`` extra); without it the suite runs and
says so. A module that fails is reported and the others still run; the exit
code is then 1. An unknown ``--only`` name is a usage error (2).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from nspool import _sys
from nspool._measure import environment, environment_line, say, write_json

from . import _common
from ._common import Row

#: The benchmark modules, in the order they run (cheapest and most basic first).
MODULES = ("kernel_costs", "workers", "pool", "pool_paced", "aio", "baselines", "rootless")
#: Other names ``--only`` accepts.
ALIASES = {"async": "aio", "kernel": "kernel_costs"}


class UsageError(ValueError):
    """A bad ``--only``: the command exits with 2."""


def select(only: Sequence[str] | None) -> list[str]:
    """The modules to run, in :data:`MODULES` order: all of them, or those
    named (aliases allowed, repeats ignored). Raises :class:`UsageError`
    naming every unknown name."""
    if not only:
        return list(MODULES)
    wanted = {ALIASES.get(name, name) for name in only}
    unknown = [name for name in only if ALIASES.get(name, name) not in MODULES]
    if unknown:
        choices = ", ".join([*MODULES, *(f"{a} (= {m})" for a, m in ALIASES.items())])
        raise UsageError(
            f"nspool bench: unknown benchmark{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}; choose from {choices}"
        )
    return [name for name in MODULES if name in wanted]


@dataclasses.dataclass
class ModuleRun:
    """What one module's run left: its rows (ratios filled), metadata and files."""

    name: str
    title: str
    rows: list[Row]
    meta: dict[str, Any]
    json_path: Path
    png_path: Path | None = None


def _load_plot(console: Console) -> ModuleType | None:
    try:
        return importlib.import_module("bench.plot")
    except ImportError as exc:
        console.print(
            f"no plots: {exc} (install the `bench` extra: pip install -e '.[bench]')",
            markup=False,
        )
        return None


def run_module(name: str, *, quick: bool, results: Path, console: Console) -> ModuleRun:
    """Measure one module with its QUICK or FULL sizes, print its table and
    write its JSON, as its own ``main()`` does."""
    module = importlib.import_module(f"bench.{name}")
    sizes = module.QUICK if quick else module.FULL
    title: str = module.TITLE
    console.rule(f"bench.{name}: {title}", style="dim")
    started, start = time.time(), time.perf_counter()
    rows: list[Row] = module.measure(sizes, console)
    out = results / f"{name}.json"
    meta = _common.report(
        rows,
        title=title,
        sizes=sizes,
        quick=quick,
        started=started,
        elapsed=time.perf_counter() - start,
        out=out,
        console=console,
    )
    return ModuleRun(name, title, rows, meta, out)


def _subtitle(meta: dict[str, Any]) -> str:
    run = f"{'quick' if meta['quick'] else 'full'} run"
    return environment_line(meta, run, "ratio = median / same-run baseline's median", dot=" · ")


def run(args: argparse.Namespace, console: Console) -> int:
    """``nspool bench``: ``args.quick`` (bool) and ``args.only`` (names or
    ``None``). Returns 0, 1 if a module failed or without root, 2 on an
    unknown name."""
    try:
        names = select(getattr(args, "only", None))
    except UsageError as exc:
        console.print(str(exc), markup=False, highlight=False)
        return 2
    if os.geteuid() != 0:
        console.print("nspool bench needs root (it creates namespaces)", markup=False)
        return 1
    quick = bool(getattr(args, "quick", False))
    results = _common.RESULTS_DIR
    plot = _load_plot(console)
    done: list[ModuleRun] = []
    failed: dict[str, str] = {}
    started, start = time.time(), time.perf_counter()
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("bench", total=len(names))
        for name in names:
            progress.update(task, description=f"bench.{name}")
            try:
                result = run_module(name, quick=quick, results=results, console=console)
                if plot is not None:
                    result.png_path = plot.plot_module(
                        result.rows,
                        title=result.title,
                        path=results / f"{name}.png",
                        subtitle=_subtitle(result.meta),
                    )
                    console.print(f"plot: {result.png_path}", markup=False, highlight=False)
                done.append(result)
            except Exception as exc:
                failed[name] = f"{type(exc).__name__}: {exc}"
                console.print(f"bench.{name} failed:", markup=False)
                console.print(traceback.format_exc(), markup=False, highlight=False)
            progress.advance(task)
        progress.update(task, description="bench: done")

    meta: dict[str, Any] = {
        **environment(),
        "backends": list(_sys.available_backends()),
        "quick": quick,
        "started": started,
        "seconds": time.perf_counter() - start,
        "modules": names,
        "failed": failed,
    }
    plots: dict[str, str] = {r.name: str(r.png_path) for r in done if r.png_path is not None}
    if plot is not None and done:
        path = plot.plot_speedups(
            {r.name: r.rows for r in done},
            path=results / "suite_speedups.png",
            subtitle=_subtitle(meta),
        )
        plots["speedups"] = str(path)
        console.print(f"plot: {path}", markup=False, highlight=False)
    write_suite_json(results / "suite.json", meta, done, plots, console)
    if failed:
        console.print(f"failed: {', '.join(failed)}", markup=False)
        return 1
    return 0


def write_suite_json(
    path: Path,
    meta: dict[str, Any],
    done: Sequence[ModuleRun],
    plots: dict[str, str],
    console: Console,
) -> None:
    """All the modules' metadata and rows in one file, with the paths of
    their own JSON and plots."""
    body = {
        "meta": meta,
        "modules": {
            r.name: {
                "title": r.title,
                "json": str(r.json_path),
                "meta": r.meta,
                "results": [row.as_json() for row in r.rows],
            }
            for r in done
        },
        "plots": plots,
    }
    write_json(path, body)
    say(console, f"JSON: {path}")
