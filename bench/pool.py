"""Fresh netns per request from a ``Pool`` against the kernel's own ceiling, in one run.

    python -m bench.pool [--quick] [--out PATH]

(a) the ceiling: a raw loop of ctypes ``unshare(CLONE_NEWNET)``, open
    ``/proc/thread-self/ns/net``, ``setns`` back home, close, on 1 and on 2
    threads (``bench.kernel_costs.create_rate``); and the same loop bringing
    ``lo`` up in each netns, the ceiling for pools that do;
(b) sustained throughput: a taker doing ``pool.put(pool.get())`` as fast as
    it can for N requests, with 1 and 2 creator threads, with a no-op
    after-create hook and with the default one (``lo`` up); interleaved in
    rounds with (a), each run alone on a quiet machine; plus, to show what
    the trickling closer costs at full tilt, 2 creators with every discarded
    set closed at once. Rates count only requests, over the taker's loop and
    until the kernel has freed every netns dropped so far (a veth witness:
    ``ip`` is needed for those rows). Ratios are against the faster raw loop
    (with ``lo`` up for the pools that bring it up);
    the JSON has them against each, and 2 creators against 1;
(c) acquisition latency (the time ``pool.get()`` takes) at a paced demand of
    one request every 2 ms, below the refill rate: from a warm pool against
    a pool with ``warm=0``, whose every ``get`` creates a netns on the spot;
(d) a burst: all ``warm`` sets (200) taken at once, then all given back
    (discarded); the time until the pool is warm again, the worst creation
    (the pool's own, hook included) from the burst until then and through
    the following second, and the worst ``get()`` in that second (one
    request every 2 ms), with the
    pacing closer (``nspool.pool.CLOSE_RATE`` closes a second) and with
    no pacing (every discarded set closed at once).

Prints a table of medians and ratios and writes ``bench/results/pool.json``.
Needs root. The kernel frees a netns asynchronously, so every variant starts
once the CPUs are quiet.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Iterator

from rich.console import Console

from nspool import Kind, NamespaceSet, Pool, Workers
from nspool import pool as nspool_pool
from nspool._measure import settle

from ._common import Row, interleave, no_gc, run_main
from .kernel_costs import all_freed, create_rate

#: The library's closing pace (closes a second), read before any variant
#: changes it; 0 stands for no pacing (every discarded set at once).
TRICKLE = float(nspool_pool.CLOSE_RATE)
#: A pace no closer reaches: every waiting set closed in one batch.
_UNPACED = 10**9

Hook = Callable[[NamespaceSet], object] | None


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much to measure; ``--quick`` and the default run differ only here."""

    rate_requests: int  # (a), (b): netns per run (split between raw threads)
    rate_rounds: int  # (a), (b): interleaved runs per variant
    warm: int  # (b), (c): the pool's warm count
    paced_requests: int  # (c): timed gets per variant
    rounds: int  # (c): interleaved rounds
    period: float  # (c), (d): seconds between two paced requests
    burst: int  # (d): sets taken at once (and the pool's warm count)
    burst_rounds: int  # (d): bursts per variant
    window: float  # (d): seconds of paced requests after the burst
    settle_max: float  # seconds to wait for the CPUs to go quiet


QUICK = Sizes(
    rate_requests=800,
    rate_rounds=1,
    warm=16,
    paced_requests=1000,
    rounds=4,
    period=0.002,
    burst=200,
    burst_rounds=2,
    window=1.0,
    settle_max=1.5,
)
FULL = Sizes(
    rate_requests=3000,
    rate_rounds=3,
    warm=16,
    paced_requests=5000,
    rounds=10,
    period=0.002,
    burst=200,
    burst_rounds=5,
    window=1.0,
    settle_max=4.0,
)


# -- helpers ---------------------------------------------------------------------


def noop_hook(_s: NamespaceSet) -> None:
    return None


@contextlib.contextmanager
def close_interval(rate: float) -> Iterator[None]:
    """Set ``nspool.pool.CLOSE_RATE`` to ``rate`` closes a second (0: no
    pacing) for a while (the closer reads it before every batch)."""
    old = nspool_pool.CLOSE_RATE
    nspool_pool.CLOSE_RATE = int(rate) if rate else _UNPACED
    try:
        yield
    finally:
        nspool_pool.CLOSE_RATE = old


def closer_backlog(pool: Pool) -> int:
    """Discarded sets the closer has not closed yet (``PoolStats`` does not
    say; a private attribute, read without the lock: a deque's length)."""
    return pool._closer.pending


