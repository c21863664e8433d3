"""``python -m nspool demo``: a small daemon that serves each request in a
fresh network namespace, from a warm pool, against making one per request.

A request (:func:`handle`) runs on a thread inside its own netns: it binds
``127.0.0.1:PORT`` (the same port for every request), connects to itself,
sends ``hello from request N``, echoes it back and checks the reply. Many
requests run at once and all bind the same address, which only works because
each has its own network stack. A netns serves one request only: the closed
connection leaves the port in ``TIME_WAIT``, and the listener does not set
``SO_REUSEADDR``, so even a second request after the first would fail with
``EADDRINUSE`` in the same netns. Each request returns its netns's cookie
(``SO_NETNS_COOKIE``, never reused by the kernel), and the table counts the
distinct namespaces that served.

The variants, measured in the same process, in interleaved rounds:

* ``nspool Pool``: ``await pool.run(handle, n)`` on a ``Pool(Kind.NET,
  warm=...)`` (two creator threads, the default); the set is thrown away
  after the request.
* ``netns per request`` (the baseline): on an anyio worker thread,
  ``unshare(CLONE_NEWNET)``, ``lo`` up, the request, then ``setns`` back home
  by fd. The quickest way to do it by hand: the kernel's creation cost is
  paid inside every request.
* ``ip netns per request``: ``ip netns add``, enter it by its
  ``/run/netns`` file, ``lo`` up, the request, back home, ``ip netns del``:
  shelling out to iproute2. At most :data:`IP_NETNS_MAX` requests, as it is
  slow: on two CPUs it falls behind 400 requests a second, and its latency
  is then mostly the wait behind the requests before it.

Load is open loop, as a daemon sees it: requests arrive at ``rate`` a
second on a fixed schedule (request ``i`` of a round at ``t0 + i / rate``),
whether or not the earlier ones are answered, with at most ``concurrency``
in flight; a request that finds them all busy waits for one. Its latency
runs from its scheduled arrival until its reply is checked, so waiting for
a slot, a late sender or a slow event loop all count (no coordinated
omission; the sender wakes up to one timer tick early, and a request sent
early is timed from its actual send). A variant's requests/s is its
requests over the wall time of its rounds: the offered rate, as long as it
keeps up. ``burst`` more requests in each round arrive all at once, before
the paced ones, and are reported apart: a warm pool of at least that size
absorbs them. Before each turn (paced or burst) the demo waits (at most
:data:`SETTLE_MAX` seconds) for the CPUs to be quiet, since the kernel frees
dropped namespaces in the background, and for the pool to be full again.

``rate`` 0 is a closed loop instead: ``concurrency`` clients each
send their next request as soon as the last one is answered, as fast as the
machine goes, and the table adds the requests/s against the baseline.

Reading the table: the pool takes the creation of a netns out of the
request, not off the machine. Every variant creates and frees one netns per
request; the pool does it on its creator and closer threads, ahead of
demand. Below saturation that is what a daemon wants: the request does not
wait for the kernel, so latency drops (the ``p50``/``p99 vs baseline``
columns), and a burst up to ``warm`` finds its netns ready (though a burst's
latency is mostly serving that many requests at once on the CPUs at hand:
the pool takes only the creations out of it). At saturation
(``rate`` 0, or a rate above what the machine sustains) every variant is
bounded by the kernel's rate of creating and destroying netns (about
1,000-2,000 a second on two CPUs, most of it in the kernel), and the pool
cannot beat it: it runs dry (the ``misses`` line), its threads compete with
the requests for the CPUs, and it may well serve fewer requests a second
than creating a netns in the request.

The handler is a plain function with blocking sockets run on a worker: one
thread hop per request. The async helpers (``s.create_tcp_listener``,
``s.connect_tcp``) do the same exchange on the event loop, but cost more
hops here (the names are resolved inside the set) and measured slower.

Threads: :func:`run` blocks its calling thread, which runs the event loop
(anyio on asyncio). Besides it: the pool's creators and closer, the demo's
own ``Workers``, and anyio's worker threads for the baselines. Before
:func:`run` returns, failures included, the pool is closed, its threads and
the workers joined, every ``ip netns`` name deleted, and anyio's threads told
to exit (they do so at once, back in the host's netns).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import shutil
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table

from ._demo_request import (
    HOST,
    PORT,
    exchange,
    fresh_netns_request,
    handle,
    ip_netns_request,
    netns_cookie,
    open_listener,
)
from ._measure import (
    Column,
    Request,
    Result,
    environment,
    new_table,
    say,
    serve,
    settle_async,
    show_times,
    write_json,
)
from .kinds import Kind
from .nsset import NamespaceSet
from .pool import Pool, PoolStats
from .workers import Workers

__all__ = [
    "HOST",
    "IP_NETNS_MAX",
    "PORT",
    "ROUNDS",
    "Result",
    "exchange",
    "handle",
    "netns_cookie",
    "open_listener",
    "run",
    "serve",
]

#: Rounds the variants take turns in, so that a slow phase of the machine
#: (the kernel freeing namespaces, say) hits each of them alike.
ROUNDS = 4
#: Requests the ``ip netns`` variant serves at most: it costs milliseconds
#: each (two processes), and the demo should stay short.
IP_NETNS_MAX = 200
#: Before a round: wait at most this long (seconds) for quiet CPUs and a
#: full pool; quiet is below ``_measure.SETTLE_BUSY`` of the CPUs over
#: SETTLE_WINDOW.
SETTLE_MAX = 1.0
SETTLE_WINDOW = 0.05
#: The pool's creator threads: the library's default. (One gives a lower
#: p50 still at this rate, 0.52x against 0.67x of the baseline's here; two
#: refill faster after a burst.)
CREATORS = 2
POOL = "nspool Pool"
PER_REQUEST = "netns per request"
IP_NETNS = "ip netns per request"
#: The variant the others' latencies (and requests/s) are compared with.
BASELINE = PER_REQUEST


# -- measuring ------------------------------------------------------------------------


def _chunks(total: int, rounds: int) -> Iterator[range]:
    """``range(total)`` cut into ``rounds`` consecutive, nearly equal parts."""
    edges = [total * i // rounds for i in range(rounds + 1)]
    return (range(a, b) for a, b in itertools.pairwise(edges))


@dataclasses.dataclass
class _Variant:
    call: Request
    task: TaskID
    paced: Result
    paced_numbers: Iterator[range]
    bursts: Result


@dataclasses.dataclass
class _Tally:
    """The pool's hits and misses during one phase of the pool's variant."""

    hits: int = 0
    misses: int = 0

    def add(self, before: PoolStats, after: PoolStats) -> None:
        self.hits += after.hits - before.hits
        self.misses += after.misses - before.misses


async def _settle(pool: Pool) -> None:
    """Wait, at most SETTLE_MAX seconds, until the CPUs are quiet (the
    kernel has freed the namespaces dropped so far) and the pool is full."""
    await settle_async(
        SETTLE_MAX, window=SETTLE_WINDOW, ready=lambda: pool.stats().ready >= pool.warm
    )


@dataclasses.dataclass
class _Run:
    paced: list[Result]
    bursts: list[Result]
    pool: PoolStats
    pool_paced: _Tally
    pool_bursts: _Tally
    seconds: float


async def _measure(args: argparse.Namespace, console: Console, with_ip: bool) -> _Run:
    """Every variant, in interleaved rounds, under a progress bar. Runs on
    the event loop thread; the pool, the Workers and anyio's threads are
    gone when it returns."""
    started = time.perf_counter()
    limiter = anyio.CapacityLimiter(args.concurrency)
    pid = os.getpid()

    async def fresh(number: int) -> int | None:
        return await anyio.to_thread.run_sync(fresh_netns_request, number, limiter=limiter)

    async def named(number: int) -> int | None:
        name = f"nspool-demo-{pid}-{number}"
        return await anyio.to_thread.run_sync(ip_netns_request, number, name, limiter=limiter)

    progress = Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
    )
    tallies = {"paced": _Tally(), "bursts": _Tally()}
    with Workers(max_workers=args.concurrency) as workers:
        async with Pool(Kind.NET, warm=args.warm, workers=workers, creators=CREATORS) as pool:
            await pool.await_ready()  # serve from a full pool

            async def pooled(number: int) -> int | None:
                # `handle` is looked up per call, so a test can swap it.
                return await pool.run(handle, number)

            async def turn(variant: _Variant, phase: str, numbers: range, rate: float) -> None:
                """One variant's requests ``numbers`` of one phase, after
                quiet CPUs and a full pool."""
                result = variant.bursts if phase == "bursts" else variant.paced
                await _settle(pool)
                before = pool.stats()
                await serve(
                    variant.call,
                    numbers,
                    result,
                    rate=rate,
                    concurrency=args.concurrency,
                    on_done=lambda: progress.advance(variant.task),
                )
                if variant.call is pooled:
                    tallies[phase].add(before, pool.stats())
                if phase == "paced":
                    progress.update(variant.task, note=f"{result.rate:,.0f} req/s")

            plan: list[tuple[str, int, Request]] = [
                (POOL, args.requests, pooled),
                (PER_REQUEST, args.requests, fresh),
            ]
            if with_ip:
                plan.append((IP_NETNS, min(IP_NETNS_MAX, args.requests), named))
            with progress:
                variants = [
                    _Variant(
                        call=call,
                        task=progress.add_task(name, total=planned + ROUNDS * args.burst, note=""),
                        paced=Result(name, planned),
                        paced_numbers=_chunks(planned, ROUNDS),
                        bursts=Result(name, ROUNDS * args.burst),
                    )
                    for name, planned, call in plan
                ]
                for round_ in range(ROUNDS):
                    # A different variant goes first each round: the one
                    # after a variant pays for the namespaces it dropped.
                    shift = round_ % len(variants)
                    for variant in variants[shift:] + variants[:shift]:
                        if args.burst:
                            # Numbered after the paced requests: distinct
                            # messages and `ip netns` names.
                            first = variant.paced.planned + round_ * args.burst
                            numbers = range(first, first + args.burst)
                            await turn(variant, "bursts", numbers, math.inf)
                        numbers = next(variant.paced_numbers)
                        if numbers:
                            await turn(variant, "paced", numbers, args.rate)
            stats = pool.stats()
    return _Run(
        paced=[v.paced for v in variants],
        bursts=[v.bursts for v in variants] if args.burst else [],
        pool=stats,
        pool_paced=tallies["paced"],
        pool_bursts=tallies["bursts"],
        seconds=time.perf_counter() - started,
    )


# -- the report -------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:,.2f}"


def _table(title: str, results: list[Result], *, rates: bool, rate_ratio: bool) -> Table:
    """One row per variant: requests, distinct netns, latency percentiles
    and the p50 and p99 against the baseline; with ``rates`` the requests/s
    too, with ``rate_ratio`` also against the baseline."""
    baseline = next((r for r in results if r.name == BASELINE), None)
    columns = [
        Column("variant", justify="left", style="bold", no_wrap=True),
        Column("requests"),
        Column("netns"),
        *([Column("req/s")] if rates else []),
        *(Column(f"{q} ms") for q in ("p50", "p90", "p99")),
        Column("p50 vs\nbaseline"),
        Column("p99 vs\nbaseline"),
        *([Column("req/s vs\nbaseline")] if rate_ratio else []),
    ]
    table = new_table(title, columns, title_left=True)
    for result in results:
        done = f"{result.done:,}"
        cells = [
            result.name,
            done if not result.failures else f"{done}/{result.planned:,}",
            f"{len(result.cookies):,}" if result.cookies else "-",
        ]
        if rates:
            cells.append(f"{result.rate:,.0f}")
        cells += [_ms(result.quantile(q)) for q in (0.50, 0.90, 0.99)]
        ratios = [result.latency_ratio(baseline, 0.50), result.latency_ratio(baseline, 0.99)]
        if rate_ratio:
            ratios.append(result.rate_ratio(baseline))
        cells += ["baseline" if result is baseline else show_times(r) for r in ratios]
        table.add_row(*cells)
    return table


def _render(run: _Run, args: argparse.Namespace, console: Console) -> None:
    where = f"each binding {HOST}:{PORT} in its own netns"
    if args.rate > 0:
        title = f"{args.rate:,g} requests/s sent on schedule, at most {args.concurrency} in flight"
    else:
        title = f"closed loop, {args.concurrency} requests in flight"
    closed = args.rate <= 0
    console.print(_table(f"{title}, {where}", run.paced, rates=True, rate_ratio=closed))
    if run.bursts:
        title = f"bursts: {args.burst} requests at once, {ROUNDS} per variant, {where}"
        console.print(_table(title, run.bursts, rates=False, rate_ratio=False))

    def tally(t: _Tally) -> str:
        return f"{t.hits:,} took a ready netns, {t.misses:,} made one on the spot (misses)"

    created = f"{run.pool.created:,} netns created in all."
    main = "Closed-loop requests" if closed else "Paced requests"
    say(console, f"pool: {args.warm} warm, {CREATORS} creators. {main}: {tally(run.pool_paced)}.")
    say(console, f"Bursts: {tally(run.pool_bursts)}. {created}" if run.bursts else created)
    since = "a request's scheduled arrival" if args.rate > 0 else "sending a request"
    ratios = "p50 and p99 over the baseline's: lower is better"
    if closed:
        ratios += "; requests/s over the baseline's: higher is better"
    say(
        console,
        f"netns: distinct namespaces that served, by cookie. Latency: from {since} to its "
        f"checked reply. x: {ratios}. Took {run.seconds:.1f} s.",
    )


def _write_json(path: Path, run: _Run, args: argparse.Namespace) -> None:
    def variants(results: list[Result]) -> list[dict[str, Any]]:
        baseline = next((r for r in results if r.name == BASELINE), None)
        return [result.as_json(baseline) for result in results]

    document = {
        "meta": {
            **environment(),
            "requests": args.requests,
            "rate": args.rate,
            "load": "open loop" if args.rate > 0 else "closed loop",
            "concurrency": args.concurrency,
            "burst": args.burst,
            "warm": args.warm,
            "creators": CREATORS,
            "rounds": ROUNDS,
            "address": f"{HOST}:{PORT}",
            "baseline": BASELINE,
            "seconds": run.seconds,
        },
        "variants": variants(run.paced),
        "bursts": variants(run.bursts),
        "pool": {
            **dataclasses.asdict(run.pool),
            "paced": dataclasses.asdict(run.pool_paced),
            "bursts": dataclasses.asdict(run.pool_bursts),
        },
    }
    write_json(path, document)


def _report_failures(results: list[Result], console: Console, what: str = "") -> bool:
    """Print each failing variant's count and first error; whether any failed."""
    failed = False
    for result in results:
        if not result.failures:
            continue
        failed = True
        say(
            console,
            f"{result.name}{what}: {result.failures:,} of {result.planned:,} requests failed; "
            "the first error:",
        )
        if result.first_error is not None:
            text = "".join(traceback.format_exception(result.first_error)).rstrip()
            say(console, text)
    return failed


