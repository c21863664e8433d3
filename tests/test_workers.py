"""Worker threads: calls run inside their set, threads are checked, restored
or discarded, against the real kernel.

Most tests run three times: with the anchor (workers go home in one
``setns`` on a thread pidfd), without it (kind by kind, every link read), and
with the anchor but GIL-releasing syscalls.
"""

from __future__ import annotations

import contextvars
import gc
import os
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, wait

import pytest

import nspool
from nspool import (
    Kind,
    NamespaceSet,
    SetClosedError,
    UnsupportedKindError,
    Workers,
    _sys,
    _thread_ns,
    workers,
)

from .conftest import on_thread, thread_ns, wait_until

LINKS = ("cgroup", "ipc", "mnt", "net", "pid_for_children", "time_for_children", "uts")


def my_links() -> dict[str, str]:
    """The calling thread's namespace links, pid and time as for children."""
    return {name: thread_ns(name) for name in LINKS}


def link_of(kind: Kind) -> str:
    return kind.for_children_name


@pytest.fixture(params=["anchor", "per-kind", "gil-released"])
def pool(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Workers]:
    """A fresh ``Workers``, shut down (and its threads joined) after the test:
    going home through the anchor, kind by kind, or through the anchor with
    the syscalls releasing the GIL (``os.readlink`` and the backend's setns)."""
    monkeypatch.setattr(workers, "USE_HOME_ANCHOR", request.param != "per-kind")
    monkeypatch.setattr(workers, "KEEP_GIL", request.param != "gil-released")
    w = Workers(max_workers=8)
    if request.param != "per-kind":
        assert w._home.anchor_fd >= 0, "this kernel should support PIDFD_THREAD"
    try:
        yield w
    finally:
        w.shutdown(wait=True)


def expected_links(s: NamespaceSet, home: dict[str, str]) -> dict[str, str]:
    ids = s.ids()
    out = dict(home)
    for kind, ino in ids.items():
        if kind is not Kind.USER:
            out[link_of(kind)] = f"{kind.proc_name}:[{ino}]"
    return out


# -- running calls ---------------------------------------------------------------


def test_run_sync_runs_inside_the_set(pool: Workers) -> None:
    """The callable sees the set's namespaces, the home ones for other kinds;
    the caller never moves; current() is the set inside, None outside."""
    home = my_links()
    with NamespaceSet.unshare(Kind.NET | Kind.UTS | Kind.IPC) as s:

        def inside() -> tuple[dict[str, str], object, str]:
            return my_links(), nspool.current(), threading.current_thread().name

        links, cur, name = pool.run_sync(s, inside)
        assert links == expected_links(s, home)
        assert cur is s
        assert name.startswith("nspool-worker-")
        assert my_links() == home
        assert nspool.current() is None


def test_every_joinable_kind(pool: Workers) -> None:
    """A set of every kind but user and time is entered whole."""
    home = my_links()
    kinds = Kind.all() & ~Kind.USER & ~Kind.TIME
    with NamespaceSet.unshare(kinds) as s:
        assert pool.run_sync(s, my_links) == expected_links(s, home)
        assert pool.run_sync(s, my_links) == expected_links(s, home)
    assert pool.stats().discarded == 0


def test_result_exception_and_context(pool: Workers) -> None:
    """Results come back, exceptions with their traceback, and the caller's
    contextvars are visible to the callable."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    var.set("caller's")
    with NamespaceSet.unshare(Kind.UTS) as s:
        assert pool.run_sync(s, lambda a, b=1: a + b, 1, b=2) == 3
        assert pool.run_sync(s, var.get) == "caller's"

        def fails() -> None:
            raise ValueError("from the callable")

        with pytest.raises(ValueError, match="from the callable") as info:
            pool.run_sync(s, fails)
        assert "fails" in "".join(traceback.format_tb(info.value.__traceback__))
        future = pool.submit_in(s, fails)
        assert isinstance(future.exception(), ValueError)
    assert pool.stats().discarded == 0


def test_submit_in_many_in_flight(pool: Workers) -> None:
    """Many futures at once over several sets each see their own set."""
    sets = [NamespaceSet.unshare(Kind.NET) for _ in range(6)]
    try:
        futures = [(s, pool.submit_in(s, thread_ns, "net")) for s in sets for _ in range(50)]
        wait([f for _, f in futures])
        for s, f in futures:
            assert f.result() == f"net:[{s.id(Kind.NET)}]"
    finally:
        for s in sets:
            s.close()
    assert pool.stats().threads <= 8


def test_submit_runs_at_home(pool: Workers) -> None:
    """Executor.submit (no set) runs in the executor's home namespaces."""
    home = my_links()
    assert pool.submit(my_links).result() == home
    assert list(pool.map(lambda x: x * 2, range(5))) == [0, 2, 4, 6, 8]


