"""The costs nspool is built on (the kernel's, and its own), measured side by side in one run.

    python -m bench.kernel_costs [--quick] [--out PATH]

Each comparison measures a baseline and the alternative in the same run,
interleaved in rounds so that drift (CPU frequency, the kernel's deferred
netns cleanup, other load) falls on both alike:

(a) creating + closing a fresh netns: raw ctypes ``unshare(CLONE_NEWNET)`` on
    a throwaway thread vs ``NamespaceSet.unshare(Kind.NET)`` + ``close()``;
    and the sustained raw create+destroy rate on 1 and 2 threads, over the
    loop alone and until the kernel has freed every netns it dropped (seen
    by a veth witness in one more netns, dropped last: ``ip`` is needed);
(b) ``setns`` into a netns and back on one thread: raw ctypes vs
    ``nspool._sys.setns`` with every backend this Python has;
(c) joining net, uts and ipc of a child process and going back: one pidfd
    ``setns`` each way vs one ``setns`` per kind each way (raw ctypes both);
(d) a thread round trip of a no-op: a dedicated thread fed by
    ``queue.SimpleQueue`` vs ``ThreadPoolExecutor.submit(...).result()``;
(e) the kernel memory of a live netns;
(f) creating a set with a new pid namespace, whose init is the compiled
    helper's or a Python interpreter, against a netns: until the init waits
    on its stdin (``NamespaceSet.unshare`` returns before that), and with a
    private ``/proc`` (pid+mnt: ``unshare`` waits for the init's mount); and
    each init's RSS (``VmRSS``). The compiled rows are left out where it was
    not built (``nspool._native.REASON``).

Prints a table of medians and ratios and writes JSON to
``bench/results/kernel_costs.json``. Needs root. Every namespace, thread and
process it makes is gone when it returns; a netns is freed by the kernel
asynchronously, so the run waits for the CPUs to go quiet between phases.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import dataclasses
import os
import queue
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from rich.console import Console

from nspool import Kind, NamespaceSet, _native, _sys
from nspool._measure import settle
from nspool.net import loopback_up

from ._common import (
    Row,
    interleave,
    no_gc,
    on_thread,
    run_main,
)

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000


# The raw baseline: what a user writes by hand, with its own libc handle.
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
c_setns = _libc.setns
c_setns.argtypes = (ctypes.c_int, ctypes.c_int)
c_setns.restype = ctypes.c_int
c_unshare = _libc.unshare
c_unshare.argtypes = (ctypes.c_int,)
c_unshare.restype = ctypes.c_int


def check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much to measure; ``--quick`` and the default run differ only here."""

    rounds: int  # interleaved rounds per comparison
    create_ops: int  # per variant, for (a) per-op
    rate_ops: int  # per thread, per round, for (a) sustained
    rate_rounds: int
    setns_ops: int  # per variant, for (b) and (c)
    hop_ops: int  # per variant, for (d)
    settle_max: float  # seconds to wait for the CPUs to go quiet
    memory_sets: int  # netns held at once for (e)
    init_ops: int  # per variant, for (f)


QUICK = Sizes(
    rounds=4,
    create_ops=300,
    rate_ops=800,
    rate_rounds=1,
    setns_ops=10000,
    hop_ops=5000,
    settle_max=1.5,
    memory_sets=200,
    init_ops=40,
)
FULL = Sizes(
    rounds=10,
    create_ops=1500,
    rate_ops=3000,
    rate_rounds=3,
    setns_ops=40000,
    hop_ops=20000,
    settle_max=4.0,
    memory_sets=500,
    init_ops=200,
)


# -- helpers -------------------------------------------------------------------


# -- (a) creating a netns ------------------------------------------------------


def raw_create_close(n: int) -> list[float]:
    """Per op: a throwaway thread unshares a netns and opens it; the caller
    joins the thread and closes the fd (the netns is then freed, later)."""
    out: list[float] = []
    for _ in range(n):
        box: list[int] = []

        def run(box: list[int] = box) -> None:
            if c_unshare(CLONE_NEWNET) == 0:
                box.append(os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC))

        t0 = time.perf_counter_ns()
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        if not box:
            raise OSError("raw unshare(CLONE_NEWNET) failed on the throwaway thread")
        os.close(box[0])
        out.append((time.perf_counter_ns() - t0) / 1e3)
    return out


def nspool_create_close(n: int) -> list[float]:
    out: list[float] = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        NamespaceSet.unshare(Kind.NET).close()
        out.append((time.perf_counter_ns() - t0) / 1e3)
    return out


