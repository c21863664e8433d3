"""``python -m bench [--quick] [--only NAME ...]``: the whole suite, as
``python -m nspool bench`` runs it (:mod:`bench.suite`)."""

from __future__ import annotations

import argparse

from ._common import make_console
from .suite import ALIASES, MODULES, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run every benchmark in bench/ against its baselines; print tables of "
        "medians and ratios, write JSON and plots to bench/results/.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    parser.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help=f"run only these: {', '.join(MODULES)} (or {', '.join(ALIASES)})",
    )
    return run(parser.parse_args(argv), make_console())


if __name__ == "__main__":
    raise SystemExit(main())
