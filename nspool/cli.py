"""The ``nspool`` command line: ``python -m nspool SUBCOMMAND``.

``doctor`` checks what this kernel and these privileges let nspool do
(:mod:`nspool._doctor`).

``demo`` serves requests, each in a fresh network namespace from a warm
pool, and compares that with creating a namespace per request
(:mod:`nspool.demo`). ``bench`` runs the benchmark suite of a source
checkout (``bench/``) and prints its tables. ``exec`` runs a command inside
existing or fresh namespaces (:mod:`nspool._exec`).

Each subcommand is a function taking the parsed arguments and a console,
returning the exit code, registered in :func:`build_parser`.

rich, the ``cli`` extra, draws the tables; the library never imports it,
and neither does this module until a subcommand needs a console. ``demo``
and ``bench`` need it: without it they exit with status 2 and a one-line
message saying how to install it. ``doctor`` prints plain text instead;
``exec`` prints nothing of its own.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

# rich is imported where it draws (the `cli` extra): nspool works without it.
if TYPE_CHECKING:
    from rich.console import Console

from . import _exec
from ._doctor import OPTIONAL, YES, DoctorReport, KindReport, doctor, installed, probe, render

__all__ = [
    "OPTIONAL",
    "YES",
    "DoctorReport",
    "KindReport",
    "build_parser",
    "doctor",
    "main",
    "probe",
    "render",
]

#: What a subcommand needs of rich (its ``rich`` default in the parser):
#: none (``exec``), rich if installed and plain text without (``doctor``), or
#: rich without fail (``demo``, ``bench``).
RICH_UNUSED = "unused"
RICH_OPTIONAL = "optional"
RICH_REQUIRED = "required"
#: The exit status, and the message on stderr, of a subcommand that needs
#: rich when it is not installed.
RICH_MISSING_STATUS = 2
RICH_MISSING = (
    "nspool {command}: needs rich, which is not installed; "
    "install the `cli` extra: pip install 'nspool[cli]'"
)
#: Output width when stdout is not a terminal (and ``COLUMNS`` is unset), so
#: that piped output keeps each row on one line.
PIPE_WIDTH = 120


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subparser per subcommand, each with its
    handler as the ``handler`` default."""
    parser = argparse.ArgumentParser(
        prog="nspool", description="Run Python callables inside Linux namespaces."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    doctor_parser = commands.add_parser(
        "doctor",
        help="show what this kernel and these privileges allow",
        description="Try to create, join and persist each namespace kind, and print a table.",
    )
    doctor_parser.set_defaults(handler=doctor, rich=RICH_OPTIONAL)

    demo_parser = commands.add_parser(
        "demo",
        help="serve requests, each in a fresh netns from a warm pool",
        description="A small daemon: requests arrive at a steady rate, and each binds the "
        "same port on 127.0.0.1 in its own fresh network namespace from a warm pool and "
        "talks to itself. Prints latency percentiles (from each request's scheduled "
        "arrival) and requests/s against creating a netns per request (unshare in the "
        "request) and against `ip netns add` + `ip netns del` around each request (at most "
        "a few hundred requests; skipped without the `ip` command).",
    )
    demo_parser.add_argument(
        "--requests", type=int, default=2000, help="paced requests per variant (default 2000)"
    )
    demo_parser.add_argument(
        "--rate",
        type=float,
        default=400,
        help="requests sent per second, on a fixed schedule whatever the replies "
        "(default 400, below what two CPUs sustain); 0: a closed loop as fast as possible, "
        "where the kernel's netns creation bounds every variant",
    )
    demo_parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="requests in flight at most; a request due when all are busy waits, and the "
        "wait counts in its latency (default 64)",
    )
    demo_parser.add_argument(
        "--burst",
        type=int,
        default=64,
        help="also send this many requests at once in each of the 4 rounds, reported in "
        "a table of their own (default 64, the pool's warm; 0: none)",
    )
    demo_parser.add_argument(
        "--warm", type=int, default=64, help="pool size kept ready (default 64)"
    )
    demo_parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    demo_parser.set_defaults(handler=demo, rich=RICH_REQUIRED)

    bench_parser = commands.add_parser(
        "bench",
        help="run the benchmark suite (from a source checkout)",
        description="Run every benchmark in bench/ against its baselines; print tables of "
        "medians and ratios, write JSON and plots to bench/results/.",
    )
    bench_parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    bench_parser.add_argument(
        "--only", nargs="+", metavar="NAME", help="run only these benchmarks (e.g. pool aio)"
    )
    bench_parser.set_defaults(handler=bench, rich=RICH_REQUIRED)

    exec_parser = commands.add_parser(
        "exec",
        help="run a command inside existing or fresh namespaces",
        description="Run CMD inside the namespaces named (an `ip netns` name, a namespace "
        "file or a pid for each kind) or fresh ones; CMD inherits stdio, gets the signals "
        "sent to nspool, and its exit status is nspool's (128+N if signal N killed it).",
    )
    _exec.add_arguments(exec_parser)
    exec_parser.set_defaults(handler=exec_command, rich=RICH_UNUSED)
    return parser


def exec_command(args: argparse.Namespace, console: Console | None) -> int:
    """``nspool exec``: see :mod:`nspool._exec`."""
    return _exec.exec_main(args)


def demo(args: argparse.Namespace, console: Console) -> int:
    """``nspool demo``: see :mod:`nspool.demo`."""
    from . import demo as demo_module

    return demo_module.run(args, console)


def bench(args: argparse.Namespace, console: Console) -> int:
    """``nspool bench``: the suite of ``bench/`` in a source checkout (an
    editable install puts it on the path)."""
    try:
        suite = importlib.import_module("bench.suite")
    except ImportError:
        console.print(
            "nspool bench runs the benchmarks of a source checkout: install nspool with "
            "`pip install -e .` from the repository (and its `bench` extra)",
            markup=False,
        )
        return 2
    code: int = suite.run(args, console)
    return code


def _console() -> Console:
    """A rich console for a subcommand that draws (only once rich is known
    to be installed: the measuring module imports it)."""
    from ._measure import make_console

    return make_console(PIPE_WIDTH)


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return
    the exit code. Usage errors give argparse's code (2), not an exception."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed
        return _exit_code(exc.code)
    handler: Callable[[argparse.Namespace, Console | None], int] = args.handler
    needs: str = args.rich
    if needs == RICH_UNUSED:
        return handler(args, None)
    if installed("rich"):
        return handler(args, _console())
    if needs == RICH_OPTIONAL:
        return handler(args, None)
    print(RICH_MISSING.format(command=args.command), file=sys.stderr)
    return RICH_MISSING_STATUS


def _exit_code(code: str | int | None) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    return 1
