"""Thread-pinned workers: run callables inside a ``NamespaceSet``.

``Workers`` is a :class:`concurrent.futures.Executor` of dedicated OS
threads, each of which enters a set for a call, checks it is where it
should be, and goes home (``nspool._worker``). This module is the facade:
the executor, its counts, the process's default executor, what happens at
``os.fork()``, and the tunables, module constants that tests and
benchmarks set as ``nspool.workers.X``. The parts: where threads live
between calls (``nspool._home``), what they are handed
(``nspool._handoff``), how (``nspool._scheduler``), and the thread loop
(``nspool._worker``); each states its guarantees.

Guarantees of the facade:

* ``KEEP_GIL`` and ``USE_HOME_ANCHOR`` are read when a ``Workers`` is made
  (a choice per executor); ``CHECK_EVERY_KIND``, ``IDLE_TIMEOUT`` and
  ``STAY_IN_SET`` when a worker uses them.
* After ``os.fork()`` every ``Workers`` of the parent refuses calls in the
  child at once (:class:`WorkersForkedError`, never a hang), and the
  default executor is forgotten and made afresh on the child's first call.
* The default executor's home is the process's home namespaces, however
  it is first reached: even from a thread inside a set.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Literal, ParamSpec, TypeVar

from ._handle import HasHandle
from ._handoff import Call, Job, outcome
from ._home import LIMBO_KINDS, Home, close_orphans
from ._native import Baton
from ._scheduler import Scheduler
from ._worker import Worker
from .kinds import Kind

__all__ = [
    "CHECK_EVERY_KIND",
    "IDLE_TIMEOUT",
    "KEEP_GIL",
    "LIMBO_KINDS",
    "MAX_WORKERS",
    "START_WAIT",
    "STAY_IN_SET",
    "USE_HOME_ANCHOR",
    "Job",
    "Workers",
    "WorkersForkedError",
    "WorkersStats",
    "default_workers",
]

#: Seconds an idle worker waits for a call before its thread exits.
IDLE_TIMEOUT = 10.0
#: Seconds ``shutdown(wait=True)`` waits for a thread still being started
#: before it joins it.
START_WAIT = 5.0
#: Default maximum number of worker threads of a ``Workers``.
MAX_WORKERS = 64

#: Read every namespace link after each call instead of only those that the
#: return home cannot force (slower; catches callables that touched kinds
#: outside their set, which the forced return would otherwise just undo).
CHECK_EVERY_KIND = False
#: Let a worker stay in a set after a call until its next call, instead of
#: going home after each (checked the same; the next call in that set then
#: enters nothing). An idle worker in a set that is closed goes home before
#: ``close()`` returns.
STAY_IN_SET = True
#: Make the syscalls of a call (setns, reading links) without releasing the
#: GIL. They take microseconds, while a released GIL can take a switch
#: interval (5 ms) to get back on a busy interpreter; measured in bench/.
KEEP_GIL = True
#: Go home through a pidfd of an anchor thread (one ``setns`` for all kinds)
#: where the kernel supports it; tests turn it off to run the per-kind path.
USE_HOME_ANCHOR = True

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _Tunables:
    """The tunables workers read when they use them: this module's
    constants as they are then (``nspool._scheduler.Tunables``)."""

    __slots__ = ()

    @property
    def idle_timeout(self) -> float:
        return IDLE_TIMEOUT

    @property
    def check_every_kind(self) -> bool:
        return CHECK_EVERY_KIND

    @property
    def stay_in_set(self) -> bool:
        return STAY_IN_SET


_TUNABLES = _Tunables()


@dataclass(frozen=True)
class WorkersStats:
    """A snapshot of a ``Workers``: thread counts and what happened so far."""

    threads: int
    idle: int
    queued: int
    calls: int
    discarded: int


class WorkersForkedError(RuntimeError):
    """A ``Workers`` made before ``os.fork()`` was used in the child, where
    its threads do not exist. The default executor is remade instead."""


def _join(thread: threading.Thread) -> None:
    """Join ``thread``, which another thread may still be starting (a
    replacement, or one the spawner starts): wait for it to start first,
    :data:`START_WAIT` seconds at most (one that never starts has failed to,
    and its starter reported it)."""
    deadline = time.monotonic() + START_WAIT
    while thread.ident is None and time.monotonic() < deadline:
        time.sleep(0.001)
    if thread.ident is not None:
        thread.join()


def _refusal(forked: bool, pid: int) -> RuntimeError:
    """The error for a call to a ``Workers`` that is shut down (``forked``:
    made in process ``pid``, which forked)."""
    if forked:
        return WorkersForkedError(
            f"this Workers was made in process {pid}, which forked: its "
            "threads did not follow into this child; use default_workers() or make "
            "a new Workers here"
        )
    return RuntimeError("cannot schedule new calls after shutdown")


#: The scheduler of every live ``Workers`` (for the fork hook and
#: :func:`default_workers`).
_cores: weakref.WeakKeyDictionary[Workers, Scheduler] = weakref.WeakKeyDictionary()


class Workers(Executor):
    """An executor of dedicated threads that run calls inside namespace sets.

    ``max_workers`` threads at most; idle ones exit after
    :data:`IDLE_TIMEOUT` seconds. Threads are named ``nspool-worker-N``.
    The executor's home namespaces are those of the thread that creates it:
    worker threads live there between calls.

    ``same_cpu`` decides where a worker runs. A wake-up on the submitter's
    own CPU is far cheaper than one across CPUs on a VM (see
    ``bench/workers.py`` and ``bench/aio.py``), but a worker pinned there
    cannot run GIL-free work (a long syscall, I/O) in parallel with its
    submitter or with other workers. ``"auto"`` (the default) moves the
    worker that takes a call onto the submitter's CPU only when no other
    call is running, which is the case that wake-up latency dominates, and
    lets it run anywhere otherwise; ``True`` always moves it; ``False``
    never does.

    In rootless mode (:func:`nspool.enter_user_namespace`) no thread can
    return home: after a call a worker waits in limbo (see
    :data:`LIMBO_KINDS`) and serves only sets that hold every kind it has
    left, new threads are started by a home spawner thread, and a worker
    that entered a mount or pid namespace exits after its call.

    After ``os.fork()``, the child has none of the parent's threads: a
    ``Workers`` made before the fork refuses calls in the child at once
    with :class:`WorkersForkedError` (never a hang), and
    :func:`default_workers` (what ``s.run_sync`` and ``await s.run`` use)
    is forgotten and made afresh, with fresh threads, on the child's first
    call, as Trio's thread cache does.

    Any thread may submit. A callable may itself submit to a ``Workers``
    (the new worker thread still starts at home), but a callable that blocks
    waiting for a call on the same, saturated executor deadlocks, as with
    any bounded executor.
    """

    def __init__(
        self,
        max_workers: int = MAX_WORKERS,
        *,
        same_cpu: bool | Literal["auto"] = "auto",
        _process_home: bool = False,
    ) -> None:
        if not isinstance(max_workers, int) or isinstance(max_workers, bool):
            raise TypeError(f"max_workers must be an int, not {max_workers!r}")
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if same_cpu not in (True, False, "auto"):
            raise ValueError(f"same_cpu must be True, False or 'auto', not {same_cpu!r}")
        self._home = Home(USE_HOME_ANCHOR, keep_gil=KEEP_GIL, process_home=_process_home)
        self._core = Scheduler(
            self,
            self._home,
            Worker,
            _refusal,
            _TUNABLES,
            max_workers=max_workers,
            same_cpu=same_cpu,
        )
        _cores[self] = self._core

    # -- submitting ---------------------------------------------------------------

    def run_sync(
        self, nsset: HasHandle, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run ``fn(*args, **kwargs)`` on a worker thread inside ``nsset`` and
        return its result (or raise its exception, with its traceback).

        Pid and time namespaces of the set apply to processes ``fn`` starts;
        a thread ``fn`` starts begins inside the set and is not checked.

        Blocks the calling thread until the call is done. Raises
        :class:`SetClosedError` if the set is closed before the call starts,
        :class:`UnsupportedKindError` if the set holds a user or time
        namespace other than home's.

        Cancellation: a ``KeyboardInterrupt`` (or other exception raised in the
        waiting thread by a signal handler) stops the wait, not the call: the
        callable finishes in the background and its result is dropped.
        """
        call = Call(nsset, fn, args, kwargs, None)
        waiter = call.waiter = Baton()
        self._core.dispatch(call)
        waiter.wait()
        result: _T = outcome(*call.take())
        return result

    def submit_in(
        self, nsset: HasHandle, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> Future[_T]:
        """Schedule ``fn(*args, **kwargs)`` on a worker thread inside
        ``nsset``; the returned future holds its result or exception.

        Never blocks. Cancellation: ``future.cancel()`` succeeds only while
        the call is queued; a running call finishes.
        """
        future: Future[_T] = Future()
        self._core.dispatch(Call(nsset, fn, args, kwargs, future))
        return future

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """As :meth:`submit_in`, in the executor's home namespaces (no set).
        The thread is still checked afterwards."""
        future: Future[_T] = Future()
        self._core.dispatch(Call(None, fn, args, kwargs, future))
        return future

    def submit_job(self, nsset: HasHandle, job: Job) -> None:
        """Queue ``job`` on ``nsset``'s stream: a worker already draining it
        runs the job after the ones before it, with no hand-off of its own;
        otherwise a drainer is dispatched as a call would be. More drainers
        join while jobs wait, up to ``max_workers``, so that jobs that block
        still run side by side. Each job is checked as a call is.

        Never blocks. For front ends that await many calls at once (the
        async :func:`nspool._wait.run_in`); :meth:`submit_in` is the one-call
        equivalent with a ``Future``.
        """
        self._core.submit_job(nsset, job)

    # -- lifetime -----------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting calls; idle threads exit at once, busy ones after
        their call. ``cancel_futures`` cancels queued calls (``run_sync``
        callers waiting on them get :class:`concurrent.futures.CancelledError`);
        otherwise they still run. ``wait`` joins every thread.

        Safe to call more than once and from any thread but a worker's own
        (which cannot join itself).
        """
        threads = self._core.shutdown(cancel_futures=cancel_futures)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    _join(thread)
            close_orphans()

    @property
    def home_ids(self) -> dict[Kind, int]:
        """The inode of each home namespace of the executor (user included),
        where its threads live between calls."""
        return dict(self._home.ids)

    def stats(self) -> WorkersStats:
        """Counts of threads and calls, for monitoring and tests."""
        threads, idle, queued, calls, discarded = self._core.counts()
        return WorkersStats(
            threads=threads, idle=idle, queued=queued, calls=calls, discarded=discarded
        )

    def __repr__(self) -> str:
        st = self.stats()
        state = "shut down" if self._core.shut_down else "running"
        return (
            f"<Workers {state} threads={st.threads} idle={st.idle} "
            f"queued={st.queued} discarded={st.discarded}>"
        )


_default: Workers | None = None
_default_lock = threading.Lock()


def _after_fork_in_child() -> None:
    """``os.register_at_fork`` hook: every ``Workers`` of the parent refuses
    calls in the child (:class:`WorkersForkedError`), and the default one
    is forgotten, so that the child's first call makes fresh threads."""
    global _default, _default_lock
    # A parent's thread may have held it at the fork: a new one.
    _default, _default_lock = None, threading.Lock()
    for core in list(_cores.values()):
        core.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


def default_workers() -> Workers:
    """The process-wide ``Workers`` used when none is given; created on first
    use, with its home in the process's home namespaces (those of the thread
    that imported nspool), however it is first reached: even from a
    thread inside a set (``call_inline``, a callable on a worker)."""
    global _default
    with _default_lock:
        if _default is None or _cores[_default].shut_down:
            _default = Workers(_process_home=True)
        return _default
