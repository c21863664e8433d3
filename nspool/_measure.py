"""Measuring, shared by ``python -m nspool demo`` (:mod:`nspool.demo`) and the
benchmarks (``bench/``): quantiles and ratios against a baseline, waiting
for quiet CPUs, the open- or closed-loop request sender, the line that
names the machine, rich tables and consoles, and the JSON file.

The top layer: only the command line, the demo and the benchmarks import
it. It imports rich (the ``cli`` extra), which the library never does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console, JustifyMethod, OverflowMethod
from rich.table import Table

__all__ = [
    "SETTLE_BUSY",
    "SETTLE_WINDOW",
    "TIMER_SLACK",
    "Column",
    "Request",
    "Result",
    "cpu_times",
    "environment",
    "environment_line",
    "make_console",
    "new_table",
    "quantile",
    "ratio",
    "say",
    "serve",
    "settle",
    "settle_async",
    "settle_steps",
    "show_times",
    "write_json",
]

#: The CPUs count as quiet (the kernel's deferred netns cleanup done) below
#: this busy fraction, over windows of SETTLE_WINDOW seconds.
SETTLE_BUSY = 0.15
SETTLE_WINDOW = 0.1
#: How early (seconds) the sender of paced requests wakes up: the event
#: loop's timers fire up to a millisecond late (epoll's resolution), which
#: would be charged to the request as latency.
TIMER_SLACK = 0.001
#: Ratios from this one up are shown with two decimals, smaller ones with
#: three significant digits.
SMALL_RATIO = 0.1
#: Between the parts of the machine's line.
DOT = "  ·  "


# -- figures ------------------------------------------------------------------------


def quantile(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``samples`` (nearest rank, from below); raises
    ``ValueError`` if there are none."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ratio(mine: float | None, theirs: float | None) -> float | None:
    """``mine`` over the baseline's ``theirs``; ``None`` if either is
    missing or the baseline's is 0."""
    if mine is None or not theirs:
        return None
    return mine / theirs


def show_times(value: float | None) -> str:
    """A ratio cell: ``0.45x`` (``0.0213x`` below SMALL_RATIO), ``-`` for none."""
    if value is None:
        return "-"
    return f"{value:.2f}x" if value >= SMALL_RATIO else f"{value:.3g}x"


# -- quiet CPUs ---------------------------------------------------------------------


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]  # guest time is in user
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def settle_steps(
    max_wait: float,
    *,
    window: float = SETTLE_WINDOW,
    busy: float = SETTLE_BUSY,
    ready: Callable[[], bool] = lambda: True,
) -> Iterator[float]:
    """The pauses (seconds) to sleep, one at a time, until the CPUs are
    quiet (below ``busy`` over the last pause: the kernel has freed the
    namespaces dropped so far) and ``ready()``, or ``max_wait`` has passed.
    The caller sleeps: :func:`settle` on its thread, :func:`settle_async`
    on the event loop."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        busy0, total0 = cpu_times()
        yield window
        busy1, total1 = cpu_times()
        if total1 > total0 and (busy1 - busy0) / (total1 - total0) < busy and ready():
            return


def settle(max_wait: float, *, window: float = SETTLE_WINDOW, busy: float = SETTLE_BUSY) -> float:
    """Block until the CPUs are quiet, at most ``max_wait`` seconds (see
    :func:`settle_steps`); return the time waited."""
    start = time.monotonic()
    for pause in settle_steps(max_wait, window=window, busy=busy):
        time.sleep(pause)
    return time.monotonic() - start


async def settle_async(
    max_wait: float,
    *,
    window: float = SETTLE_WINDOW,
    busy: float = SETTLE_BUSY,
    ready: Callable[[], bool] = lambda: True,
) -> None:
    """:func:`settle` on the event loop, also until ``ready()``."""
    for pause in settle_steps(max_wait, window=window, busy=busy, ready=ready):
        await anyio.sleep(pause)


# -- requests -----------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """What one variant measured in one phase (paced or bursts). Latencies
    in seconds, successful requests only; ``seconds`` is the wall time of
    its rounds; ``cookies`` the distinct netns cookies requests returned."""

    name: str
    planned: int
    latencies: list[float] = dataclasses.field(default_factory=list)
    failures: int = 0
    first_error: BaseException | None = None
    seconds: float = 0.0
    cookies: set[int] = dataclasses.field(default_factory=set)

    @property
    def done(self) -> int:
        """Requests answered and checked."""
        return len(self.latencies)

    @property
    def rate(self) -> float:
        """Successful requests per second of wall time."""
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the latencies (seconds), ``None`` if none."""
        return quantile(self.latencies, q) if self.latencies else None

    def latency_ratio(self, baseline: Result | None, q: float) -> float | None:
        """The ``q`` latency quantile over the baseline's: below 1 is faster."""
        return ratio(self.quantile(q), None if baseline is None else baseline.quantile(q))

    def rate_ratio(self, baseline: Result | None) -> float | None:
        """Requests/s over the baseline's: above 1 is faster."""
        theirs = None if baseline is None else baseline.rate
        return ratio(self.rate if self.done else None, theirs)

    def as_json(self, baseline: Result | None) -> dict[str, Any]:
        def ms(value: float | None) -> float | None:
            return None if value is None else value * 1000

        return {
            "name": self.name,
            "requests": self.planned,
            "ok": self.done,
            "failed": self.failures,
            "distinct_netns": len(self.cookies) if self.cookies else None,
            "seconds": self.seconds,
            "requests_per_s": self.rate,
            "p50_ms": ms(self.quantile(0.50)),
            "p90_ms": ms(self.quantile(0.90)),
            "p99_ms": ms(self.quantile(0.99)),
            "p50_vs_baseline": self.latency_ratio(baseline, 0.50),
            "p99_vs_baseline": self.latency_ratio(baseline, 0.99),
            "requests_per_s_vs_baseline": self.rate_ratio(baseline),
            "first_error": None if self.first_error is None else repr(self.first_error),
        }


