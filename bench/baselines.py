"""nspool against what users reach for today (pyroute2, ``ip netns``, ``unshare``), in one run.

    python -m bench.baselines [--quick] [--out PATH]

Every comparison runs its variants interleaved in rounds (A B C A B C ...),
each op timed alone; ratios are against a baseline of the same run, and
rows marked "faster" also show the speed-up (baseline's median / theirs):

(a) a call in a fresh netns. The baseline is pyroute2 ``NetNS(NAME)`` on a
    new name (its default ``O_CREAT``: a forked helper makes the named netns,
    another opens a netlink socket in it and hands it back), one
    ``get_links()``, then ``remove()``. Against it, ``await pool.run(fn)``
    with a fresh netns per call from a warm ``Pool(Kind.NET)``: ``fn`` a
    no-op (the issue's figure, goal >= 20x faster), ``socket.if_nameindex``
    (one netlink dump of the links, by glibc), and pyroute2's own
    ``IPRoute()`` + ``get_links()`` made inside the netns (the same call and
    the same parsing: the most apples-to-apples, and mostly pyroute2's own
    cost); plus ``NetNS`` opened on an existing named netns, for what
    creating the netns adds. Pool calls come in batches of ``batch``, back to
    back, each batch from a warm pool (a demand below the refill rate); the
    pool's creators refill it while the batch runs, on the same CPUs;
(b) a command per call: ``ip netns exec NAME true``, ``nsenter
    --net=/run/netns/NAME true``, ``python -m nspool exec --net NAME -- true``
    (a whole Python start-up: nspool's command line, not its library) and
    ``unshare -n true`` (``subprocess.run``) against ``await s.run_process(["true"])`` in the same
    named netns, a fresh set from the pool running ``true``, and
    ``await pool.run(noop)`` (no process at all);
(c) naming a new netns and removing the name: pyroute2 ``netns.create`` +
    ``netns.remove`` against ``ip netns add`` + ``ip netns del``,
    ``NamespaceSet.unshare(Kind.NET).persist(NAME)`` + ``unpersist(NAME)``,
    and a warm pool's set persisted and unpersisted.

Each chunk of a variant starts after a garbage collection (pyroute2 leaves
cycles, and a process grown by them forks more slowly) on quiet CPUs (the
kernel has freed the netns the previous chunk dropped), so that no variant
pays for another. Prints a table of medians and ratios; writes
``bench/results/baselines.json``.
Needs root, pyroute2 (the ``bench`` extra), ``ip`` and ``unshare``. Every
netns it names (``nspbPIDxN``) is removed before it returns, on error too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import os
import socket
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator

from pyroute2 import IPRoute, NetNS  # type: ignore[import-untyped]
from pyroute2 import netns as pyroute2_netns
from rich.console import Console

from nspool import Kind, NamespaceSet, Pool, Workers
from nspool._measure import settle
from nspool.nsset import NETNS_RUN_DIR

from ._common import Row, interleave, no_gc, run_main
from .pool import wait_warm_and_idle


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much to measure; ``--quick`` and the default run differ only here."""

    rounds: int  # interleaved rounds per comparison
    netns_ops: int  # per variant, (a)
    process_ops: int  # per variant, (b)
    create_ops: int  # per variant, (c)
    warmup: int  # untimed ops per variant before each comparison
    warm: int  # the pool's warm count
    batch: int  # pool calls back to back from a warm pool (at most warm)
    settle_max: float  # seconds to wait for the CPUs to go quiet between comparisons


QUICK = Sizes(
    rounds=3,
    netns_ops=90,
    process_ops=90,
    create_ops=90,
    warmup=3,
    warm=32,
    batch=16,
    settle_max=0.3,
)
FULL = Sizes(
    rounds=8,
    netns_ops=1000,
    process_ops=800,
    create_ops=600,
    warmup=8,
    warm=32,
    batch=16,
    settle_max=1.0,
)

Variant = Callable[[int], list[float]]


def noop() -> None:
    return None


def iproute_links() -> int:
    """pyroute2's link dump, made where it is called (in the worker's netns)."""
    with IPRoute() as ipr:
        return len(ipr.get_links())


# -- names ----------------------------------------------------------------------------


