"""A worker that stays in a set between calls (``workers.STAY_IN_SET``).

After a call in a set it may stay in (no mount namespace, the anchor to go
home by), a worker checks itself as after any call but goes home only in
the kinds outside the set, and waits idle inside the set: the next call in
that set enters nothing. These tests watch the idle threads from outside
(``/proc/self/task/TID/ns``) and with veth witnesses: an idle worker never
keeps a closed set alive, a worker that stayed goes home before any call
elsewhere, and a callable that moves it is still caught.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator

import pytest

from nspool import Kind, NamespaceSet, Workers, _native, _sys, workers
from nspool._wait import run_in
from nspool.workers import Job

from .conftest import Witness, in_threads, thread_ns, wait_until


@pytest.fixture
def one() -> Iterator[Workers]:
    """A ``Workers`` of one thread, so that every call lands on it."""
    w = Workers(max_workers=1)
    assert w._home.anchor_fd >= 0, "this kernel should support PIDFD_THREAD"
    try:
        yield w
    finally:
        w.shutdown(wait=True)


def task_net(tid: int) -> str:
    """The net link of thread ``tid``, read from outside it."""
    return os.readlink(f"/proc/self/task/{tid}/ns/net")


def worker_tids(w: Workers) -> list[int]:
    """The native ids of ``w``'s live threads."""
    return [t.thread.native_id for t in w._core._threads if t.thread.native_id is not None]


def net_of(s: NamespaceSet) -> str:
    return f"net:[{s.id(Kind.NET)}]"


def test_an_idle_worker_stays_in_the_set_and_the_next_call_enters_nothing(
    one: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two calls in a netns set the idle thread is in the set's
    netns (seen from outside), home in every other kind; the second call
    makes no setns at all. With STAY_IN_SET off it waits at home."""
    home = {name: thread_ns(name) for name in ("net", "uts", "ipc", "cgroup")}
    setns_calls: list[int] = []
    real = _sys.setns_holding_gil

    def counting(fd: int, kind: int) -> None:
        setns_calls.append(kind)
        real(fd, kind)

    with NamespaceSet.unshare(Kind.NET) as s:
        tid = one.run_sync(s, threading.get_native_id)
        assert task_net(tid) == net_of(s)
        for name in ("uts", "ipc", "cgroup"):
            assert os.readlink(f"/proc/self/task/{tid}/ns/{name}") == home[name]
        assert one.stats().idle == 1
        monkeypatch.setattr(_sys, "setns_holding_gil", counting)
        monkeypatch.setattr(one._home, "setns", counting)
        assert one.run_sync(s, os.readlink, "/proc/thread-self/ns/net") == net_of(s)
        # At most the forced return of the kinds outside the set (the
        # Python twin of the compiled check makes it through setns_holding_gil).
        assert not any(k & int(Kind.NET) for k in setns_calls), setns_calls
        monkeypatch.setattr(workers, "STAY_IN_SET", False)
        assert one.run_sync(s, threading.get_native_id) == tid
        assert task_net(tid) == home["net"]


def test_a_worker_that_stayed_goes_home_before_a_call_elsewhere(one: Workers) -> None:
    """The thread that stayed in set a runs a call at home, in a set of
    another kind and in another netns set each in exactly its namespaces."""
    home_net, home_uts = thread_ns("net"), thread_ns("uts")
    with (
        NamespaceSet.unshare(Kind.NET) as a,
        NamespaceSet.unshare(Kind.NET) as b,
        NamespaceSet.unshare(Kind.UTS) as u,
    ):

        def links() -> tuple[str, str]:
            return thread_ns("net"), thread_ns("uts")

        assert one.run_sync(a, links) == (net_of(a), home_uts)
        assert one.submit(links).result() == (home_net, home_uts)
        assert one.run_sync(a, links) == (net_of(a), home_uts)
        assert one.run_sync(u, links) == (home_net, f"uts:[{u.id(Kind.UTS)}]")
        assert one.run_sync(a, links) == (net_of(a), home_uts)
        assert one.run_sync(b, links) == (net_of(b), home_uts)
        assert one.stats().discarded == 0


def test_closing_a_set_sends_its_idle_workers_home(
    one: Workers, witness: Callable[[NamespaceSet], Witness]
) -> None:
    """An idle worker does not keep a closed set alive: when close()
    returns the thread is home, and the netns dies (its veth witness goes)."""
    s = NamespaceSet.unshare(Kind.NET)
    w = witness(s)
    tid = one.run_sync(s, threading.get_native_id)
    assert task_net(tid) == net_of(s)
    s.close()
    assert task_net(tid) == thread_ns("net")
    assert w.wait_gone(), "the closed set's netns outlived close()"
    assert one.stats().threads == 1
    assert one.stats().idle == 1


def test_a_set_closed_by_a_call_inside_it_is_left(
    one: Workers, witness: Callable[[NamespaceSet], Witness]
) -> None:
    """A callable that closes its own set: its worker does not stay in it."""
    s = NamespaceSet.unshare(Kind.NET)
    w = witness(s)
    tid = one.run_sync(s, threading.get_native_id)
    one.run_sync(s, s.close)
    assert task_net(tid) == thread_ns("net")
    assert w.wait_gone()


def test_close_while_the_scheduler_lock_is_held_still_sends_the_worker_home(
    one: Workers, witness: Callable[[NamespaceSet], Witness]
) -> None:
    """close() from a thread that holds the scheduler's lock (a finalizer
    can run anywhere) does not deadlock: a thread of its own sends the
    worker home once the lock is free."""
    s = NamespaceSet.unshare(Kind.NET)
    w = witness(s)
    tid = one.run_sync(s, threading.get_native_id)
    inside = net_of(s)
    with one._core._lock:
        s.close()
        assert task_net(tid) == inside, "nothing could have sent it home yet"
    assert wait_until(lambda: task_net(tid) == thread_ns("net"), timeout=5)
    assert w.wait_gone()
    assert wait_until(
        lambda: not any(t.name == "nspool-send-home" for t in threading.enumerate()), timeout=5
    )


def test_a_callable_that_moves_a_staying_worker_is_caught(one: Workers) -> None:
    """A callable that unshares the set's netns on a worker that stayed: the
    worker is discarded and never given another call; one that unshares a
    kind outside the set is forced home, so the next call sees home."""
    with NamespaceSet.unshare(Kind.NET) as s:
        tid = one.run_sync(s, threading.get_native_id)
        one.run_sync(s, _sys.unshare, Kind.NET)
        assert one.stats().discarded == 1
        assert one.run_sync(s, threading.get_native_id) != tid
        one.run_sync(s, _sys.unshare, Kind.UTS)
        assert one.run_sync(s, thread_ns, "uts") == thread_ns("uts")
        assert one.run_sync(s, thread_ns, "net") == net_of(s)


def test_many_sets_closed_under_load_leave_no_thread_behind(
    witness: Callable[[NamespaceSet], Witness],
) -> None:
    """Callers run calls in many sets and close them while other callers'
    calls run: every call is in its own set, and afterwards every worker
    thread is home and every netns is gone."""
    home_net = thread_ns("net")
    witnesses: list[Witness] = []
    lock = threading.Lock()
    with Workers(max_workers=4) as w:

        def caller() -> None:
            for _ in range(15):
                s = NamespaceSet.unshare(Kind.NET)
                with lock:
                    witnesses.append(witness(s))
                for _ in range(3):
                    assert w.run_sync(s, thread_ns, "net") == net_of(s)
                s.close()

        errors = in_threads(caller, 4)
        assert not errors, errors
        assert all(task_net(tid) == home_net for tid in worker_tids(w))
        assert all(v.wait_gone() for v in witnesses)


def test_an_idle_worker_in_a_set_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker idle in a set exits after IDLE_TIMEOUT as one at home does."""
    monkeypatch.setattr(workers, "IDLE_TIMEOUT", 0.1)
    with Workers() as w, NamespaceSet.unshare(Kind.NET) as s:
        assert w.run_sync(s, lambda: 5) == 5
        assert w.stats().idle == 1
        assert wait_until(lambda: w.stats().threads == 0, timeout=5)