#: A request: awaited with its number, returns its netns cookie (or ``None``).
Request = Callable[[int], Awaitable[int | None]]


async def _record(
    result: Result, call: Request, number: int, since: float, on_done: Callable[[], object]
) -> None:
    """Await ``call(number)`` and record it into ``result``: its latency
    from ``since`` (a ``time.perf_counter()`` value) and its cookie, or the
    failure (counted, the first one kept)."""
    try:
        cookie = await call(number)
    except Exception as exc:
        result.failures += 1
        if result.first_error is None:
            result.first_error = exc
    else:
        result.latencies.append(time.perf_counter() - since)
        if cookie is not None:
            result.cookies.add(cookie)
    on_done()


async def serve(
    call: Request,
    numbers: range,
    result: Result,
    *,
    rate: float,
    concurrency: int,
    on_done: Callable[[], object] = lambda: None,
) -> None:
    """Send the requests ``numbers`` to ``call`` and record each into
    ``result`` (then call ``on_done()``); adds the wall time, until the last
    reply, to ``result.seconds``. A failed request is counted and the others
    go on. Runs on the event loop, in a task group of its own.

    ``rate`` above 0 is open loop: the ``i``-th request is due at ``start +
    i / rate`` (``math.inf``: all at once) and is sent then, whatever the
    earlier ones are doing, unless ``concurrency`` are in flight: then it
    waits for one to finish, and so do the requests due after it. A
    request's latency runs from when it was due (or from when it was sent,
    if that was earlier: the sender wakes up :data:`TIMER_SLACK` early), so
    every wait counts. ``rate`` 0 is closed loop: ``concurrency`` clients,
    each sending its next request when the last is answered, timed from its
    send.
    """
    started = time.perf_counter()
    if rate > 0:
        slots = anyio.Semaphore(concurrency)

        async def send(number: int, since: float) -> None:
            try:
                await _record(result, call, number, since, on_done)
            finally:
                slots.release()

        async with anyio.create_task_group() as tg:
            for i, number in enumerate(numbers):
                due = started + i / rate
                early = due - time.perf_counter() - TIMER_SLACK
                if early > 0:
                    await anyio.sleep(early)
                await slots.acquire()
                tg.start_soon(send, number, min(due, time.perf_counter()))
    else:
        pending = iter(numbers)  # shared: each client takes the next number

        async def client() -> None:
            for number in pending:
                await _record(result, call, number, time.perf_counter(), on_done)

        async with anyio.create_task_group() as tg:
            for _ in range(min(concurrency, len(numbers))):
                tg.start_soon(client)
    result.seconds += time.perf_counter() - started


# -- the report ---------------------------------------------------------------------


def environment() -> dict[str, Any]:
    """The machine a run measured: kernel release, Python version, CPUs."""
    return {
        "kernel": os.uname().release,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def environment_line(meta: dict[str, Any], *more: str, dot: str = DOT) -> str:
    """``kernel K  ·  Python P  ·  N CPUs`` from ``meta`` (as
    :func:`environment` gives), then the ``more`` parts, joined by ``dot``."""
    parts = [f"kernel {meta['kernel']}", f"Python {meta['python']}", f"{meta['cpus']} CPUs"]
    return dot.join([*parts, *more])


@dataclasses.dataclass(frozen=True)
class Column:
    """A table column: its header and how its cells are laid out (figures
    to the right, by default)."""

    header: str
    justify: JustifyMethod = "right"
    style: str | None = None
    no_wrap: bool = False
    overflow: OverflowMethod = "ellipsis"


def new_table(title: str, columns: Sequence[Column], *, title_left: bool = False) -> Table:
    """An empty rich table with ``columns``, for the caller's rows."""
    table = Table(title=title, title_justify="left" if title_left else "center")
    for column in columns:
        table.add_column(
            column.header,
            justify=column.justify,
            style=column.style,
            no_wrap=column.no_wrap,
            overflow=column.overflow,
        )
    return table


def say(console: Console, text: str) -> None:
    """Print ``text`` as it is: no markup, no highlighting."""
    console.print(text, markup=False, highlight=False)


def make_console(pipe_width: int) -> Console:
    """A console that keeps table rows on one line when piped: then
    ``pipe_width`` columns wide, unless ``COLUMNS`` says otherwise."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(width=pipe_width)
    return console


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` (indented, a final newline), making
    its directory if need be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