class Names:
    """Netns names for this run, ``nspbPIDxN``; :meth:`remove_all` removes
    every one still in ``/run/netns``, however it got there."""

    def __init__(self) -> None:
        self._prefix = f"nspb{os.getpid() % 100000}x"
        self._counter = itertools.count()
        self.made: list[str] = []

    def new(self) -> str:
        name = f"{self._prefix}{next(self._counter)}"
        self.made.append(name)
        return name

    def done(self, name: str) -> None:
        """``name`` was removed by the variant itself."""
        self.made.remove(name)

    def remove_all(self) -> list[str]:
        """Remove the names left over (by an error); return them."""
        left = [n for n in self.made if os.path.lexists(os.path.join(NETNS_RUN_DIR, n))]
        for name in left:
            with contextlib.suppress(OSError):
                NamespaceSet.unpersist(name)
        self.made.clear()
        return left


@contextlib.contextmanager
def names_removed(console: Console) -> Iterator[Names]:
    names = Names()
    try:
        yield names
    finally:
        left = names.remove_all()
        if left:
            console.print(f"removed netns left over: {', '.join(left)}", markup=False)


@contextlib.contextmanager
def forks_allowed() -> Iterator[None]:
    """pyroute2 forks helpers from this threaded process; Python 3.12+ warns
    about that (a DeprecationWarning), which is not what is measured."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*fork.*")
        yield


# -- timing helpers -------------------------------------------------------------------


def timed_each(call: Callable[[], object]) -> Variant:
    """A variant for ``interleave``: ``n`` calls, each timed, in µs."""

    def run(n: int) -> list[float]:
        out: list[float] = []
        clock = time.perf_counter_ns
        with forks_allowed():
            for _ in range(n):
                t0 = clock()
                call()
                out.append((clock() - t0) / 1e3)
        return out

    return run


def batches(n: int, pool: Pool | None, size: int) -> Iterator[int]:
    """Split ``n`` ops into batches of at most ``size``, each started from a
    warm pool with its closer idle (untimed); one batch without a pool."""
    if pool is None:
        yield n
        return
    left = n
    while left > 0:
        wait_warm_and_idle(pool)
        yield min(size, left)
        left -= size


def sync_calls(call: Callable[[], object], pool: Pool | None, size: int) -> Variant:
    """A variant timing each ``call()``, in batches from a warm ``pool``."""

    def run(n: int) -> list[float]:
        out: list[float] = []
        clock = time.perf_counter_ns
        for k in batches(n, pool, size):
            for _ in range(k):
                t0 = clock()
                call()
                out.append((clock() - t0) / 1e3)
        return out

    return run


def async_calls(
    call: Callable[[], Awaitable[object]], pool: Pool | None = None, size: int = 0
) -> Variant:
    """A variant timing each ``await call()`` in a fresh asyncio loop per
    chunk, in batches from a warm ``pool``."""

    def run(n: int) -> list[float]:
        async def main() -> list[float]:
            out: list[float] = []
            clock = time.perf_counter_ns
            for k in batches(n, pool, size):
                for _ in range(k):
                    t0 = clock()
                    await call()
                    out.append((clock() - t0) / 1e3)
            return out

        return asyncio.run(main())

    return run


def measure_variants(
    variants: dict[str, Variant], total: int, sizes: Sizes
) -> dict[str, list[float]]:
    """A warm-up round, then ``total`` ops per variant in ``sizes.rounds``;
    each chunk starts once the CPUs are quiet (the kernel's deferred cleanup
    of the netns the previous chunk dropped is done), so that no variant
    pays for another's, and after a garbage collection: pyroute2 leaves
    cycles behind, and a process grown by them forks more slowly."""

    def quiet(variant: Variant) -> Variant:
        def run(n: int) -> list[float]:
            gc.collect()
            settle(sizes.settle_max)
            return variant(n)

        return run

    alone = {name: quiet(variant) for name, variant in variants.items()}
    with no_gc():
        interleave(alone, sizes.warmup, 1)
        return interleave(alone, total, sizes.rounds)


def speedup(base: list[float], other: list[float]) -> float:
    """How many times faster ``other`` is than ``base`` (ratio of medians)."""
    return statistics.median(base) / statistics.median(other)


def samples_ratio(these: list[float], base: list[float]) -> float:
    """Median of ``these`` over median of ``base``."""
    return statistics.median(these) / statistics.median(base)


def counted(pool: Pool, variant: Variant, into: dict[str, int]) -> Variant:
    """``variant``, adding the pool's hits and misses during it to ``into``."""

    def run(n: int) -> list[float]:
        before = pool.stats()
        try:
            return variant(n)
        finally:
            after = pool.stats()
            into["hits"] = into.get("hits", 0) + after.hits - before.hits
            into["misses"] = into.get("misses", 0) + after.misses - before.misses

    return run