def run(args: argparse.Namespace, console: Console) -> int:
    """``nspool demo``: measure, print the table (and write ``--json``).

    Returns 0 if every request succeeded, 1 if any failed or no netns can be
    made here, 2 for bad arguments. Blocks the calling thread, which runs
    the event loop, for the whole demo (about 12 s with the defaults on two
    CPUs); the calling thread's namespaces are untouched.
    """
    if (
        args.requests < 1
        or args.concurrency < 1
        or args.warm < 0
        or args.burst < 0
        or not (0 <= args.rate < math.inf)
    ):
        say(
            console,
            "nspool demo: --requests and --concurrency must be at least 1, "
            "--warm, --burst and --rate (a finite number) at least 0",
        )
        return 2
    try:  # a clear message instead of thousands of failed requests
        NamespaceSet.unshare(Kind.NET).close()
    except OSError as exc:
        say(
            console,
            f"nspool demo: cannot create a network namespace here ({exc}); "
            "see `python -m nspool doctor`",
        )
        return 1
    with_ip = shutil.which("ip") is not None
    n_ip = min(IP_NETNS_MAX, args.requests)
    if args.rate > 0:
        load = f"sent at {args.rate:,g} a second, at most {args.concurrency} in flight"
    else:
        load = f"in a closed loop, {args.concurrency} in flight"
    burst = f", and {ROUNDS} bursts of {args.burst} at once" if args.burst else ""
    say(
        console,
        f"nspool demo: {args.requests:,} requests {load}{burst}. Each binds "
        f"{HOST}:{PORT} in its own network namespace and talks to itself, which only "
        "isolation allows.",
    )
    say(
        console,
        f"From a pool of {args.warm} ready netns, against creating a netns per request"
        + (f", and `ip netns add`/`del` ({n_ip:,} requests)." if with_ip else "."),
    )
    if not with_ip:
        say(console, "(no `ip` command here: the ip netns variant is skipped)")
    measured = anyio.run(_measure, args, console, with_ip)
    _render(measured, args, console)
    if args.json:
        _write_json(Path(args.json), measured, args)
        say(console, f"JSON: {args.json}")
    failed = _report_failures(measured.paced, console)
    failed = _report_failures(measured.bursts, console, " (bursts)") or failed
    return 1 if failed else 0
