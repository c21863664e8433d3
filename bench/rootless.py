"""What rootless mode costs: the same calls in a process that can send its
worker threads home, and in one that entered its own user namespace first.

    python -m bench.rootless [--quick] [--out PATH]

After ``nspool.enter_user_namespace()`` the process's home namespaces belong
to the initial user namespace, so a worker that ran a call in a set cannot
``setns`` back: it waits in its executor's *limbo* (empty namespaces of its
own) and serves only sets that hold the kinds it left; pool creators do the
same. Each mode
runs in a child process of its own (rootless mode is process-wide and
possible only while single-threaded), alternating in rounds, both as root:

(a) ``s.run_sync(noop)`` in one netns, each call timed;
(b) ``pool.run_sync(noop)``, a fresh netns per call from a warm
    ``Pool(Kind.NET)``, in batches from a refilled pool;
(c) ``await s.run(noop)`` in one netns (asyncio), one at a time.

Prints a table of medians and ratios (rootless against home, same run);
writes ``bench/results/rootless.json``. Needs root.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Callable

from rich.console import Console

from ._common import Row, run_main

MODES = ("home", "rootless")


@dataclasses.dataclass(frozen=True)
class Sizes:
    rounds: int  # children per mode
    calls: int  # timed calls per workload in each child
    batch: int  # pool calls back to back before waiting for the refill
    warm: int


QUICK = Sizes(rounds=2, calls=300, batch=8, warm=16)
FULL = Sizes(rounds=6, calls=2000, batch=8, warm=16)

WORKLOADS = {
    "a": "s.run_sync(noop) in one netns",
    "b": "pool.run_sync(noop), a fresh netns per call",
    "c": "await s.run(noop) in one netns (asyncio)",
}


def noop() -> None:
    return None


def child(mode: str, calls: int, batch: int, warm: int) -> dict[str, list[float]]:
    """Measure every workload in this process (a child) in ``mode``; per
    call, in microseconds."""
    import nspool

    if mode == "rootless":
        nspool.enter_user_namespace()
    from nspool import Kind, NamespaceSet, Pool

    clock = time.perf_counter_ns
    out: dict[str, list[float]] = {key: [] for key in WORKLOADS}

    def timed(call: Callable[[], object], into: list[float]) -> None:
        t0 = clock()
        call()
        into.append((clock() - t0) / 1e3)

    with NamespaceSet.unshare(Kind.NET) as s:
        for _ in range(calls // 10):  # warm-up: threads started, caches filled
            s.run_sync(noop)
        for _ in range(calls):
            timed(lambda: s.run_sync(noop), out["a"])

        async def one_at_a_time() -> None:
            for _ in range(calls):
                t0 = clock()
                await s.run(noop)
                out["c"].append((clock() - t0) / 1e3)

        asyncio.run(one_at_a_time())

    with Pool(Kind.NET, warm=warm) as pool:
        done = 0
        while done < calls:
            deadline = time.monotonic() + 5
            while pool.stats().ready < warm and time.monotonic() < deadline:
                time.sleep(0.002)
            for _ in range(min(batch, calls - done)):
                timed(lambda: pool.run_sync(noop), out["b"])
                done += 1
    nspool.default_workers().shutdown()
    return out


def run_child(mode: str, sizes: Sizes) -> dict[str, list[float]]:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.rootless",
            "--child",
            mode,
            str(sizes.calls),
            str(sizes.batch),
            str(sizes.warm),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    samples: dict[str, list[float]] = json.loads(done.stdout.splitlines()[-1])
    return samples


def measure(sizes: Sizes, console: Console) -> list[Row]:
    samples: dict[str, dict[str, list[float]]] = {m: {k: [] for k in WORKLOADS} for m in MODES}
    for round_ in range(sizes.rounds):
        order = MODES if round_ % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            console.print(f"round {round_ + 1}/{sizes.rounds}: {mode} ...")
            for key, values in run_child(mode, sizes).items():
                samples[mode][key] += values
    rows: list[Row] = []
    for key, label in WORKLOADS.items():
        base = Row(key, f"{label}, home (workers go back)", "us", samples["home"][key])
        rows += [
            base,
            Row(
                key,
                f"{label}, rootless (workers wait in limbo)",
                "us",
                samples["rootless"][key],
                base.name,
            ),
        ]
    return rows


TITLE = "nspool in rootless mode against a process whose workers can go home"


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["--child"]:
        mode, calls, batch, warm = argv[1], int(argv[2]), int(argv[3]), int(argv[4])
        print(json.dumps(child(mode, calls, batch, warm)))
        return 0
    return run_main(
        argv,
        name="rootless",
        doc=__doc__,
        title=TITLE,
        quick=QUICK,
        full=FULL,
        measure=measure,
    )


if __name__ == "__main__":
    raise SystemExit(main())