# -- (a) a call in a fresh netns --------------------------------------------------------


def bench_fresh_call(
    pool: Pool, names: Names, existing: str, sizes: Sizes, console: Console
) -> list[Row]:
    console.print("(a) a call in a fresh netns: pyroute2 NetNS against pool.run ...")

    def netns_fresh() -> None:
        name = names.new()
        ns = NetNS(name)  # flags=O_CREAT: makes the named netns
        try:
            ns.get_links()
        finally:
            ns.remove()  # close, then remove the name
        names.done(name)

    def netns_existing() -> None:
        with NetNS(existing) as ns:
            ns.get_links()

    counts: dict[str, dict[str, int]] = {k: {} for k in ("noop", "nameindex", "iproute")}

    def pooled(key: str, fn: Callable[[], object]) -> Variant:
        return counted(pool, async_calls(lambda: pool.run(fn), pool, sizes.batch), counts[key])

    variants = {
        "fresh": timed_each(netns_fresh),
        "existing": timed_each(netns_existing),
        "noop": pooled("noop", noop),
        "nameindex": pooled("nameindex", socket.if_nameindex),
        "iproute": pooled("iproute", iproute_links),
    }
    samples = measure_variants(variants, sizes.netns_ops, sizes)
    base = Row(
        "a",
        "pyroute2 NetNS(new name) + get_links() + remove()",
        "us",
        samples["fresh"],
        goal="expected: 8 ms to open a NetNS, 0.8 ms a call",
    )
    rows = [
        base,
        Row(
            "a",
            "pyroute2 NetNS(existing name) + get_links() + close()",
            "us",
            samples["existing"],
            base.name,
        ),
    ]
    for key, label, goal in (
        ("noop", "await pool.run(noop), fresh netns per call", "goal >= 20x faster"),
        ("nameindex", "await pool.run(socket.if_nameindex): links by glibc", ""),
        ("iproute", "await pool.run(IPRoute().get_links()): same pyroute2 call", ""),
    ):
        rows.append(
            Row(
                "a",
                label,
                "us",
                samples[key],
                base.name,
                goal=goal,
                faster=True,
                extra={
                    "speedup_vs_existing_netns": speedup(samples["existing"], samples[key]),
                    "warm": sizes.warm,
                    "batch": sizes.batch,
                    **counts[key],
                },
            )
        )
    return rows


# -- (b) a command per call -----------------------------------------------------------------


def bench_commands(
    pool: Pool, held: NamespaceSet, existing: str, sizes: Sizes, console: Console
) -> list[Row]:
    console.print("(b) a command per call: ip netns exec, unshare -n, run_process ...")

    def shell_out(*argv: str) -> Callable[[], object]:
        return lambda: subprocess.run(argv, check=True, capture_output=True)

    async def lease_true() -> None:
        async with pool.lease() as s:
            await s.run_process(["true"])

    counts: dict[str, dict[str, int]] = {"lease": {}, "noop": {}}
    variants = {
        "ip exec": timed_each(shell_out("ip", "netns", "exec", existing, "true")),
        "unshare": timed_each(shell_out("unshare", "-n", "true")),
        "nsenter": timed_each(shell_out("nsenter", f"--net={NETNS_RUN_DIR}/{existing}", "true")),
        "nspool exec": timed_each(
            shell_out(sys.executable, "-m", "nspool", "exec", "--net", existing, "--", "true")
        ),
        "run_process": async_calls(lambda: held.run_process(["true"])),
        "lease": counted(pool, async_calls(lease_true, pool, sizes.batch), counts["lease"]),
        "noop": counted(
            pool, async_calls(lambda: pool.run(noop), pool, sizes.batch), counts["noop"]
        ),
    }
    samples = measure_variants(variants, sizes.process_ops, sizes)
    base = Row(
        "b",
        "subprocess.run(ip netns exec NAME true)",
        "us",
        samples["ip exec"],
        goal="expected: about 4 ms a call",
    )
    unshare = Row(
        "b",
        "subprocess.run(unshare -n true): fresh netns",
        "us",
        samples["unshare"],
        base.name,
    )
    nsenter = Row(
        "b",
        "subprocess.run(nsenter --net=/run/netns/NAME true)",
        "us",
        samples["nsenter"],
        base.name,
    )
    nspool_exec = Row(
        "b",
        "subprocess.run(python -m nspool exec --net NAME -- true)",
        "us",
        samples["nspool exec"],
        base.name,
        extra={"vs_nsenter": samples_ratio(samples["nspool exec"], samples["nsenter"])},
    )
    vs_exec = {"speedup_vs_ip_netns_exec": speedup(samples["ip exec"], samples["lease"])}
    return [
        base,
        nsenter,
        nspool_exec,
        unshare,
        Row(
            "b",
            'await s.run_process(["true"]) in that named netns',
            "us",
            samples["run_process"],
            base.name,
            faster=True,
        ),
        Row(
            "b",
            'pool.lease() + s.run_process(["true"]): fresh netns',
            "us",
            samples["lease"],
            unshare.name,
            faster=True,
            extra={**vs_exec, "warm": sizes.warm, "batch": sizes.batch, **counts["lease"]},
        ),
        Row(
            "b",
            "await pool.run(noop), fresh netns, no process",
            "us",
            samples["noop"],
            base.name,
            faster=True,
            extra={"warm": sizes.warm, "batch": sizes.batch, **counts["noop"]},
        ),
    ]


