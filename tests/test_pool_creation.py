"""Where and how a pool makes and frees sets: creator processes and their
fds, takers that wait for a set being made, bounded misses, a closer whose
backlog stays bounded, ``wait_ready``, and the pool's checks of its
arguments and of recycled sets.

Subprocess tests run a script with their own ``RLIMIT_NOFILE`` (the kernel's
own ``EMFILE``; nothing is mocked here).
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from nspool import Kind, NamespaceError, Pool, PoolClosedError, Workers, _sys
from nspool import pool as pool_module

from .conftest import in_threads
from .test_pool import HookError, InsideWitnesses, gone, loopback_connects

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def executor() -> Iterator[Workers]:
    w = Workers(max_workers=8)
    try:
        yield w
    finally:
        w.shutdown(wait=True)


@pytest.fixture
def inside_witness() -> Iterator[InsideWitnesses]:
    witnesses = InsideWitnesses()
    yield witnesses
    for name in witnesses.names():
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


def _creator_pids(pool: Pool) -> list[int]:
    # White box: the live creator processes (to kill one).
    return [p.pid for p in pool._creators.processes()]


def _wait(predicate: object, timeout: float = 10.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


def _run_script(source: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# -- creator processes --------------------------------------------------------------


def test_sets_from_a_creator_process_are_the_namespaces_it_made(executor: Workers) -> None:
    """Each set a creator process passes back holds fds of namespaces of the
    right kind (NS_GET_NSTYPE), close-on-exec, each set its own, with lo up,
    and not the process's own."""
    home = {k: os.stat(f"/proc/self/ns/{k.proc_name}").st_ino for k in (Kind.NET, Kind.UTS)}
    with Pool(Kind.NET | Kind.UTS, warm=4, workers=executor, creator_processes=True) as p:
        p.wait_ready(timeout=30)
        assert _creator_pids(p), "no creator process"
        sets = [p.get() for _ in range(4)]
        try:
            ids = [s.ids() for s in sets]
            for s in sets:
                for kind, fd in s.fds().items():
                    assert _sys.nstype(fd) == kind
                    assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
                    assert s.id(kind) != home[kind]
                assert executor.run_sync(s, loopback_connects)
            assert len({i[Kind.NET] for i in ids}) == 4
            assert len({i[Kind.UTS] for i in ids}) == 4
        finally:
            for s in sets:
                p.put(s)
        assert p.stats().misses == 0


def test_a_killed_creator_process_is_replaced_and_counted(
    executor: Workers, inside_witness: InsideWitnesses
) -> None:
    """SIGKILL a creator process: the loss shows in stats(), a new process
    takes its place and the pool refills; no set of the pool outlives it
    (veth witnesses planted from inside each set), no fd is left."""
    with Pool(
        Kind.NET,
        warm=2,
        creators=1,
        workers=executor,
        after_create=inside_witness.plant,
    ) as p:
        p.wait_ready(timeout=30)
        (first,) = _creator_pids(p)
        os.kill(first, signal.SIGKILL)
        for _ in range(4):  # takes make the creator ask its dead process
            p.put(p.get())
        assert _wait(lambda: p.stats().creator_losses >= 1), p.stats()
        assert _wait(lambda: p.stats().ready == 2)
        assert _creator_pids(p)
        assert first not in _creator_pids(p)
        assert "creator process" in (p.stats().last_failure or "")
    assert all(gone(name) for name in inside_witness.names())


def test_creator_processes_run_on_the_creator_cpus() -> None:
    """creator_cpus pins the creator processes (checked through /proc)."""
    cpus = sorted(os.sched_getaffinity(0))
    with Pool(Kind.NET, warm=1, creators=1, creator_cpus=[cpus[-1]]) as p:
        p.wait_ready(timeout=30)
        (pid,) = _creator_pids(p)
        assert os.sched_getaffinity(pid) == {cpus[-1]}


def test_kinds_a_process_cannot_make_here_use_creator_threads(executor: Workers) -> None:
    """A pid set (or one with options) is refused creator processes, and by
    default made in this process."""
    with pytest.raises(ValueError, match="creator processes"):
        Pool(Kind.NET | Kind.PID, creator_processes=True)
    with pytest.raises(ValueError, match="creator processes"):
        Pool(Kind.UTS, hostname="x", creator_processes=True)
    with Pool(Kind.UTS, warm=1, hostname="made-here", workers=executor) as p:
        p.wait_ready(timeout=30)
        assert not _creator_pids(p)
        assert p.run_sync(socket.gethostname) == "made-here"