@pytest.mark.stress
def test_stress_no_call_in_the_wrong_namespaces(pool: Workers) -> None:
    """Thousands of calls over dozens of sets from several submitting threads:
    every call sees exactly its set; afterwards nothing is left over."""
    home = my_links()
    mixes = [Kind.NET, Kind.NET | Kind.UTS, Kind.IPC, Kind.UTS | Kind.IPC | Kind.NET, Kind.CGROUP]
    sets = [NamespaceSet.unshare(mixes[i % len(mixes)]) for i in range(30)]
    wrong: list[tuple[int, dict[str, str]]] = []
    calls = 0
    lock = threading.Lock()
    try:
        want = [expected_links(s, home) for s in sets]

        def submitter(offset: int) -> None:
            nonlocal calls
            futures: list[tuple[int, Future[dict[str, str]]]] = []
            for i in range(400):
                n = (i * 7 + offset) % len(sets)
                if i % 3:
                    futures.append((n, pool.submit_in(sets[n], my_links)))
                else:
                    got = pool.run_sync(sets[n], my_links)
                    with lock:
                        calls += 1
                        if got != want[n]:
                            wrong.append((n, got))
            for n, f in futures:
                got = f.result()
                with lock:
                    calls += 1
                    if got != want[n]:
                        wrong.append((n, got))

        threads = [threading.Thread(target=submitter, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for s in sets:
            s.close()
    assert calls == 1600
    assert wrong == []
    assert pool.stats().discarded == 0


# -- faults -------------------------------------------------------------------------


def tampering_case(
    pool: Workers, s: NamespaceSet, tamper: Callable[[], object]
) -> tuple[str, object]:
    """Run ``tamper`` in ``s``; return the worker thread's name (unique per
    thread: ``nspool-worker-N``; thread idents are reused) and its result."""

    def call() -> tuple[str, object]:
        return threading.current_thread().name, tamper()

    return pool.run_sync(s, call)


def assert_never_reused(pool: Workers, s: NamespaceSet, name: str) -> None:
    """The tampered thread is gone and later calls run on other threads, in
    the right namespaces."""
    home = my_links()
    assert wait_until(lambda: all(t.name != name for t in threading.enumerate()))
    for _ in range(20):
        got, links = pool.run_sync(s, lambda: (threading.current_thread().name, my_links()))
        assert got != name
        assert links == expected_links(s, home)


def test_callable_that_unshares_a_set_kind_is_discarded(pool: Workers) -> None:
    """A callable that unshares the set's netns: the caller gets its result,
    the thread is discarded and never reused."""
    with NamespaceSet.unshare(Kind.NET) as s:
        ident, result = tampering_case(pool, s, lambda: _sys.unshare(Kind.NET) or "done")
        assert result == "done"
        assert pool.stats().discarded == 1
        assert_never_reused(pool, s, ident)


def test_callable_that_setns_elsewhere_is_discarded(pool: Workers) -> None:
    """A callable that joins another netns itself is caught."""
    with NamespaceSet.unshare(Kind.NET) as s, NamespaceSet.unshare(Kind.NET) as other:
        fd = other.fds()[Kind.NET]
        ident, _ = tampering_case(pool, s, lambda: _sys.setns(fd, Kind.NET))
        assert pool.stats().discarded == 1
        assert_never_reused(pool, s, ident)


@pytest.mark.parametrize("kind", [Kind.TIME, Kind.MNT])
def test_callable_that_unshares_time_or_mnt_is_discarded(pool: Workers, kind: Kind) -> None:
    """Kinds the return home cannot force are read after every call: a
    callable that unshares them (outside its set) is caught."""
    with NamespaceSet.unshare(Kind.UTS) as s:
        ident, _ = tampering_case(pool, s, lambda: _sys.unshare(kind))
        assert pool.stats().discarded == 1
        assert_never_reused(pool, s, ident)


def test_callable_that_unshares_another_kind(
    pool: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A callable that unshares a restorable kind outside its set: with the
    anchor the return home undoes it (the thread is forced home, and later
    calls see home); reading every kind catches it and discards the thread."""
    home = my_links()
    with NamespaceSet.unshare(Kind.NET) as s:
        ident, _ = tampering_case(pool, s, lambda: _sys.unshare(Kind.UTS))
        if pool._home.anchor_fd >= 0:
            assert pool.stats().discarded == 0
            for _ in range(10):
                assert pool.run_sync(s, my_links) == expected_links(s, home)
            monkeypatch.setattr(workers, "CHECK_EVERY_KIND", True)
            ident, _ = tampering_case(pool, s, lambda: _sys.unshare(Kind.UTS))
        assert pool.stats().discarded == 1
        assert_never_reused(pool, s, ident)


def test_callable_that_closes_the_workers_fds(pool: Workers) -> None:
    """A callable that closes the worker's own namespace directory fd: the
    call still ends with its result, the thread is discarded, and fresh
    threads serve later calls."""

    def close_ns_dir() -> str:
        me = threading.get_native_id()
        for fd in os.listdir("/proc/thread-self/fd"):
            try:
                target = os.readlink(f"/proc/thread-self/fd/{fd}")
            except OSError:
                continue
            if target == f"/proc/{os.getpid()}/task/{me}/ns":
                os.close(int(fd))
                return "closed"
        return "not found"

    with NamespaceSet.unshare(Kind.NET) as s:
        ident, result = tampering_case(pool, s, close_ns_dir)
        assert result == "closed"
        assert pool.stats().discarded == 1
        assert_never_reused(pool, s, ident)


def test_callable_that_closes_its_sets_fd(pool: Workers) -> None:
    """A callable that closes the set's own fd ends normally; the worker
    still goes home and the set still closes."""
    s = NamespaceSet.unshare(Kind.NET)
    fd = s.fds()[Kind.NET]
    assert pool.run_sync(s, os.close, fd) is None
    s.close()
    assert pool.submit(my_links).result() == my_links()
    assert pool.stats().discarded == 0


def test_thread_started_by_a_callable_stays_inside(pool: Workers) -> None:
    """A thread started by the callable begins in the set's namespaces (the
    kernel's rule); current() is None there."""
    with NamespaceSet.unshare(Kind.NET) as s:

        def start_thread() -> tuple[str, object]:
            box: dict[str, object] = {}

            def inner() -> None:
                box["net"] = thread_ns("net")
                box["current"] = nspool.current()

            t = threading.Thread(target=inner)
            t.start()
            t.join()
            return str(box["net"]), box["current"]

        net, cur = pool.run_sync(s, start_thread)
        assert net == f"net:[{s.id(Kind.NET)}]"
        assert cur is None


def test_set_closed_while_calls_are_queued() -> None:
    """Calls queued for a set that is closed before they start fail with
    SetClosedError; the running call finishes normally."""
    w = Workers(max_workers=1)
    try:
        release = threading.Event()
        with NamespaceSet.unshare(Kind.UTS) as blocker:
            first = w.submit_in(blocker, release.wait, 10)
            s = NamespaceSet.unshare(Kind.NET)
            queued = [w.submit_in(s, thread_ns, "net") for _ in range(5)]
            s.close()
            release.set()
            assert first.result(timeout=10) is True
            for f in queued:
                assert isinstance(f.exception(timeout=10), SetClosedError)
        with pytest.raises(SetClosedError):
            w.run_sync(s, thread_ns, "net")
    finally:
        w.shutdown()


def test_shutdown_with_calls_in_flight() -> None:
    """shutdown(wait=True) lets running and queued calls finish;
    cancel_futures cancels queued ones; later submits are refused."""
    w = Workers(max_workers=1)
    gate = threading.Event()
    with NamespaceSet.unshare(Kind.NET) as s:
        running = w.submit_in(s, gate.wait, 10)
        queued = [w.submit_in(s, thread_ns, "net") for _ in range(3)]
        threading.Timer(0.2, gate.set).start()
        w.shutdown(wait=True)
        assert running.result() is True
        assert [f.result() for f in queued] == [f"net:[{s.id(Kind.NET)}]"] * 3
        with pytest.raises(RuntimeError, match="after shutdown"):
            w.submit_in(s, thread_ns, "net")

        w2 = Workers(max_workers=1)
        gate2 = threading.Event()
        running2 = w2.submit_in(s, gate2.wait, 10)
        queued2 = [w2.submit_in(s, thread_ns, "net") for _ in range(3)]
        waiting: list[BaseException] = []

        def sync_waiter() -> None:
            try:
                w2.run_sync(s, thread_ns, "net")
            except BaseException as exc:
                waiting.append(exc)

        t = threading.Thread(target=sync_waiter)
        t.start()
        assert wait_until(lambda: w2.stats().queued == 4)
        w2.shutdown(wait=False, cancel_futures=True)
        gate2.set()
        t.join()
        assert running2.result(timeout=10) is True
        assert all(f.cancelled() for f in queued2)
        assert len(waiting) == 1
        assert isinstance(waiting[0], CancelledError)
        w2.shutdown(wait=True)


def test_unjoinable_kinds_are_refused(pool: Workers) -> None:
    """A set whose time (or user) namespace differs from home is refused
    before the thread moves; one whose time and user are home's is fine."""
    with (
        NamespaceSet.unshare(Kind.TIME | Kind.NET) as s,
        pytest.raises(UnsupportedKindError, match="time"),
    ):
        pool.run_sync(s, my_links)
    with NamespaceSet.current() as here:
        assert pool.run_sync(here, my_links) == my_links()
    proc = subprocess.Popen(["unshare", "--user", "sleep", "30"])
    try:
        assert wait_until(lambda: os.readlink(f"/proc/{proc.pid}/exe").endswith("sleep"))
        with (
            NamespaceSet.from_pid(proc.pid, Kind.USER | Kind.UTS) as s,
            pytest.raises(UnsupportedKindError, match="user"),
        ):
            pool.run_sync(s, my_links)
    finally:
        proc.kill()
        proc.wait()
    assert pool.stats().discarded == 0


def test_mount_namespace_call_restores_cwd(pool: Workers, tmp_path: os.PathLike[str]) -> None:
    """A mount-ns call starts at the namespace's root; a chdir inside does
    not leak to later calls, which see the process's cwd again."""
    cwd = os.getcwd()
    with NamespaceSet.unshare(Kind.MNT) as s:

        def wander() -> str:
            before = os.getcwd()
            os.chdir("/tmp")
            return before

        assert pool.run_sync(s, wander) == "/"
        for _ in range(3):
            assert pool.submit(os.getcwd).result() == cwd
            assert pool.run_sync(s, os.getcwd) == "/"
    assert os.getcwd() == cwd
    # A worker that has its own cwd follows the process's chdir.
    old = os.getcwd()
    os.chdir(os.fspath(tmp_path))
    try:
        results = {pool.submit(os.getcwd).result() for _ in range(10)}
        assert results == {os.fspath(tmp_path)}
    finally:
        os.chdir(old)
    assert pool.stats().discarded == 0


def test_pid_namespace_children(pool: Workers) -> None:
    """Processes a callable starts in a pid-ns set are its PIDs 2, 3, ...;
    closing the set ends any still running."""
    s = NamespaceSet.unshare(Kind.PID)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(["sleep", "60"])

    procs = [pool.run_sync(s, start) for _ in range(2)]
    try:
        inner = []
        for p in procs:
            with open(f"/proc/{p.pid}/status") as f:
                nspid = next(line for line in f if line.startswith("NSpid:")).split()
            inner.append(int(nspid[-1]))
        assert sorted(inner) == [2, 3]
        s.close()
        for p in procs:
            assert p.wait(timeout=10) == -9
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_a_callable_can_submit_more_work(pool: Workers) -> None:
    """A callable inside set A submitting a call for set B: the new worker
    thread starts at home, not in A (threads inherit their creator's)."""
    home = my_links()
    with NamespaceSet.unshare(Kind.NET) as a, NamespaceSet.unshare(Kind.UTS) as b:
        links = pool.run_sync(a, lambda: pool.submit_in(b, my_links).result())
        assert links == expected_links(b, home)
    assert pool.stats().discarded == 0


def test_idle_threads_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Idle workers exit after IDLE_TIMEOUT."""
    monkeypatch.setattr(workers, "IDLE_TIMEOUT", 0.1)
    w = Workers()
    try:
        with NamespaceSet.unshare(Kind.NET) as s:
            list(w.map(lambda _: time.sleep(0.05), range(4)))
            assert w.run_sync(s, lambda: 5) == 5
        assert w.stats().threads >= 1
        assert wait_until(lambda: w.stats().threads == 0, timeout=5)
    finally:
        w.shutdown()


def test_an_unreferenced_executor_lets_its_threads_go() -> None:
    """A Workers dropped without shutdown: its idle threads exit and its
    home fds close (nothing outlives it)."""
    w = Workers()
    assert w.submit(lambda: 1).result() == 1
    names = {t.name for t in threading.enumerate() if t.name.startswith("nspool-")}
    assert names
    del w
    gc.collect()
    assert wait_until(lambda: not any(t.name in names for t in threading.enumerate()), timeout=5)


def test_workers_repr_and_context_manager() -> None:
    """A Workers is a context manager (shutdown on exit) with a useful repr."""
    with Workers(max_workers=2) as w:
        assert w.submit(lambda: 2).result() == 2
        assert "running" in repr(w)
    assert "shut down" in repr(w)
    with pytest.raises(ValueError, match="max_workers"):
        Workers(max_workers=0)


def test_default_workers_and_run_sync(fresh_default: None) -> None:
    """NamespaceSet.run_sync uses the lazily made default Workers."""
    with NamespaceSet.unshare(Kind.NET) as s:
        assert s.run_sync(thread_ns, "net") == f"net:[{s.id(Kind.NET)}]"
    assert nspool.default_workers() is workers._default


# -- call_inline ---------------------------------------------------------------------


def test_call_inline_runs_on_the_calling_thread() -> None:
    """call_inline enters and leaves on the calling thread itself."""

    def check() -> None:
        home = my_links()
        with NamespaceSet.unshare(Kind.NET | Kind.UTS) as s:
            ident = threading.get_ident()
            got = s.call_inline(lambda: (threading.get_ident(), my_links(), nspool.current()))
            assert got == (ident, expected_links(s, home), s)
            assert my_links() == home
            assert nspool.current() is None

    on_thread(check)


def test_call_inline_nested_and_inside_a_worker(pool: Workers) -> None:
    """Nested call_inline goes back to the outer set, and inside a worker
    call it goes back to the worker's set, not the worker's home."""
    home = my_links()
    with NamespaceSet.unshare(Kind.NET) as a, NamespaceSet.unshare(Kind.NET | Kind.UTS) as b:

        def nested() -> tuple[dict[str, str], dict[str, str]]:
            inner = b.call_inline(my_links)
            return inner, my_links()

        inner, after = pool.run_sync(a, nested)
        assert inner == expected_links(b, home)
        assert after == expected_links(a, home)
        assert pool.stats().discarded == 0

        def twice() -> tuple[dict[str, str], dict[str, str]]:
            return a.call_inline(lambda: (b.call_inline(my_links), my_links()))

        inner, middle = on_thread(twice)
        assert inner == expected_links(b, home)
        assert middle == expected_links(a, home)


@pytest.mark.parametrize("kind", [Kind.MNT, Kind.PID, Kind.TIME])
def test_call_inline_refuses_kinds_it_cannot_leave(kind: Kind) -> None:
    """mnt, pid and time are refused before the thread moves."""
    with NamespaceSet.unshare(kind | Kind.NET) as s:
        home = my_links()
        with pytest.raises(UnsupportedKindError, match="call_inline"):
            s.call_inline(my_links)
        assert my_links() == home


def test_call_inline_on_the_main_thread() -> None:
    """call_inline on the main thread restores it; its cached home fds are
    released again so the leak check holds."""
    home = my_links()
    try:
        with NamespaceSet.unshare(Kind.NET) as s:
            assert s.call_inline(thread_ns, "net") == f"net:[{s.id(Kind.NET)}]"
            with pytest.raises(ZeroDivisionError):
                s.call_inline(lambda: 1 / 0)
        assert my_links() == home
    finally:
        _thread_ns.forget_thread_home()


def test_call_inline_on_a_closed_set() -> None:
    """A closed set refuses call_inline."""
    s = NamespaceSet.unshare(Kind.NET)
    s.close()
    with pytest.raises(SetClosedError):
        s.call_inline(my_links)


def test_same_cpu_moves_the_worker_to_the_submitter() -> None:
    """With same_cpu=True the worker that takes a call runs on the CPU the
    submitting thread was on, and calls still run in their set."""

    def submit_from_one_cpu() -> tuple[set[int], str, int]:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        w = Workers(same_cpu=True)
        try:
            with NamespaceSet.unshare(Kind.NET) as s:
                affinity, net = w.run_sync(s, lambda: (os.sched_getaffinity(0), thread_ns("net")))
                return affinity, net, s.id(Kind.NET)
        finally:
            w.shutdown()

    affinity, net, ino = on_thread(submit_from_one_cpu)
    assert len(affinity) == 1
    assert net == f"net:[{ino}]"


def test_futures_cancelled_while_queued_never_run() -> None:
    """Futures cancelled in the queue are skipped; the worker that meets them
    keeps serving (it once died delivering to a cancelled future)."""
    w = Workers(max_workers=1)
    try:
        gate = threading.Event()
        ran: list[int] = []
        with NamespaceSet.unshare(Kind.NET) as s:
            first = w.submit_in(s, gate.wait, 10)
            queued = [w.submit_in(s, ran.append, i) for i in range(6)]
            for f in queued[::2]:
                assert f.cancel()
            gate.set()
            assert first.result(timeout=10) is True
            for f in queued[1::2]:
                f.result(timeout=10)
            assert sorted(ran) == [1, 3, 5]
            assert w.run_sync(s, lambda: "alive") == "alive"
        st = w.stats()
        assert (st.threads, st.discarded, st.queued) == (1, 0, 0)
    finally:
        w.shutdown()


# -- streams of jobs (submit_job) -------------------------------------------------------


def run_jobs(
    w: Workers, s: NamespaceSet, calls: list[Callable[[], object]], timeout: float = 20
) -> list[workers.Job]:
    """Submit ``calls`` as one stream of jobs on ``s`` and wait for all."""
    remaining = threading.Semaphore(0)
    jobs = [workers.Job(fn, (), {}, lambda _job: remaining.release()) for fn in calls]
    for job in jobs:
        w.submit_job(s, job)
    for _ in jobs:
        assert remaining.acquire(timeout=timeout)
    return jobs


def test_stream_jobs_each_run_inside_the_set_and_checked(pool: Workers) -> None:
    """Every job of a stream runs in the set's namespaces and home's for
    the others, even after a job before it moved the thread: a job that
    moved a kind outside the set finds it put back (or its thread replaced)
    for the next job; one that left the set's own kind has its thread
    thrown away, and the jobs after it still run in the set."""
    home = my_links()

    def move_uts() -> dict[str, str]:
        _sys.unshare(Kind.UTS)
        return my_links()

    def leave_the_set() -> dict[str, str]:
        _sys.unshare(Kind.NET)
        return my_links()

    with NamespaceSet.unshare(Kind.NET) as s:
        want = expected_links(s, home)
        calls: list[Callable[[], object]] = []
        for i in range(60):
            calls.append(move_uts if i == 10 else leave_the_set if i == 30 else my_links)
        jobs = run_jobs(pool, s, calls)
        for i, job in enumerate(jobs):
            assert job.error is None
            if i not in (10, 30):
                assert job.result == want, f"job {i}"
        assert jobs[10].result["uts"] != home["uts"]
        assert jobs[30].result["net"] != want["net"]
    assert wait_until(lambda: pool.stats().discarded >= 1)
    assert my_links() == home


def test_stream_jobs_that_block_run_side_by_side(pool: Workers) -> None:
    """Jobs of one stream that block do not wait for each other: more
    workers join while jobs wait (four jobs meet at a barrier)."""
    barrier = threading.Barrier(4, timeout=10)
    with NamespaceSet.unshare(Kind.NET) as s:
        jobs = run_jobs(pool, s, [barrier.wait] * 4)
    assert [job.error for job in jobs] == [None] * 4
    assert sorted(job.result for job in jobs) == [0, 1, 2, 3]


def test_stream_jobs_cancelled_while_queued_never_run() -> None:
    """A job marked cancelled before a worker takes it never runs and is
    never reported; the others run in order; contextvars are each job's.
    One worker, busy with a first job, so that the others stay queued."""
    w = Workers(max_workers=1)
    gate = threading.Event()
    started = threading.Event()
    ran: list[int] = []
    var: contextvars.ContextVar[int] = contextvars.ContextVar("var")
    finished = threading.Semaphore(0)

    def first() -> None:
        started.set()
        gate.wait(10)

    try:
        with NamespaceSet.unshare(Kind.NET) as s:
            w.submit_job(s, workers.Job(first, (), {}, lambda _j: finished.release()))
            assert started.wait(10)
            queued = []
            for i in range(6):
                var.set(i)
                job = workers.Job(
                    lambda: ran.append(var.get()), (), {}, lambda _j: finished.release()
                )
                queued.append(job)
                w.submit_job(s, job)
            for job in queued[::2]:
                job.cancelled = True
            gate.set()
            for _ in range(4):
                assert finished.acquire(timeout=10)
            assert not finished.acquire(timeout=0.2)
    finally:
        gate.set()
        w.shutdown()
    assert ran == [1, 3, 5]


def test_stream_on_a_set_closed_meanwhile() -> None:
    """Jobs that find their set closed (by a job before them, on the one
    worker) get SetClosedError; a stream for a set closed before it starts
    too."""
    w = Workers(max_workers=1)
    try:
        s = NamespaceSet.unshare(Kind.NET)
        jobs = run_jobs(w, s, [s.close, os.getpid, os.getpid])
        assert jobs[0].error is None
        assert all(isinstance(job.error, SetClosedError) for job in jobs[1:])
        late = run_jobs(w, s, [os.getpid])
        assert isinstance(late[0].error, SetClosedError)
    finally:
        w.shutdown()


def test_stream_on_a_set_workers_cannot_enter(pool: Workers) -> None:
    """Every job of a stream on a set with another time namespace gets its
    own UnsupportedKindError, and nothing runs."""
    ran: list[int] = []
    with NamespaceSet.unshare(Kind.TIME | Kind.NET) as s:
        jobs = run_jobs(pool, s, [lambda: ran.append(1)] * 3)
    errors = [job.error for job in jobs]
    assert all(isinstance(e, UnsupportedKindError) for e in errors)
    assert len({id(e) for e in errors}) == 3
    assert ran == []


def test_shutdown_cancels_queued_stream_jobs() -> None:
    """shutdown(cancel_futures=True) reports every job no worker has taken
    as cancelled; the running one finishes."""
    w = Workers(max_workers=1)
    gate = threading.Event()
    outcomes: list[BaseException | None] = []
    done = threading.Semaphore(0)

    def record(job: workers.Job) -> None:
        outcomes.append(job.error)
        done.release()

    try:
        with NamespaceSet.unshare(Kind.NET) as s:
            started = threading.Event()

            def first() -> None:
                started.set()
                gate.wait(10)

            w.submit_job(s, workers.Job(first, (), {}, record))
            assert started.wait(10)
            for _ in range(3):
                w.submit_job(s, workers.Job(os.getpid, (), {}, record))
            w.shutdown(wait=False, cancel_futures=True)
            gate.set()
            for _ in range(4):
                assert done.acquire(timeout=10)
    finally:
        gate.set()
        w.shutdown()
    assert all(isinstance(e, CancelledError) for e in outcomes[:3])
    assert outcomes[3] is None


def test_stream_hands_each_outcome_over_before_the_next_job() -> None:
    """A job's outcome reaches its submitter before the next job of the
    stream runs, even on one thread: a slow job never holds back the
    results of those before it."""
    w = Workers(max_workers=1)
    delivered = threading.Event()
    finished = threading.Semaphore(0)
    try:
        with NamespaceSet.unshare(Kind.NET) as s:

            def first_done(_job: workers.Job) -> None:
                delivered.set()
                finished.release()

            w.submit_job(s, workers.Job(os.getpid, (), {}, first_done))
            second = workers.Job(delivered.wait, (10,), {}, lambda _j: finished.release())
            w.submit_job(s, second)
            assert finished.acquire(timeout=10)
            assert finished.acquire(timeout=10)
        assert second.result is True
    finally:
        w.shutdown()
