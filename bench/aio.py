"""Awaiting calls on workers from asyncio against the standard hops, in one run.

    python -m bench.aio [--quick] [--out PATH]

(a) one await at a time, each timed: ``await s.run(noop)`` (a netns; the
    default ``same_cpu="auto"``, ``True`` and ``False``) against
    ``await loop.run_in_executor(pool, noop)`` with a ``ThreadPoolExecutor``
    and against ``anyio.to_thread.run_sync``;
(b) N awaits gathered at once, per call: the same five;
(c), (d) the same with every thread on one CPU (the loop's and every
    worker's, as ``taskset -c 0`` would): the steady figure on a VM, where
    an unpinned hop is bimodal (same CPU or across vCPUs).

The goals (issue "the hop"): ``await s.run`` at most 0.85x of
``run_in_executor`` one at a time, at most 0.5x gathered; the table marks
each as met or not.

Each variant runs in its own event loop, interleaved in rounds. Prints a
table of medians and ratios; writes ``bench/results/aio.json``. Needs root.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import Awaitable, Callable

import anyio.to_thread
from rich.console import Console

from nspool import Kind, NamespaceSet, Workers, _wait

from ._common import Row, interleave, no_gc, run_main
from .workers import pinned_to_one_cpu


@dataclasses.dataclass(frozen=True)
class Sizes:
    rounds: int
    single: int  # awaits per variant, (a)
    gathered: int  # awaits gathered at once, (b)
    batches: int  # per variant, (b)


QUICK = Sizes(rounds=4, single=2000, gathered=2000, batches=4)
FULL = Sizes(rounds=10, single=10000, gathered=2000, batches=20)


def noop() -> None:
    return None


def in_loop(
    make: Callable[[], Callable[[], Awaitable[object]]],
    timed: Callable[..., Awaitable[list[float]]],
) -> Callable[[int], list[float]]:
    """A variant for ``interleave``: a fresh asyncio loop per chunk."""

    def run(n: int) -> list[float]:
        async def main() -> list[float]:
            return await timed(make(), n)

        return asyncio.run(main())

    return run


async def one_at_a_time(call: Callable[[], Awaitable[object]], n: int) -> list[float]:
    out: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        await call()
        out.append((clock() - t0) / 1e3)
    return out


def gathered(size: int) -> Callable[..., Awaitable[list[float]]]:
    async def run(call: Callable[[], Awaitable[object]], batches: int) -> list[float]:
        out: list[float] = []
        for _ in range(batches):
            t0 = time.perf_counter_ns()
            await asyncio.gather(*(call() for _ in range(size)))
            out.append((time.perf_counter_ns() - t0) / 1e3 / size)
        return out

    return run


def measure(sizes: Sizes, console: Console) -> list[Row]:
    rows = measure_groups(sizes, console, groups=("a", "b"), where="")
    with pinned_to_one_cpu():  # every thread made from here on inherits it
        rows += measure_groups(sizes, console, groups=("c", "d"), where=" (one CPU)")
    return rows


def measure_groups(
    sizes: Sizes, console: Console, *, groups: tuple[str, str], where: str
) -> list[Row]:
    """(a) and (b), or (c) and (d): one at a time, then gathered, with
    executors made here (so that their threads take the caller's CPUs)."""
    rows: list[Row] = []
    pool = concurrent.futures.ThreadPoolExecutor()
    workers = Workers()
    same_cpu = Workers(same_cpu=True)
    never_pinned = Workers(same_cpu=False)
    with NamespaceSet.unshare(Kind.NET) as s:

        def executor() -> Callable[[], Awaitable[object]]:
            loop = asyncio.get_running_loop()
            return lambda: loop.run_in_executor(pool, noop)

        def to_thread() -> Callable[[], Awaitable[object]]:
            return lambda: anyio.to_thread.run_sync(noop)

        def nspool_run() -> Callable[[], Awaitable[object]]:
            return lambda: _wait.run_in(workers, s, noop)

        def nspool_same_cpu() -> Callable[[], Awaitable[object]]:
            return lambda: _wait.run_in(same_cpu, s, noop)

        def nspool_never_pinned() -> Callable[[], Awaitable[object]]:
            return lambda: _wait.run_in(never_pinned, s, noop)

        makers = {
            "executor": executor,
            "anyio": to_thread,
            "nspool": nspool_run,
            "same cpu": nspool_same_cpu,
            "never pinned": nspool_never_pinned,
        }
        try:
            for group, timed, total, label in (
                (groups[0], one_at_a_time, sizes.single, f"one at a time{where}"),
                (
                    groups[1],
                    gathered(sizes.gathered),
                    sizes.batches,
                    f"{sizes.gathered} gathered{where}",
                ),
            ):
                console.print(f"({group}) {label} ...")
                variants = {k: in_loop(m, timed) for k, m in makers.items()}
                with no_gc():
                    interleave(variants, max(1, total // 10), sizes.rounds)
                    samples = interleave(variants, total, sizes.rounds)
                base = Row(
                    group,
                    f"await loop.run_in_executor(ThreadPoolExecutor, noop), {label}",
                    "us",
                    samples["executor"],
                    goal="expected: 200-230 µs one at a time, 70-100 µs gathered",
                )
                rows += [
                    base,
                    Row(
                        group,
                        f"anyio.to_thread.run_sync(noop), {label}",
                        "us",
                        samples["anyio"],
                        base.name,
                    ),
                    Row(
                        group,
                        f"await s.run(noop) in a netns, {label}",
                        "us",
                        samples["nspool"],
                        base.name,
                        goal="goal <= 0.85x" if group == groups[0] else "goal <= 0.5x",
                    ),
                    Row(
                        group,
                        f"await s.run(noop), Workers(same_cpu=True), {label}",
                        "us",
                        samples["same cpu"],
                        base.name,
                    ),
                    Row(
                        group,
                        f"await s.run(noop), Workers(same_cpu=False), {label}",
                        "us",
                        samples["never pinned"],
                        base.name,
                    ),
                ]
        finally:
            workers.shutdown()
            same_cpu.shutdown()
            never_pinned.shutdown()
            pool.shutdown()
    return rows


#: The heading of this benchmark's table (and plot).
TITLE = "nspool async front end (asyncio)"


def main(argv: list[str] | None = None) -> int:
    return run_main(
        argv,
        name="aio",
        doc=__doc__,
        title=TITLE,
        quick=QUICK,
        full=FULL,
        measure=measure,
    )


if __name__ == "__main__":
    raise SystemExit(main())