def create_rate(
    threads: int, per_thread: int, home_fd: int, *, lo_up: bool = False
) -> dict[str, float]:
    """``threads`` threads each create+destroy ``per_thread`` netns: unshare,
    open the new one (and bring its ``lo`` up, with ``lo_up``), setns back
    home, close it. Returns the loop's wall time from the common start to the
    last thread's end, and that end."""
    barrier = threading.Barrier(threads + 1)
    ends: list[float] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            for _ in range(per_thread):
                check(c_unshare(CLONE_NEWNET), "unshare")
                fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    if lo_up:
                        loopback_up()
                    check(c_setns(home_fd, CLONE_NEWNET), "setns home")
                finally:
                    os.close(fd)
        except BaseException as exc:
            errors.append(exc)
        ends.append(time.perf_counter())

    workers = [threading.Thread(target=run, name=f"bench-rate-{i}") for i in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    start = time.perf_counter()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return {"wall": max(ends) - start, "end": max(ends)}


def all_freed(timeout: float) -> float | None:
    """Drop one more netns, holding one end of a veth pair, after all those
    dropped so far, and wait until the kernel deletes the pair's outside end.
    The kernel frees dropped netns in order (its cleanup work takes the whole
    queue at once), so by then every earlier one is gone. Returns the
    ``perf_counter`` time it saw that, or ``None`` without ``ip`` or on
    timeout (the pair is then deleted by hand)."""
    if shutil.which("ip") is None:
        return None
    outside, inside = f"nspbo{os.getpid() % 100000}", f"nspbi{os.getpid() % 100000}"

    def make() -> int:
        check(c_unshare(CLONE_NEWNET), "unshare")
        return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    fd = on_thread(make, name="bench-witness")
    try:
        netns = f"/proc/{os.getpid()}/fd/{fd}"
        cmd = ["ip", "link", "add", outside, "type", "veth", "peer", "name", inside]
        subprocess.run([*cmd, "netns", netns], check=True, capture_output=True)
    finally:
        os.close(fd)
    deadline = time.perf_counter() + timeout
    while os.path.exists(f"/sys/class/net/{outside}"):
        if time.perf_counter() > deadline:
            subprocess.run(["ip", "link", "del", outside], check=False, capture_output=True)
            return None
        time.sleep(0.001)
    return time.perf_counter()


def bench_create(sizes: Sizes, console: Console) -> list[Row]:
    console.print("(a) creating a netns ...")
    samples = interleave(
        {"raw": raw_create_close, "nspool": nspool_create_close},
        sizes.create_ops,
        sizes.rounds,
    )
    raw = Row(
        "a",
        "create+close netns: raw ctypes, throwaway thread",
        "us",
        samples["raw"],
        goal="expected: ~0.5 ms kernel CPU",
    )
    ns = Row(
        "a",
        "create+close netns: NamespaceSet.unshare + close",
        "us",
        samples["nspool"],
        baseline=raw.name,
    )
    settle(sizes.settle_max)

    loop: dict[int, list[float]] = {1: [], 2: []}
    freed: dict[int, list[float]] = {1: [], 2: []}
    drains: dict[int, list[float]] = {1: [], 2: []}
    home_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for _ in range(sizes.rate_rounds):
            for threads in (1, 2):
                ops = threads * sizes.rate_ops
                result = create_rate(threads, sizes.rate_ops, home_fd)
                loop[threads].append(ops / result["wall"])
                gone = all_freed(timeout=30.0)
                if gone is not None:
                    drains[threads].append(gone - result["end"])
                    freed[threads].append(ops / (gone - result["end"] + result["wall"]))
                settle(sizes.settle_max)
    finally:
        os.close(home_fd)
    rows = [raw, ns]
    for what, rates, goal in (
        ("loop", loop, ""),
        ("until freed", freed, "expected: ~1.4-1.6k/s on 2 cores"),
    ):
        if not rates[1]:
            continue
        one = Row(
            "a",
            f"raw create+destroy rate, 1 thread ({what})",
            "ops/s",
            rates[1],
            extra={"per_thread": sizes.rate_ops, "drain_s": drains[1]},
        )
        two = Row(
            "a",
            f"raw create+destroy rate, 2 threads ({what})",
            "ops/s",
            rates[2],
            baseline=one.name,
            goal=goal,
            extra={"per_thread": sizes.rate_ops, "drain_s": drains[2]},
        )
        rows += [one, two]
    return rows


# -- (b) setns into a netns and back ---------------------------------------------


def bench_setns(sizes: Sizes, console: Console) -> list[Row]:
    console.print("(b) setns into a netns and back ...")
    target = NamespaceSet.unshare(Kind.NET)
    home_fd = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fd = target.fds(Kind.NET)[Kind.NET]

        def raw(n: int) -> list[float]:
            out: list[float] = []
            clock = time.perf_counter_ns
            for _ in range(n):
                t0 = clock()
                r1 = c_setns(fd, CLONE_NEWNET)
                r2 = c_setns(home_fd, CLONE_NEWNET)
                t1 = clock()
                if r1 or r2:
                    check(-1, "setns")
                out.append((t1 - t0) / 1e3)
            return out

        def via_nspool(backend: str) -> Callable[[int], list[float]]:
            def run(n: int) -> list[float]:
                old = _sys.use_backend(backend)
                try:
                    out: list[float] = []
                    clock, setns = time.perf_counter_ns, _sys.setns
                    for _ in range(n):
                        t0 = clock()
                        setns(fd, Kind.NET)
                        setns(home_fd, Kind.NET)
                        out.append((clock() - t0) / 1e3)
                    return out
                finally:
                    _sys.use_backend(old)

            return run

        variants: dict[str, Callable[[int], list[float]]] = {"raw": raw}
        for backend in _sys.available_backends():
            variants[backend] = via_nspool(backend)

        def measure() -> dict[str, list[float]]:
            with no_gc():
                interleave(variants, sizes.setns_ops // 10, sizes.rounds)  # warm-up
                return interleave(variants, sizes.setns_ops, sizes.rounds)

        samples = on_thread(measure, name="bench-setns")
    finally:
        os.close(home_fd)
        target.close()
    base = Row(
        "b",
        "setns net + back: raw ctypes",
        "us",
        samples["raw"],
        goal="expected: ~4.4 µs (C), 5-7 µs (Python)",
    )
    rows = [base]
    for backend in _sys.available_backends():
        rows.append(
            Row(
                "b",
                f"setns net + back: nspool._sys.setns ({backend})",
                "us",
                samples[backend],
                baseline=base.name,
            )
        )
    return rows


# -- (c) pidfd setns of three kinds ------------------------------------------------


@contextlib.contextmanager
def child_with_namespaces(timeout: float = 5.0) -> Iterator[int]:
    """A ``unshare --net --uts --ipc sleep 60`` child, once it is in its new
    namespaces; killed and reaped on exit. Yields its pid."""
    child = subprocess.Popen(["unshare", "--net", "--uts", "--ipc", "sleep", "60"])
    try:
        mine = {k: os.readlink(f"/proc/self/ns/{k}") for k in ("net", "uts", "ipc")}
        deadline = time.monotonic() + timeout
        while True:
            try:
                theirs = {k: os.readlink(f"/proc/{child.pid}/ns/{k}") for k in mine}
            except OSError:
                theirs = mine
            if all(theirs[k] != mine[k] for k in mine):
                break
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the unshare child did not start")
            time.sleep(0.002)
        yield child.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        child.wait()


def bench_pidfd(sizes: Sizes, console: Console) -> list[Row]:
    console.print("(c) pidfd setns of net+uts+ipc ...")
    kinds = (("net", CLONE_NEWNET), ("uts", CLONE_NEWUTS), ("ipc", CLONE_NEWIPC))
    flags = CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC
    fds: list[int] = []
    try:
        with child_with_namespaces() as pid:
            their_pidfd = os.pidfd_open(pid)
            fds.append(their_pidfd)
            own_pidfd = os.pidfd_open(os.getpid())  # the main thread: home
            fds.append(own_pidfd)
            theirs: list[tuple[int, int]] = []
            home: list[tuple[int, int]] = []
            for name, flag in kinds:
                fd = os.open(f"/proc/{pid}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
                fds.append(fd)
                theirs.append((fd, flag))
                fd = os.open(f"/proc/self/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
                fds.append(fd)
                home.append((fd, flag))

            def pidfd(n: int) -> list[float]:
                out: list[float] = []
                clock = time.perf_counter_ns
                for _ in range(n):
                    t0 = clock()
                    r1 = c_setns(their_pidfd, flags)
                    r2 = c_setns(own_pidfd, flags)
                    t1 = clock()
                    if r1 or r2:
                        check(-1, "setns(pidfd)")
                    out.append((t1 - t0) / 1e3)
                return out

            def single(n: int) -> list[float]:
                out: list[float] = []
                clock = time.perf_counter_ns
                (a, fa), (b, fb), (c, fc) = theirs
                (x, fx), (y, fy), (z, fz) = home
                for _ in range(n):
                    t0 = clock()
                    r = c_setns(a, fa) | c_setns(b, fb) | c_setns(c, fc)
                    r |= c_setns(x, fx) | c_setns(y, fy) | c_setns(z, fz)
                    t1 = clock()
                    if r:
                        check(-1, "setns")
                    out.append((t1 - t0) / 1e3)
                return out

            def measure() -> dict[str, list[float]]:
                variants = {"single": single, "pidfd": pidfd}
                with no_gc():
                    interleave(variants, sizes.setns_ops // 10, sizes.rounds)
                    return interleave(variants, sizes.setns_ops, sizes.rounds)

            samples = on_thread(measure, name="bench-pidfd")
    finally:
        for fd in fds:
            os.close(fd)
    base = Row(
        "c",
        "net+uts+ipc + back: 3 setns each way",
        "us",
        samples["single"],
    )
    one = Row(
        "c",
        "net+uts+ipc + back: 1 pidfd setns each way",
        "us",
        samples["pidfd"],
        baseline=base.name,
        goal="expected: ~2x cheaper for 3+ kinds",
    )
    return [base, one]


# -- (d) thread round trip ----------------------------------------------------------


def noop() -> None:
    return None


def bench_hop(sizes: Sizes, console: Console) -> list[Row]:
    console.print("(d) thread round trip ...")
    inbox: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
    outbox: queue.SimpleQueue[object] = queue.SimpleQueue()

    def worker() -> None:
        while (job := inbox.get()) is not None:
            outbox.put(job())

    dedicated = threading.Thread(target=worker, name="bench-dedicated")
    dedicated.start()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:

        def via_queue(n: int) -> list[float]:
            out: list[float] = []
            clock, put, get = time.perf_counter_ns, inbox.put, outbox.get
            for _ in range(n):
                t0 = clock()
                put(noop)
                get()
                out.append((clock() - t0) / 1e3)
            return out

        def via_executor(n: int) -> list[float]:
            out: list[float] = []
            clock, submit = time.perf_counter_ns, executor.submit
            for _ in range(n):
                t0 = clock()
                submit(noop).result()
                out.append((clock() - t0) / 1e3)
            return out

        variants = {"executor": via_executor, "queue": via_queue}
        with no_gc():
            interleave(variants, sizes.hop_ops // 10, sizes.rounds)
            samples = interleave(variants, sizes.hop_ops, sizes.rounds)
    finally:
        inbox.put(None)
        dedicated.join()
        executor.shutdown(wait=True)
    base = Row(
        "d",
        "no-op round trip: ThreadPoolExecutor",
        "us",
        samples["executor"],
        goal="expected: 200-230 µs (run_in_executor)",
    )
    fast = Row(
        "d",
        "no-op round trip: thread + SimpleQueue",
        "us",
        samples["queue"],
        baseline=base.name,
        goal="expected: 185 µs (from an event loop)",
    )
    return [base, fast]


# -- (e) memory of a live netns ------------------------------------------------


def _mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def bench_memory(sizes: Sizes, console: Console) -> list[Row]:
    """Kernel memory per live netns: MemAvailable before and after holding
    ``memory_sets`` fresh netns (with ``lo`` down), per set; repeated."""
    console.print("(e) memory of a live netns ...")
    samples: list[float] = []
    for _ in range(3):
        settle(sizes.settle_max)
        before = _mem_available_kib()
        held = [NamespaceSet.unshare(Kind.NET) for _ in range(sizes.memory_sets)]
        try:
            after = _mem_available_kib()
        finally:
            for s in held:
                s.close()
        samples.append((before - after) / sizes.memory_sets)
    return [
        Row(
            "e",
            f"kernel memory per live netns (MemAvailable drop / {sizes.memory_sets})",
            "KiB",
            samples,
            goal="expected: ~230 KiB",
        )
    ]


# -- (f) a set with a new pid namespace: its init -----------------------------


def _waiting_on_stdin(pid: int) -> bool:
    """Whether the init ``pid`` has started up: it sleeps reading its stdin."""
    with open(f"/proc/{pid}/wchan") as f:
        return f.read().endswith("pipe_read")


def _rss_kib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return float(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@contextlib.contextmanager
def _init(path: str | None) -> Iterator[None]:
    """Sets made inside get the init ``path`` (None: the Python one)."""
    saved = _native.PIDINIT
    _native.PIDINIT = path
    try:
        yield
    finally:
        _native.PIDINIT = saved


def _make_until_up(
    kinds: Kind, path: str | None, rss: list[float] | None = None
) -> Callable[[int], list[float]]:
    """Per op: ``NamespaceSet.unshare(kinds)`` until its init (if any) waits
    on its stdin; the close is not timed. ``rss``: collect each init's RSS."""

    def run(n: int) -> list[float]:
        out: list[float] = []
        with _init(path):
            for _ in range(n):
                t0 = time.perf_counter_ns()
                s = NamespaceSet.unshare(kinds, private_proc=Kind.MNT in kinds)
                pid = s.init_pid
                while pid is not None and not _waiting_on_stdin(pid):
                    os.sched_yield()
                out.append((time.perf_counter_ns() - t0) / 1e3)
                if rss is not None and pid is not None:
                    rss.append(_rss_kib(pid))
                s.close()
        return out

    return run


def bench_pid_init(sizes: Sizes, console: Console) -> list[Row]:
    console.print("(f) a set with a new pid namespace: its init ...")
    native = _native.PIDINIT
    rss: dict[str, list[float]] = {
        k: [] for k in ("native", "python", "user native", "user python")
    }
    user = Kind.USER | Kind.PID
    variants = {"netns": _make_until_up(Kind.NET, None)}
    variants["python"] = _make_until_up(Kind.PID, None, rss["python"])
    variants["python+proc"] = _make_until_up(Kind.PID | Kind.MNT, None)
    variants["user netns"] = _make_until_up(Kind.USER | Kind.NET, None)
    variants["user python"] = _make_until_up(user, None, rss["user python"])
    if native is not None:
        variants["native"] = _make_until_up(Kind.PID, native, rss["native"])
        variants["native+proc"] = _make_until_up(Kind.PID | Kind.MNT, native)
        variants["user native"] = _make_until_up(user, native, rss["user native"])
    samples = interleave(variants, sizes.init_ops, sizes.rounds)
    netns = Row("f", "create netns (baseline for the pid sets)", "us", samples["netns"])
    user_netns = Row(
        "f", "create user+netns set (baseline for the user+pid sets)", "us", samples["user netns"]
    )
    names = {
        "python": "create pid set, Python init, until it is up",
        "native": "create pid set, compiled init, until it is up",
        "python+proc": "create pid+mnt set, private /proc, Python init",
        "native+proc": "create pid+mnt set, private /proc, compiled init",
        "user python": "create user+pid set, Python init (helper's fork)",
        "user native": "create user+pid set, compiled init",
    }
    rows = [netns]
    for key, name in names.items():
        if key == "user python":
            rows.append(user_netns)
        if key in samples:
            extra: dict[str, float] = {}
            if "native" in key:
                python = samples[key.replace("native", "python")]
                extra["vs Python init"] = statistics.median(samples[key]) / statistics.median(
                    python
                )
            base = user_netns if key.startswith("user") else netns
            rows.append(Row("f", name, "us", samples[key], baseline=base.name, extra=extra))
    for prefix, what in (("", "a pid set"), ("user ", "a user+pid set")):
        python_rss = Row("f", f"RSS of {what}'s init: Python", "KiB", rss[prefix + "python"])
        rows.append(python_rss)
        if rss[prefix + "native"]:
            rows.append(
                Row(
                    "f",
                    f"RSS of {what}'s init: compiled",
                    "KiB",
                    rss[prefix + "native"],
                    baseline=python_rss.name,
                    faster=True,
                )
            )
    if not rss["native"]:
        console.print(f"(f) no compiled init: {_native.REASON}")
    return rows


# -- report ---------------------------------------------------------------------------


def measure(sizes: Sizes, console: Console) -> list[Row]:
    rows: list[Row] = []
    rows += bench_create(sizes, console)
    settle(sizes.settle_max)
    rows += bench_setns(sizes, console)
    rows += bench_pidfd(sizes, console)
    rows += bench_hop(sizes, console)
    settle(sizes.settle_max)
    rows += bench_memory(sizes, console)
    settle(sizes.settle_max)
    rows += bench_pid_init(sizes, console)
    return rows


#: The heading of this benchmark's table (and plot).
TITLE = "kernel costs"


def main(argv: list[str] | None = None) -> int:
    return run_main(
        argv,
        name="kernel_costs",
        doc=__doc__,
        title=TITLE,
        quick=QUICK,
        full=FULL,
        measure=measure,
    )


if __name__ == "__main__":
    raise SystemExit(main())