def test_a_drainer_stays_in_the_set_without_a_second_check(
    one: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream of jobs (await s.run): the drainer that ran them stays in
    the set, checked once after each job and not again on its way out; the
    next stream enters nothing; a job that moves it is still caught."""
    checks: list[int] = []
    real = _native.check_and_return

    def counting(*args: object) -> int:
        result: int = real(*args)  # type: ignore[arg-type]
        checks.append(result)
        return result

    monkeypatch.setattr(_native, "check_and_return", counting)
    with NamespaceSet.unshare(Kind.NET) as s:
        jobs = run_stream(one, s, [threading.get_native_id, lambda: thread_ns("net")])
        tid = jobs[0].result
        assert jobs[1].result == net_of(s)
        assert checks == [_native.CHECK_OK] * 2
        assert task_net(tid) == net_of(s)
        jobs = run_stream(one, s, [lambda: _sys.unshare(Kind.NET), threading.get_native_id])
        assert checks[-2] >= _native.CHECK_LINK_MOVED
        assert one.stats().discarded == 1
        assert jobs[1].result != tid
    assert all(task_net(t) == thread_ns("net") for t in worker_tids(one))


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_awaited_calls_leave_a_worker_in_the_set_until_it_is_closed(
    one: Workers, anyio_backend: str, witness: Callable[[NamespaceSet], Witness]
) -> None:
    """await run_in(...) one at a time on asyncio and Trio: the worker
    waits in the set between awaits, and the set's close() sends it home
    (or, if it was still finishing, it does not stay)."""
    s = NamespaceSet.unshare(Kind.NET)
    w = witness(s)
    inside = net_of(s)
    tid = await run_in(one, s, threading.get_native_id)
    assert task_net(tid) == inside
    assert await run_in(one, s, thread_ns, "net") == inside
    assert await run_in(one, s, threading.get_native_id) == tid
    s.close()
    # A drainer hands each outcome over before it is done with the set, so
    # the await may return (and close() run) before it waits idle there.
    assert wait_until(lambda: task_net(tid) == thread_ns("net"), timeout=5)
    assert w.wait_gone()


def run_stream(w: Workers, s: NamespaceSet, calls: list[Callable[[], object]]) -> list[Job]:
    """Submit ``calls`` as one stream of jobs on ``s`` and wait for all."""
    remaining = threading.Semaphore(0)
    jobs = [Job(fn, (), {}, lambda _job: remaining.release()) for fn in calls]
    for job in jobs:
        w.submit_job(s, job)
    for _ in jobs:
        assert remaining.acquire(timeout=20)
    return jobs