# -- takers -------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [True, False], ids=["creator-process", "creator-thread"])
def test_a_taker_waits_for_the_set_being_made_rather_than_missing(
    monkeypatch: pytest.MonkeyPatch, executor: Workers, processes: bool
) -> None:
    """With warm=1, taking sets one after another never misses: each taker
    waits for the set the creators are making. (TAKE_WAIT raised, so that a
    creation slowed by a busy machine still counts as being waited for.)"""
    monkeypatch.setattr(pool_module, "TAKE_WAIT", 2.0)
    with Pool(Kind.NET, warm=1, workers=executor, creator_processes=processes) as p:
        p.wait_ready(timeout=30)
        for _ in range(20):
            p.put(p.get())
        assert p.stats().misses == 0, p.stats()


def test_misses_made_at_once_are_bounded(
    monkeypatch: pytest.MonkeyPatch, executor: Workers
) -> None:
    """Eight takers of a pool with no creators running (never started) make
    their own sets, but never more at once than MAX_MISSES_AT_ONCE."""
    monkeypatch.setattr(pool_module, "MAX_MISSES_AT_ONCE", 2)
    lock = threading.Lock()
    now = [0]
    most = [0]

    def slow_hook(_s: object) -> None:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.05)
        with lock:
            now[0] -= 1

    p = Pool(Kind.NET, warm=0, after_create=slow_hook, workers=executor)
    try:
        taken = []

        def take() -> None:
            s = p.get(timeout=30)
            with lock:
                taken.append(s)

        errors = in_threads(take, 8)
        assert not errors
        assert len(taken) == 8
        assert p.stats().misses == 8
        assert most[0] == 2, f"{most[0]} misses at once"
        for s in taken:
            p.put(s)
    finally:
        p.close()


# -- wait_ready ---------------------------------------------------------------------


def test_wait_ready_returns_when_warm_sets_are_ready(executor: Workers) -> None:
    with Pool(Kind.NET, warm=6, workers=executor) as p:
        p.wait_ready(timeout=30)
        assert p.stats().ready == 6


def test_wait_ready_raises_the_creation_error(executor: Workers) -> None:
    """A pool whose sets cannot be made never warms: wait_ready raises the
    creation's error instead of waiting forever (processes and threads)."""

    def fail(_s: object) -> None:
        raise HookError("cannot set this up")

    for processes in (True, False):
        with (
            Pool(
                Kind.NET, warm=2, after_create=fail, workers=executor, creator_processes=processes
            ) as p,
            pytest.raises(HookError, match="cannot set this up"),
        ):
            p.wait_ready(timeout=30)


def test_wait_ready_times_out(executor: Workers) -> None:
    with (
        Pool(Kind.NET, warm=1, after_create=lambda s: time.sleep(0.5), workers=executor) as p,
        pytest.raises(TimeoutError),
    ):
        p.wait_ready(timeout=0.05)


@pytest.mark.anyio
async def test_await_ready_on_the_event_loop(executor: Workers) -> None:
    async with Pool(Kind.NET, warm=3, workers=executor) as p:
        await p.await_ready(timeout=30)
        assert p.stats().ready == 3
    with pytest.raises(PoolClosedError):
        await p.await_ready()


def test_a_closed_pool_raises_a_typed_error() -> None:
    p = Pool(Kind.NET, warm=0)
    p.close()
    for call in (p.get, p.start, p.wait_ready):
        with pytest.raises(PoolClosedError, match="closed") as info:
            call()
        assert isinstance(info.value, NamespaceError)
        assert isinstance(info.value, RuntimeError)


# -- freeing ------------------------------------------------------------------------