def wait_until(what: str, done: Callable[[], bool], timeout: float = 30.0) -> float:
    """Poll ``done`` every 0.2 ms; return the ``perf_counter`` time it held."""
    deadline = time.perf_counter() + timeout
    while not done():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"bench.pool: {what} within {timeout} s")
        time.sleep(0.0002)
    return time.perf_counter()


def creation_latencies(pool: Pool, last: int) -> list[float]:
    """The pool's last ``last`` creation latencies in µs (at most
    ``LATENCY_WINDOW``; ``PoolStats`` has only percentiles: a private
    attribute)."""
    with pool._lock:
        latencies = list(pool._latencies)
    return [x * 1e6 for x in latencies[-last:]] if last > 0 else []


def wait_drained(pool: Pool) -> None:
    wait_until("closer drained", lambda: closer_backlog(pool) == 0)


def wait_warm_and_idle(pool: Pool) -> None:
    wait_until(
        "pool warm and closer idle",
        lambda: pool.stats().ready >= pool.warm and closer_backlog(pool) == 0,
    )


# -- (a), (b) sustained rates ---------------------------------------------------------


@dataclasses.dataclass
class Rates:
    loop: list[float] = dataclasses.field(default_factory=list)
    freed: list[float] = dataclasses.field(default_factory=list)
    backlog: list[int] = dataclasses.field(default_factory=list)  # closer's, at loop end
    misses: list[int] = dataclasses.field(default_factory=list)  # taker-created sets


def raw_variant(
    threads: int, sizes: Sizes, home_fd: int, out: Rates, *, lo_up: bool = False
) -> Callable[[int], list[float]]:
    per_thread = sizes.rate_requests // threads
    n = per_thread * threads

    def run(runs: int) -> list[float]:
        rates: list[float] = []
        for _ in range(runs):
            settle(sizes.settle_max)
            start = time.perf_counter()
            result = create_rate(threads, per_thread, home_fd, lo_up=lo_up)
            rates.append(n / result["wall"])
            gone = all_freed(timeout=30.0)
            if gone is not None:
                out.freed.append(n / (gone - start))
        out.loop += rates
        return rates

    return run


def pool_variant(
    creators: int, hook: Hook, interval: float, sizes: Sizes, workers: Workers, out: Rates
) -> Callable[[int], list[float]]:
    n = sizes.rate_requests

    def run(runs: int) -> list[float]:
        rates: list[float] = []
        for _ in range(runs):
            pool = Pool(
                Kind.NET, warm=sizes.warm, creators=creators, after_create=hook, workers=workers
            )
            with close_interval(interval), pool:
                wait_warm_and_idle(pool)
                settle(sizes.settle_max)
                misses = pool.stats().misses
                get, put = pool.get, pool.put
                start = time.perf_counter()
                for _ in range(n):
                    put(get())
                end = time.perf_counter()
                out.backlog.append(closer_backlog(pool))
                out.misses.append(pool.stats().misses - misses)
                rates.append(n / (end - start))
                # Until freed: the closer has closed every discarded set and
                # the kernel has freed them (the warm sets stay alive).
                wait_drained(pool)
                gone = all_freed(timeout=30.0)
                if gone is not None:
                    out.freed.append(n / (gone - start))
        out.loop += rates
        return rates

    return run


#: (b)'s pool variants: key, label, creators, after-create hook, closer interval.
POOL_VARIANTS: tuple[tuple[str, str, int, Hook, float], ...] = (
    ("c1 noop", "creators=1, no-op hook", 1, noop_hook, TRICKLE),
    ("c2 noop", "creators=2, no-op hook", 2, noop_hook, TRICKLE),
    ("c1 lo", "creators=1, lo up", 1, None, TRICKLE),
    ("c2 lo", "creators=2, lo up", 2, None, TRICKLE),
    # Not a configuration to ship: shows what the trickle costs at full tilt.
    ("c2 lo at once", "creators=2, lo up, close at once", 2, None, 0.0),
)