# -- (c) naming a new netns ----------------------------------------------------------------


def bench_naming(pool: Pool, names: Names, sizes: Sizes, console: Console) -> list[Row]:
    console.print("(c) naming a new netns and removing the name ...")

    def pyroute2_create() -> None:
        name = names.new()
        pyroute2_netns.create(name)
        pyroute2_netns.remove(name)
        names.done(name)

    def ip_add_del() -> None:
        name = names.new()
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "del", name], check=True, capture_output=True)
        names.done(name)

    def nspool_persist() -> None:
        name = names.new()
        with NamespaceSet.unshare(Kind.NET) as s:
            s.persist(name)
        NamespaceSet.unpersist(name)
        names.done(name)

    def pool_persist() -> None:
        name = names.new()
        s = pool.get()
        try:
            s.persist(name)
            NamespaceSet.unpersist(name)
        finally:
            pool.put(s)
        names.done(name)

    counts: dict[str, int] = {}
    variants = {
        "pyroute2": timed_each(pyroute2_create),
        "ip": timed_each(ip_add_del),
        "nspool": sync_calls(nspool_persist, None, 0),
        "pool": counted(pool, sync_calls(pool_persist, pool, sizes.batch), counts),
    }
    samples = measure_variants(variants, sizes.create_ops, sizes)
    base = Row(
        "c",
        "pyroute2 netns.create(NAME) + netns.remove(NAME)",
        "us",
        samples["pyroute2"],
        goal="expected: 7 ms to create a named netns",
    )
    return [
        base,
        Row("c", "ip netns add NAME + ip netns del NAME", "us", samples["ip"], base.name),
        Row(
            "c",
            "NamespaceSet.unshare(NET).persist(NAME) + unpersist",
            "us",
            samples["nspool"],
            base.name,
            faster=True,
        ),
        Row(
            "c",
            "pool.get().persist(NAME) + unpersist + put",
            "us",
            samples["pool"],
            base.name,
            faster=True,
            extra={"warm": sizes.warm, "batch": sizes.batch, **counts},
        ),
    ]


# -- report -------------------------------------------------------------------------------


def measure(sizes: Sizes, console: Console) -> list[Row]:
    if not 0 < sizes.batch <= sizes.warm:
        raise ValueError("bench.baselines: batch must be between 1 and warm")
    rows: list[Row] = []
    workers = Workers()
    try:
        with (
            names_removed(console) as names,
            Pool(Kind.NET, warm=sizes.warm, workers=workers) as pool,
        ):
            existing = names.new()
            with NamespaceSet.unshare(Kind.NET) as held:
                held.persist(existing)
                try:
                    settle(sizes.settle_max)
                    rows += bench_fresh_call(pool, names, existing, sizes, console)
                    settle(sizes.settle_max)
                    rows += bench_commands(pool, held, existing, sizes, console)
                finally:
                    NamespaceSet.unpersist(existing)
                    names.done(existing)
            settle(sizes.settle_max)
            rows += bench_naming(pool, names, sizes, console)
    finally:
        workers.shutdown()
    return rows


#: The heading of this benchmark's table (and plot).
TITLE = "nspool against pyroute2, ip netns exec and unshare"


def main(argv: list[str] | None = None) -> int:
    return run_main(
        argv,
        name="baselines",
        doc=__doc__,
        title=TITLE,
        quick=QUICK,
        full=FULL,
        measure=measure,
    )


if __name__ == "__main__":
    raise SystemExit(main())