def test_the_closers_backlog_stays_bounded_under_a_low_fd_limit() -> None:
    """Eight threads of pool.run_sync for 3 s with a soft RLIMIT_NOFILE of
    256: no EMFILE, the backlog stays within its bound, everything the pool
    made is closed in the end (the script checks its own fds)."""
    result = _run_script(
        """
        import os, resource, threading, time
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        from nspool import Kind, Pool
        from nspool import pool as pool_module
        before = len(os.listdir("/proc/self/fd"))
        errors, most = [], [0]
        with Pool(Kind.NET, warm=8) as pool:
            bound = pool._closer.bound
            stop = time.monotonic() + 3
            def run():
                try:
                    while time.monotonic() < stop:
                        pool.run_sync(int)
                        most[0] = max(most[0], pool.stats().closing)
                except BaseException as exc:
                    errors.append(exc)
            threads = [threading.Thread(target=run) for _ in range(8)]
            for t in threads: t.start()
            for t in threads: t.join()
            calls = pool.stats().discarded
        import nspool.workers
        nspool.workers.default_workers().shutdown(wait=True)
        print("errors", errors)
        print("calls", calls, "most", most[0], "bound", bound)
        assert not errors, errors
        assert most[0] <= bound, (most[0], bound)
        assert calls > 500, calls
        print("fds", before, len(os.listdir("/proc/self/fd")))
        """
    )
    assert result.returncode == 0, result.stdout + result.stderr
    fds = result.stdout.split("fds ")[1].split()
    assert int(fds[1]) <= int(fds[0]) + 2, result.stdout


def test_emfile_at_start_does_not_kill_the_creator_threads() -> None:
    """Start a pool while every fd is taken: the creators fail (counted in
    stats), back off and, once fds are free again, fill the pool."""
    result = _run_script(
        """
        import os, resource
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        from nspool import Kind, Pool
        from nspool import pool as pool_module
        pool_module.BACKOFF_MIN = pool_module.BACKOFF_MAX = 0.02
        for processes in (False, True):
            hog = []
            pool = Pool(Kind.NET, warm=2, creator_processes=processes)
            try:
                while True:
                    hog.append(os.open("/dev/null", os.O_RDONLY))
            except OSError:
                pass
            pool.start()
            import time; time.sleep(0.3)
            failures = pool.stats().failures
            for fd in hog: os.close(fd)
            pool.wait_ready(timeout=30)
            print(processes, "failures", failures, "ready", pool.stats().ready)
            assert failures >= 1, pool.stats()
            pool.close()
        """
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- recycled sets ------------------------------------------------------------------


def _forward_on() -> None:
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")


def _forwarding() -> str:
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        return f.read().strip()


def test_a_recycled_set_keeps_no_tenants_sysctl(executor: Workers) -> None:
    """A tenant turns ip_forward on; the recycle hook does nothing: the
    check sees the sysctl, throws the set away and counts the failure; the
    next taker's netns does not forward."""
    with Pool(Kind.NET, warm=1, max_sets=1, recycle=lambda s: None, workers=executor) as p:
        p.wait_ready(timeout=30)
        s = p.get()
        executor.run_sync(s, _forward_on)
        p.put(s)
        st = p.stats()
        assert st.failures == 1
        assert st.recycled == 0
        assert "recycle" in (st.last_failure or "")
        again = p.get(timeout=30)
        try:
            assert executor.run_sync(again, _forwarding) == "0"
            assert again is not s
        finally:
            p.put(again)


def test_a_failing_recycle_is_counted(executor: Workers) -> None:
    def broken(_s: object) -> None:
        raise HookError("reset failed")

    with Pool(Kind.NET, warm=1, recycle=broken, workers=executor) as p:
        p.put(p.get())
        st = p.stats()
        assert st.failures == 1
        assert "reset failed" in (st.last_failure or "")


# -- arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"warm": "3"}, TypeError),
        ({"warm": 2.0}, TypeError),
        ({"creators": 2.5}, TypeError),
        ({"creators": 400}, ValueError),
        ({"max_sets": "9"}, TypeError),
        ({"after_create": 5}, TypeError),
        ({"recycle": "x"}, TypeError),
        ({"verify": 1}, TypeError),
        ({"loopback": "no"}, TypeError),
        ({"creator_cpus": [10_000]}, ValueError),
        ({"creator_cpus": "0"}, TypeError),
        ({"workers": 3}, TypeError),
    ],
)
def test_bad_arguments_are_refused_at_the_constructor(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    threads = threading.active_count()
    with pytest.raises(error):
        Pool(Kind.NET, **kwargs)  # type: ignore[arg-type]
    assert threading.active_count() == threads


@pytest.mark.parametrize("bad", [None, "3", 2.5, True])
def test_workers_refuse_a_max_workers_that_is_not_an_int(bad: object) -> None:
    threads = threading.active_count()
    with pytest.raises(TypeError, match="max_workers"):
        Workers(bad)  # type: ignore[arg-type]
    assert threading.active_count() == threads