def bench_rates(sizes: Sizes, workers: Workers, console: Console) -> list[Row]:
    console.print("(a), (b) sustained fresh netns per request ...")
    raw_keys = ("raw1", "raw2", "raw1 lo", "raw2 lo")
    results = {key: Rates() for key in (*raw_keys, *(v[0] for v in POOL_VARIANTS))}
    home_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        variants = {
            "raw1": raw_variant(1, sizes, home_fd, results["raw1"]),
            "raw2": raw_variant(2, sizes, home_fd, results["raw2"]),
            "raw1 lo": raw_variant(1, sizes, home_fd, results["raw1 lo"], lo_up=True),
            "raw2 lo": raw_variant(2, sizes, home_fd, results["raw2 lo"], lo_up=True),
        }
        for key, _, creators, hook, interval in POOL_VARIANTS:
            variants[key] = pool_variant(creators, hook, interval, sizes, workers, results[key])
        interleave(variants, sizes.rate_rounds, sizes.rate_rounds)
    finally:
        os.close(home_fd)
    settle(sizes.settle_max)

    rows: list[Row] = []
    for what, attr in (("loop", "loop"), ("until freed", "freed")):
        ceilings: dict[bool, Row] = {}
        raws: dict[bool, dict[int, Row]] = {}
        for lo in (False, True):
            suffix = " lo" if lo else ""
            raw = {
                t: Row(
                    "a",
                    f"raw loop{', lo up' if lo else ''}, {t} thread{'s' if t > 1 else ''}: {what}",
                    "ops/s",
                    getattr(results[f"raw{t}{suffix}"], attr),
                    goal="expected: ~1.4-1.6k/s on 2 cores"
                    if (t, attr, lo) == (2, "freed", False)
                    else "",
                    extra={"requests": sizes.rate_requests},
                )
                for t in (1, 2)
                if getattr(results[f"raw{t}{suffix}"], attr)
            }
            if raw:
                # The ceiling is the faster raw loop.
                ceilings[lo] = max(raw.values(), key=lambda row: row.median)
                raws[lo] = raw
                rows += raw.values()
        if not ceilings:
            continue  # no `ip`: no "until freed" rows
        by_key: dict[str, Row] = {}
        for key, label, creators, hook, _ in POOL_VARIANTS:
            # Pools bringing lo up are held to the raw loop that does too.
            lo = hook is None
            ceiling, raw = ceilings[lo], raws[lo]
            res = results[key]
            samples: list[float] = getattr(res, attr)
            if not samples:
                continue
            extra: dict[str, object] = {
                "requests": sizes.rate_requests,
                "warm": sizes.warm,
                "misses": res.misses,
                "closer_backlog": res.backlog,
            }
            for t, raw_t in raw.items():
                extra[f"ratio_raw_{t}_thread"] = statistics.median(samples) / raw_t.median
            one = by_key.get(key.replace("c2", "c1"))
            if creators == 2 and one is not None:
                extra["ratio_creators_1"] = statistics.median(samples) / one.median
            by_key[key] = Row(
                "b",
                f"pool get+put, {label}: {what}",
                "ops/s",
                samples,
                baseline=ceiling.name,
                goal="goal >= 0.8x" if attr == "loop" else "",
                extra=extra,
            )
        rows += by_key.values()
    return rows


# -- (c) acquisition latency at a paced demand ------------------------------------------


def paced_gets(pool: Pool, period: float) -> Callable[[int], list[float]]:
    """A variant for ``interleave``: ``n`` requests, one every ``period``
    seconds; returns how long each ``get()`` took, in µs."""

    def run(n: int) -> list[float]:
        out: list[float] = []
        clock = time.perf_counter_ns
        start = time.perf_counter()
        for i in range(1, n + 1):
            t0 = clock()
            s = pool.get()
            out.append((clock() - t0) / 1e3)
            pool.put(s)
            delay = start + i * period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        return out

    return run


