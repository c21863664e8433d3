"""A daemon's view of the pool: paced requests and parallel leases, in one run.

    python -m bench.pool_paced [--quick] [--out PATH]

(e) paced requests at 100, 400 and 800 a second, each binding 127.0.0.1 in
    a fresh netns and talking to itself (the demo's request): ``await
    pool.run(handle, n)`` from a ``Pool(Kind.NET, warm=64)`` waited warm,
    against the same request making its netns inside it (on a thread);
    latency from each request's scheduled arrival, p50 and p99, interleaved
    in rounds; pool misses counted. Lower is better.
(f) closed loop: 4 threads doing ``with pool.lease(): pass`` as fast as
    they can, against the raw 2-thread kernel loop (unshare, open, ``lo``
    up, setns home, close); sets a second, higher is better; misses counted.
(g) the stall: a probe thread times ``unshare(CLONE_NEWNET)`` every 10 ms
    while nothing else runs, and while the pool serves 400 and 800 requests
    a second (its creations and frees); p99, lower is better.

Needs root. Prints the table and writes ``bench/results/pool_paced.json``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time

import anyio
import anyio.to_thread
from rich.console import Console

from nspool import Kind, Pool, Workers
from nspool._measure import Result, serve, settle
from nspool.demo import fresh_netns_request, handle

from ._common import Row, run_main
from .kernel_costs import CLONE_NEWNET, c_setns, c_unshare, check, create_rate

#: (e)'s request rates.
RATES = (100, 400, 800)
#: The pool's size in (e) and (g), as the demo's.
WARM = 64
#: Requests in flight at most, as the demo's.
CONCURRENCY = 64
#: Seconds between two probes in (g).
PROBE_PERIOD = 0.01


@dataclasses.dataclass(frozen=True)
class Sizes:
    requests: int  # (e): requests per variant, rate and round
    rounds: int  # (e): interleaved rounds
    leases: int  # (f): leases per run (over 4 threads)
    lease_rounds: int  # (f): runs per variant
    settle_max: float


QUICK = Sizes(requests=200, rounds=2, leases=800, lease_rounds=1, settle_max=1.5)
FULL = Sizes(requests=800, rounds=3, leases=2000, lease_rounds=3, settle_max=4.0)


class _Probe:
    """A thread that times one ``unshare(CLONE_NEWNET)`` (and frees the netns
    by going home) every :data:`PROBE_PERIOD` while :attr:`on`."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._thread = threading.Thread(target=self._run, name="bench-probe", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(PROBE_PERIOD):
            t0 = time.perf_counter()
            check(c_unshare(CLONE_NEWNET), "unshare")
            self.samples.append((time.perf_counter() - t0) * 1e6)
            check(c_setns(self._home, CLONE_NEWNET), "setns home")

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join()
        os.close(self._home)
        return self.samples


async def _paced(sizes: Sizes, console: Console) -> list[Row]:
    rows: list[Row] = []
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def fresh(number: int) -> int | None:
        return await anyio.to_thread.run_sync(fresh_netns_request, number, limiter=limiter)

    idle = _Probe()
    await anyio.sleep(sizes.requests / 400)
    idle_samples = idle.stop()
    probe_base = Row("g", "unshare(net) alone", "us", idle_samples)
    rows.append(probe_base)
    with Workers(max_workers=CONCURRENCY) as workers:
        async with Pool(Kind.NET, warm=WARM, workers=workers) as pool:
            await pool.await_ready()

            async def pooled(number: int) -> int | None:
                return await pool.run(handle, number)

            for rate in RATES:
                console.print(f"(e) {rate} requests/s ...")
                base, mine = Result("netns in the request", 0), Result("pool.run", 0)
                misses = 0
                probe_samples: list[float] = []
                number = 0
                for round_ in range(sizes.rounds):
                    order = [(base, fresh), (mine, pooled)]
                    for result, call in order[round_ % 2 :] + order[: round_ % 2]:
                        await anyio.to_thread.run_sync(settle, sizes.settle_max)
                        await pool.await_ready()
                        before = pool.stats().misses
                        probe = _Probe() if call is pooled else None
                        numbers = range(number, number + sizes.requests)
                        number += sizes.requests
                        await serve(call, numbers, result, rate=rate, concurrency=CONCURRENCY)
                        if probe is not None:
                            probe_samples += probe.stop()
                            misses += pool.stats().misses - before
                lat = {
                    name: [x * 1e6 for x in r.latencies] for name, r in (("b", base), ("m", mine))
                }
                b = Row("e", f"netns in the request, {rate}/s", "us", lat["b"])
                m = Row(
                    "e",
                    f"pool.run, {rate}/s",
                    "us",
                    lat["m"],
                    baseline=b.name,
                    extra={"misses": misses, "failures": mine.failures + base.failures},
                )
                m.extra["p99_ratio"] = m.quantile(0.99) / b.quantile(0.99)
                m.extra["p50_ratio"] = m.quantile(0.50) / b.quantile(0.50)
                rows += [b, m]
                if rate in (400, 800):
                    rows.append(
                        Row(
                            "g",
                            f"unshare(net) while the pool serves {rate}/s",
                            "us",
                            probe_samples,
                            baseline=probe_base.name,
                            extra={"p99_ratio": _p99(probe_samples) / _p99(idle_samples)},
                        )
                    )
    return rows


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else math.nan


def _leases(sizes: Sizes, console: Console) -> list[Row]:
    console.print("(f) leases from 4 threads against the raw kernel loop ...")
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    raw: list[float] = []
    pooled: list[float] = []
    misses: list[int] = []
    each = sizes.leases // 4
    try:
        for _ in range(sizes.lease_rounds):
            settle(sizes.settle_max)
            result = create_rate(2, sizes.leases // 2, home, lo_up=True)
            raw.append(sizes.leases / result["wall"])
            settle(sizes.settle_max)
            with Pool(Kind.NET, warm=16) as pool:
                pool.wait_ready()
                settle(sizes.settle_max)
                before = pool.stats().misses
                threads = [
                    threading.Thread(target=_take_leases, args=(pool, each)) for _ in range(4)
                ]
                start = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                pooled.append(each * 4 / (time.perf_counter() - start))
                misses.append(pool.stats().misses - before)
    finally:
        os.close(home)
    base = Row("f", "raw loop, lo up, 2 threads", "ops/s", raw)
    return [
        base,
        Row(
            "f",
            "pool leases, 4 threads",
            "ops/s",
            pooled,
            baseline=base.name,
            goal="goal >= 0.8x",
            extra={"misses": misses},
        ),
    ]


def _take_leases(pool: Pool, count: int) -> None:
    for _ in range(count):
        with pool.lease():
            pass


def measure(sizes: Sizes, console: Console) -> list[Row]:
    rows = anyio.run(_paced, sizes, console)
    rows += _leases(sizes, console)
    return rows


TITLE = "nspool Pool: paced requests, parallel leases, the creation stall"


def main(argv: list[str] | None = None) -> int:
    return run_main(
        argv,
        name="pool_paced",
        doc=__doc__,
        title=TITLE,
        quick=QUICK,
        full=FULL,
        measure=measure,
    )


if __name__ == "__main__":
    raise SystemExit(main())
