"""Two source trees side by side: the same benchmark modules, run in turns.

    python -m bench.trees OLD_TREE [--modules workers aio pool] [--rounds 3] [--quick]

Runs ``python -m bench.MODULE --quick`` (or full) alternately in ``OLD_TREE``
(a checkout of an earlier commit, e.g. made with ``git worktree add``) and
in this tree, ``--rounds`` times each, in one session, so both see the same
machine. Each tree's own ``bench/`` measures its own ``nspool`` (the child's
working directory comes first on its ``sys.path``). For every row that both
trees report, prints the median over rounds of each tree's row median and
``new / old`` (above 1: slower for times, faster for rates), and the same
for the row's ratio to its baseline within its own run, which is the
steadier figure on a noisy machine. Writes ``bench/results/trees.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ._common import RESULTS_DIR, make_console

#: The modules compared unless told otherwise.
MODULES = ("workers", "aio", "pool")
#: Seconds one module's run may take.
RUN_TIMEOUT = 900
#: A row whose new/old is worse than this is flagged.
TOLERANCE = 1.05

HERE = Path(__file__).resolve().parent.parent


def run_once(tree: Path, module: str, quick: bool) -> dict[str, dict[str, Any]]:
    """One run of ``bench.MODULE`` in ``tree``: its rows by name."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        argv = [sys.executable, "-m", f"bench.{module}", "--out", str(out)]
        if quick:
            argv.append("--quick")
        env = {**os.environ, "PYTHONPATH": str(tree)}
        subprocess.run(
            argv, cwd=tree, env=env, check=True, timeout=RUN_TIMEOUT, capture_output=True
        )
        data = json.loads(out.read_text())
    return {row["name"]: row for row in data["results"]}


def worse(new: float, old: float, unit: str) -> float:
    """How many times worse ``new`` is than ``old`` (1: the same)."""
    if unit == "ops/s":
        return old / new if new else float("inf")
    return new / old if old else float("inf")


def compare(old_tree: Path, modules: list[str], rounds: int, quick: bool, console: Console) -> int:
    results: dict[str, list[dict[str, Any]]] = {}
    flagged = 0
    for module in modules:
        runs: dict[str, list[dict[str, dict[str, Any]]]] = {"old": [], "new": []}
        for i in range(rounds):
            order = [("old", old_tree), ("new", HERE)]
            for label, tree in order if i % 2 == 0 else order[::-1]:
                console.print(f"{module}: round {i + 1}/{rounds}, {label} tree ...")
                runs[label].append(run_once(tree, module, quick))
        names = [n for n in runs["new"][0] if all(n in r for r in runs["old"] + runs["new"])]
        table = Table(title=f"bench.{module}: this tree (new) against {old_tree} (old)")
        for column in (
            "row",
            "unit",
            "old median",
            "new median",
            "worse",
            "ratio old",
            "ratio new",
            "worse",
        ):
            table.add_column(column, justify="left" if column == "row" else "right")
        rows = []
        for name in names:
            unit = runs["new"][0][name]["unit"]
            med = {k: statistics.median(r[name]["median"] for r in runs[k]) for k in runs}
            ratios = {
                k: statistics.median(r[name]["ratio"] for r in runs[k])
                if runs[k][0][name]["ratio"]
                else None
                for k in runs
            }
            by_median = worse(med["new"], med["old"], unit)
            by_ratio = (
                worse(ratios["new"], ratios["old"], unit)
                if ratios["new"] is not None and ratios["old"] is not None
                else None
            )
            bad = (by_ratio if by_ratio is not None else by_median) > TOLERANCE
            flagged += bad
            rows.append(
                {
                    "name": name,
                    "unit": unit,
                    "median": med,
                    "ratio": ratios,
                    "worse_median": by_median,
                    "worse_ratio": by_ratio,
                    "flagged": bad,
                }
            )
            table.add_row(
                name,
                unit,
                f"{med['old']:.1f}",
                f"{med['new']:.1f}",
                f"{by_median:.3f}",
                "-" if ratios["old"] is None else f"{ratios['old']:.3f}",
                "-" if ratios["new"] is None else f"{ratios['new']:.3f}",
                "-" if by_ratio is None else f"{by_ratio:.3f}" + (" !" if bad else ""),
            )
        console.print(table)
        results[module] = rows
    out = RESULTS_DIR / "trees.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {"old": str(old_tree), "rounds": rounds, "quick": quick, "results": results}, indent=1
        )
    )
    console.print(f"rows worse than {TOLERANCE}x (by ratio to baseline, else by median): {flagged}")
    console.print(f"JSON: {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("old_tree", type=Path)
    parser.add_argument("--modules", nargs="+", default=list(MODULES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    return compare(args.old_tree.resolve(), args.modules, args.rounds, args.quick, make_console())


if __name__ == "__main__":
    raise SystemExit(main())