def bench_latency(sizes: Sizes, workers: Workers, console: Console) -> list[Row]:
    demand = 1 / sizes.period
    console.print(f"(c) get() latency at {demand:.0f} requests/s ...")
    warm = Pool(Kind.NET, warm=sizes.warm, workers=workers)
    cold = Pool(Kind.NET, warm=0, creators=1, workers=workers)
    with warm, cold:
        wait_warm_and_idle(warm)
        settle(sizes.settle_max)
        variants = {"cold": paced_gets(cold, sizes.period), "warm": paced_gets(warm, sizes.period)}
        with no_gc():
            interleave(variants, sizes.paced_requests // 10, sizes.rounds)  # warm-up
            samples = interleave(variants, sizes.paced_requests, sizes.rounds)
        warm_stats, cold_stats = warm.stats(), cold.stats()
    settle(sizes.settle_max)
    base = Row(
        "c",
        f"get() on the spot (warm=0), {demand:.0f}/s",
        "us",
        samples["cold"],
        goal="expected: ~0.5 ms kernel CPU",
        extra={"misses": cold_stats.misses, "hits": cold_stats.hits},
    )
    fast = Row(
        "c",
        f"get() from a warm pool ({sizes.warm}), {demand:.0f}/s",
        "us",
        samples["warm"],
        baseline=base.name,
        goal="goal: p99 < 0.1 ms",
        extra={"misses": warm_stats.misses, "hits": warm_stats.hits},
    )
    fast.extra["p99_ratio"] = fast.quantile(0.99) / base.quantile(0.99)
    return [base, fast]


# -- (d) a burst ---------------------------------------------------------------------


@dataclasses.dataclass
class Burst:
    back_to_warm: list[float] = dataclasses.field(default_factory=list)  # µs after put-back
    worst_get: list[float] = dataclasses.field(default_factory=list)  # µs
    p99_get: list[float] = dataclasses.field(default_factory=list)  # µs
    misses: list[int] = dataclasses.field(default_factory=list)  # in the window
    take: list[float] = dataclasses.field(default_factory=list)  # µs for all the gets
    worst_create: list[float] = dataclasses.field(default_factory=list)  # µs, incl. hook


def burst_variant(
    pool: Pool, interval: float, sizes: Sizes, out: Burst
) -> Callable[[int], list[float]]:
    def one() -> None:
        wait_warm_and_idle(pool)
        settle(sizes.settle_max)
        created = pool.stats().created
        t0 = time.perf_counter()
        taken = [pool.get() for _ in range(sizes.burst)]
        t_taken = time.perf_counter()
        for s in taken:
            pool.put(s)
        del taken
        t_put = time.perf_counter()
        misses = pool.stats().misses
        latencies: list[float] = []
        warm_at: float | None = None
        clock = time.perf_counter_ns
        i = 0
        while True:
            now = time.perf_counter()
            if warm_at is None and pool.stats().ready >= pool.warm:
                warm_at = now
            if now - t_put < sizes.window:
                g0 = clock()
                s = pool.get()
                latencies.append((clock() - g0) / 1e3)
                pool.put(s)
            elif warm_at is not None:
                break
            elif now - t_put > 30.0:
                raise TimeoutError("bench.pool: not warm again 30 s after the burst")
            i += 1
            delay = t_put + i * sizes.period - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        out.back_to_warm.append((warm_at - t_put) * 1e6)
        out.worst_get.append(max(latencies))
        out.p99_get.append(sorted(latencies)[int(0.99 * len(latencies))])
        out.misses.append(pool.stats().misses - misses)
        out.take.append((t_taken - t0) * 1e6)
        out.worst_create.append(max(creation_latencies(pool, pool.stats().created - created)))

    def run(bursts: int) -> list[float]:
        with close_interval(interval):
            for _ in range(bursts):
                one()
            wait_drained(pool)
        return []

    return run


def bench_burst(sizes: Sizes, workers: Workers, console: Console) -> list[Row]:
    console.print(f"(d) a burst of {sizes.burst} ...")
    results = {"at once": Burst(), "trickle": Burst()}
    with Pool(Kind.NET, warm=sizes.burst, workers=workers) as pool:
        variants = {
            name: burst_variant(pool, 0.0 if name == "at once" else TRICKLE, sizes, out)
            for name, out in results.items()
        }
        interleave(variants, sizes.burst_rounds, sizes.burst_rounds)
    settle(sizes.settle_max)
    rows: list[Row] = []
    ms = f"{TRICKLE:,.0f}/s"
    for label, attr, goal in (
        ("back to warm", "back_to_warm", ""),
        ("worst creation after it", "worst_create", "expected: stall up to ~150 ms"),
        (f"worst get(), next {sizes.window:g} s", "worst_get", ""),
    ):
        at_once, trickle = results["at once"], results["trickle"]
        base = Row(
            "d",
            f"burst {sizes.burst}, close at once: {label}",
            "us",
            getattr(at_once, attr),
            goal=goal,
            extra={"misses": at_once.misses, "take_us": at_once.take, "p99_get": at_once.p99_get},
        )
        rows.append(base)
        rows.append(
            Row(
                "d",
                f"burst {sizes.burst}, trickle {ms}: {label}",
                "us",
                getattr(trickle, attr),
                baseline=base.name,
                extra={
                    "misses": trickle.misses,
                    "take_us": trickle.take,
                    "p99_get": trickle.p99_get,
                },
            )
        )
    return rows


# -- report ------------------------------------------------------------------------------


def measure(sizes: Sizes, console: Console) -> list[Row]:
    rows: list[Row] = []
    workers = Workers()
    try:
        settle(sizes.settle_max)
        rows += bench_rates(sizes, workers, console)
        rows += bench_latency(sizes, workers, console)
        rows += bench_burst(sizes, workers, console)
    finally:
        workers.shutdown()
    return rows


#: The heading of this benchmark's table (and plot).
TITLE = "nspool Pool: fresh netns per request"


def main(argv: list[str] | None = None) -> int:
    return run_main(
        argv,
        name="pool",
        doc=__doc__,
        title=TITLE,
        quick=QUICK,
        full=FULL,
        measure=measure,
    )


if __name__ == "__main__":
    raise SystemExit(main())
