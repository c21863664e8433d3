"""Thread-pinned workers: run callables inside a ``NamespaceSet``.

``Workers`` is a :class:`concurrent.futures.Executor` of dedicated OS
threads. A call goes to one worker thread, which

1. enters the set's namespaces in :data:`~nspool.kinds.SETNS_ORDER`,
   skipping kinds it is already in;
2. runs the callable in a copy of the submitter's ``contextvars``;
3. checks that it is in exactly the namespaces it entered, for every kind
   (``pid_for_children`` and ``time_for_children`` included), so a callable
   that called ``unshare`` or ``setns`` itself is caught;
4. goes home (and after a mount namespace, back to its cwd and root), and
   checks again.

A thread that fails a check, or cannot go home, is *discarded*: it exits and
never takes another call, the event is logged and counted, and a new thread
takes its place when there is work. The caller gets the callable's result or
exception either way. No thread ever runs a call in namespaces it was not
asked for.

Guarantees and the reasons for them, in the manner of Trio's thread cache:

* Hand-over without a queue: an idle worker waits on its own lock; a
  submitter takes the most recently idle worker (LIFO: its caches are warm)
  and releases that lock. One lock release wakes exactly one thread.
* A worker marks itself idle *before* it delivers a result, so a caller that
  submits again as soon as it is woken finds that same thread free.
* Pool state (idle list, queue, counts) changes under one lock; syscalls and
  closes happen outside it.
* A worker holds only a weak reference to its ``Workers`` while idle, so an
  unreferenced executor can be collected; its threads then exit.
* Every worker thread starts by moving itself to the executor's home
  namespaces (those of the thread that made the ``Workers``): a new thread
  inherits its creator's namespaces, and the creator may be a thread inside
  a set (a callable that submits more work).

Kernel limits a worker cannot lift: a multi-threaded process cannot join a
user namespace (``EINVAL``) or a time namespace (``EUSERS``), so a set whose
user or time namespace differs from home is refused with
:class:`UnsupportedKindError`. Pid and time namespaces apply only to
processes the callable starts; a set with a pid namespace keeps an init in it
(see ``NamespaceSet``), so those processes are its PIDs 2, 3, ...
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import copy
import errno
import itertools
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Executor, Future
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

from . import _sys
from ._create import create
from ._handle import HasHandle, SetHandle, close_fds
from ._thread_ns import (
    CHECKED,
    FORCED,
    FORCED_BITS,
    FORCED_WITH_MNT,
    FORCED_WITH_MNT_BITS,
    HOME_CHECKED,
    HOME_ORDER,
    MNT_BITS,
    THREAD_NS_DIR,
    UNJOINABLE,
    ThreadLinks,
    checked_after,
    open_thread_ns,
    same_file,
    setns_for,
    thread,
)
from .errors import NamespaceError, UnsupportedKindError
from .kinds import Kind

__all__ = [
    "IDLE_TIMEOUT",
    "MAX_WORKERS",
    "Workers",
    "WorkersForkedError",
    "WorkersStats",
    "default_workers",
]

logger = logging.getLogger("nspool")

#: Seconds an idle worker waits for a call before its thread exits.
IDLE_TIMEOUT = 10.0
#: Default maximum number of worker threads of a ``Workers``.
MAX_WORKERS = 64

#: Read every namespace link after each call instead of only those that the
#: return home cannot force (slower; catches callables that touched kinds
#: outside their set, which the forced return would otherwise just undo).
CHECK_EVERY_KIND = False
#: Make the syscalls of a call (setns, reading links) without releasing the
#: GIL. They take microseconds, while a released GIL can take a switch
#: interval (5 ms) to get back on a busy interpreter; measured in bench/.
KEEP_GIL = True
#: Go home through a pidfd of an anchor thread (one ``setns`` for all kinds)
#: where the kernel supports it; tests turn it off to run the per-kind path.
USE_HOME_ANCHOR = True

#: Kinds a worker that cannot go home (rootless mode) parks in the process's
#: *limbo* set between calls instead: empty namespaces of nspool's own, so
#: that an idle thread keeps no set alive. A worker that has left home in
#: another kind (mnt, pid) exits after its call instead.
LIMBO_KINDS = Kind.NET | Kind.UTS | Kind.IPC | Kind.CGROUP
_LIMBO_BITS = int(LIMBO_KINDS)

_P = ParamSpec("_P")
_T = TypeVar("_T")

_worker_numbers = itertools.count(1)
#: The process's home namespaces, opened once at import (normally on the
#: main thread, before any set is entered): the default executor's home.
_PROCESS_HOME: dict[Kind, int] = {k: open_thread_ns(k) for k in CHECKED}
#: ``on`` in a worker thread found with its own fs or fd table.
_tainted = threading.local()


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


class _Discard(Exception):
    """Raised inside a worker when its thread must not be reused."""


class _Spent(Exception):
    """Raised inside a worker that cannot go home (rootless mode) and has
    left it in a kind its limbo does not cover: it exits, healthy, and a
    fresh thread takes over."""


class _Call:
    """One submitted call and where its outcome goes.

    ``deliver`` runs on the worker thread after the worker is home (or
    discarded). The waiter is either a ``Future`` (``submit_in``) or a bare
    lock that the blocked caller waits on (``run_sync``): a lock is the
    cheapest wake-up CPython has.
    """

    __slots__ = (
        "args",
        "context",
        "error",
        "fn",
        "future",
        "kwargs",
        "nsset",
        "ran",
        "result",
        "stream",
        "waiter",
    )

    def __init__(
        self,
        nsset: HasHandle | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: Future[Any] | None,
    ) -> None:
        self.nsset = nsset
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.context = contextvars.copy_context()
        self.future = future
        self.waiter: threading.Lock | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.ran = False
        #: Set for a drainer: this call runs the stream's jobs instead.
        self.stream: _Stream | None = None

    def start(self) -> bool:
        """Whether the call should run (a cancelled future's does not)."""
        return self.future is None or self.future.set_running_or_notify_cancel()

    def deliver(self) -> None:
        future, error = self.future, self.error
        if future is not None:
            if future.cancelled():
                pass  # withdrawn before it ran: nobody takes an outcome
            elif error is not None:
                future.set_exception(error)
            else:
                future.set_result(self.result)
            # Drop references so the call's objects do not live on with us.
            self.result = self.error = None
        elif self.waiter is not None:
            self.waiter.release()
        self.fn = self.args = self.kwargs = None  # type: ignore[assignment]
        self.context = None  # type: ignore[assignment]


class Job:
    """One call in a stream of calls for one set (:meth:`Workers.submit_job`),
    for front ends that wait for many calls at once.

    The job runs on whichever worker is draining its set's stream; that
    worker calls ``on_done(job)`` afterwards, on its own thread, with the
    outcome in :attr:`result` or :attr:`error`. Setting :attr:`cancelled`
    withdraws the job if no worker has taken it yet (``on_done`` is then
    never called); a job already taken finishes. A waiter that must know
    which of the two happened calls :meth:`take` instead: the worker takes
    the same claim before running the job, and only one of them gets it.
    """

    __slots__ = (
        "args",
        "cancelled",
        "claim",
        "context",
        "error",
        "fn",
        "kwargs",
        "on_done",
        "result",
    )

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        on_done: Callable[[Job], None],
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.context = contextvars.copy_context()
        self.on_done = on_done
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancelled = False
        #: The claim token (see :meth:`take`).
        self.claim = {0: True}

    def take(self) -> bool:
        """Take the job's claim: ``True`` for exactly one caller, the worker
        about to run it or a waiter withdrawing it (``dict.pop`` is atomic,
        with or without the GIL)."""
        return self.claim.pop(0, False)


class _Stream:
    """The jobs waiting for one set, taken in order by its drainers: worker
    calls that enter the set once and run job after job, checked after each,
    until none is left. ``drainers`` counts those running or dispatched;
    ``growing`` is set while one more is on its way; ``busy`` holds the
    drainers taking or running a job (a set: ``add`` and ``discard`` are
    atomic, so the drainers update it without the lock)."""

    __slots__ = ("busy", "drainers", "growing", "jobs", "nsset")

    def __init__(self, nsset: HasHandle) -> None:
        self.nsset = nsset
        self.jobs: collections.deque[Job] = collections.deque()
        self.drainers = 0
        self.growing = False
        self.busy: set[_Worker] = set()


class _Home:
    """The namespaces a ``Workers``'s threads live in between calls: an fd
    and inode number per kind, the root directory, and the *anchor*.

    The anchor is an idle thread that never leaves home. A pidfd for that one
    thread (``PIDFD_THREAD``, Linux 6.9+) lets a worker go home in a single
    ``setns`` for every restorable kind at once, all or nothing, whatever the
    callable did to them; on older kernels workers go home kind by kind.
    Owned by the ``Workers`` and closed when its last thread is gone.
    """

    def __init__(
        self,
        use_anchor: bool,
        *,
        keep_gil: bool = True,
        spawner: bool = True,
        process_home: bool = False,
    ) -> None:
        #: Whether its workers' syscalls keep the GIL (:data:`KEEP_GIL`, as
        #: it was when the executor was made), and the ``setns`` that says.
        self.keep_gil = keep_gil
        self.setns = setns_for(keep_gil)
        self._users = 1
        self._users_lock = threading.Lock()
        #: The task a worker's fs and fd table are compared with (``kcmp``):
        #: the process's main thread, whose fs and files every thread shares.
        self.pid = os.getpid()
        self.fds: dict[Kind, int] = {}
        self.root = -1
        self.anchor_fd = -1
        self._anchor: threading.Thread | None = None
        self._spawner: threading.Thread | None = None
        self._to_start: queue.SimpleQueue[tuple[threading.Thread, Future[None]] | None] = (
            queue.SimpleQueue()
        )
        try:
            for kind in CHECKED:
                self.fds[kind] = (
                    os.dup(_PROCESS_HOME[kind]) if process_home else open_thread_ns(kind)
                )
            #: Whether a thread that left home can ``setns`` back. Not in
            #: rootless mode: home then belongs to an ancestor user namespace,
            #: in which this process has no capabilities.
            self.returnable = all(_sys.may_return(fd) for fd in self.fds.values())
            #: Where threads that cannot come home wait between calls.
            self.limbo: SetHandle | None = None
            self.limbo_fds: dict[Kind, int] = {}
            self.limbo_ids: dict[Kind, int] = {}
            if not self.returnable:
                use_anchor = False
                self.limbo = _acquire_limbo()
                with self.limbo.borrow() as limbo_fds:
                    self.limbo_fds = dict(limbo_fds)
                    self.limbo_ids = dict(self.limbo.ids_of_acquired())
                if spawner:
                    self._start_spawner()
            self.root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.root_stat = os.fstat(self.root)
            # A forced return sets pid_for_children to the anchor's own pid
            # namespace: usable only if home's pid_for_children is that one.
            own_pid = os.stat(os.path.join(THREAD_NS_DIR, "pid")).st_ino
            # The anchor starts where this thread is: only if that is home
            # (the default executor may be first reached from inside a set).
            at_home = all(
                os.stat(os.path.join(THREAD_NS_DIR, k.for_children_name)).st_ino
                == os.fstat(self.fds[k]).st_ino
                for k in CHECKED
            )
            if use_anchor and at_home and own_pid == os.fstat(self.fds[Kind.PID]).st_ino:
                self._start_anchor()
            #: Whether every thread is started by the spawner (rootless).
            self.always_spawn = self._spawner is not None
            if spawner and self._anchor is None and self._spawner is None:
                # Starts threads for workers that lost the process's fs or
                # files (the anchor does, where there is one).
                self._start_spawner()
        except BaseException:
            self.close()
            raise
        self.ids = {k: os.fstat(fd).st_ino for k, fd in self.fds.items()}
        # The user namespace is known but never checked: a thread of a
        # threaded process cannot leave it.
        self.ids[Kind.USER] = os.stat(os.path.join(THREAD_NS_DIR, "user")).st_ino

    def _start_anchor(self) -> None:
        started = threading.Event()
        tid: list[int] = []

        def stay_home() -> None:
            tid.append(threading.get_native_id())
            started.set()
            self._serve_starts()

        self._anchor = threading.Thread(target=stay_home, name="nspool-home", daemon=True)
        self._anchor.start()
        started.wait()
        try:
            self.anchor_fd = _sys.pidfd_open(tid[0], _sys.PIDFD_THREAD)
        except NamespaceError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: no PIDFD_THREAD before 6.9
                raise
            self._stop_anchor()

    def _serve_starts(self) -> None:
        """The loop of the anchor or the spawner: start the threads queued by
        :meth:`start` until ``None`` comes."""
        while (item := self._to_start.get()) is not None:
            thread, started = item
            try:
                thread.start()
            except BaseException as exc:
                started.set_exception(exc)
            else:
                started.set_result(None)

    def _start_spawner(self) -> None:
        """A home thread that starts the worker threads (see :meth:`start`)."""
        self._spawner = threading.Thread(
            target=self._serve_starts, name="nspool-spawner", daemon=True
        )
        self._spawner.start()

    def start(self, thread: threading.Thread) -> None:
        """Start ``thread`` so that it begins at home. A new thread begins in
        the namespaces of the thread that starts it; where threads cannot
        come home (rootless mode) a thread that has left home (a worker
        after its call, a submitter inside a set) cannot start one, so the
        spawner, which never leaves, starts them all."""
        if not self.always_spawn and not getattr(_tainted, "on", False):
            thread.start()
            return
        # A tainted thread (its own fs or fd table) would pass them on.
        started: Future[None] = Future()
        self._to_start.put((thread, started))
        started.result()

    def _stop_anchor(self) -> None:
        anchor, self._anchor = self._anchor, None
        if anchor is not None:
            self._to_start.put(None)
            if anchor is not threading.current_thread():
                anchor.join()

    def acquire(self) -> _Home:
        """One more user (a worker thread); each calls :meth:`release`."""
        with self._users_lock:
            self._users += 1
        return self

    def release(self) -> None:
        """Drop one user; the last closes the fds and stops the anchor."""
        with self._users_lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self.close()

    def close(self) -> None:
        self._stop_anchor()
        limbo, self.limbo = getattr(self, "limbo", None), None
        if limbo is not None:
            _release_limbo()
        spawner, self._spawner = self._spawner, None
        if spawner is not None:
            self._to_start.put(None)
            if spawner is not threading.current_thread():
                spawner.join()
        fds = [*self.fds.values(), self.root, self.anchor_fd]
        self.fds, self.root, self.anchor_fd = {}, -1, -1
        close_fds(fd for fd in fds if fd >= 0)


_limbo_lock = threading.Lock()
_limbo: SetHandle | None = None
_limbo_users = 0


def _acquire_limbo() -> SetHandle:
    """The process's one limbo set (made on first use, while anything
    uses it): one netns and friends, not one per executor or creator, since
    a process in its own user namespace may have a small netns quota."""
    global _limbo, _limbo_users
    with _limbo_lock:
        if _limbo is None:
            _limbo = create(LIMBO_KINDS)
        _limbo_users += 1
        return _limbo


def _release_limbo() -> None:
    global _limbo, _limbo_users
    with _limbo_lock:
        _limbo_users -= 1
        limbo = _limbo if _limbo_users == 0 else None
        if limbo is not None:
            _limbo = None
    if limbo is not None:
        limbo.close()


class _Worker:
    """One dedicated thread. Idle, it waits on ``wake``; a submitter puts a
    call in ``call`` and releases ``wake``. ``call`` set to ``None`` with
    ``wake`` released means: exit."""

    def __init__(self, workers: Workers, first: _Call | None) -> None:
        self.workers_ref = weakref.ref(workers)
        self.home = workers._home.acquire()
        self.wake = threading.Lock()
        self.wake.acquire()
        self.call: _Call | None = first
        self.thread = threading.Thread(
            target=self._main, name=f"nspool-worker-{next(_worker_numbers)}", daemon=True
        )
        # Where the thread is, by kind: kept by the worker itself, so it
        # knows which kinds to skip without asking the kernel.
        self.here: dict[Kind, int] = dict(self.home.ids)
        self.links: ThreadLinks | None = None
        self.tid = 0
        #: False once the thread is found with a private fd table.
        self.shares_files = True
        self.cpu = -1
        # Whether the thread has its own cwd and root (unshare(CLONE_FS)),
        # which joining a mount namespace requires.
        self.own_fs = False
        #: Rootless mode: the kinds in which the thread is in limbo, not at
        #: home; it serves only sets that hold all of them.
        self.strayed = 0
        #: Whether its exit should let a fresh thread take queued calls.
        self.spent = False

    # -- the thread -----------------------------------------------------------

    def move_to(self, cpu: int) -> None:
        """Run on ``cpu`` only, or on any CPU the executor may use if ``cpu``
        is -1 (the ``same_cpu`` option). Called by the submitter while the
        worker waits; a new thread applies it itself."""
        if cpu == self.cpu:
            return
        self.cpu = cpu
        tid = self.thread.native_id
        if tid is not None:
            with contextlib.suppress(OSError):  # the thread may just have exited
                os.sched_setaffinity(tid, self._cpus(cpu))

    def _cpus(self, cpu: int) -> set[int]:
        if cpu >= 0:
            return {cpu}
        workers = self.workers_ref()
        return workers._cpus if workers is not None else os.sched_getaffinity(0)

    def _main(self) -> None:
        call, self.call = self.call, None
        if self.cpu >= 0:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, self._cpus(self.cpu))
        try:
            self._settle()
        except BaseException as exc:
            logger.error("nspool worker could not settle at home: %s", exc)
            stream = call.stream if call is not None else None
            if call is not None:
                call.error = exc
            self._retire(call, discarded=True)
            workers = self.workers_ref()
            if stream is not None and workers is not None:
                # A drainer's call has no waiter: the stream's jobs do.
                workers._fail_waiting(stream, exc)
            self._close()
            return
        try:
            while True:
                if call is None:
                    call = self._wait()
                    if call is None:
                        return
                if not self._serve(call):
                    return
                call = None
        finally:
            self._close()

    def _close(self) -> None:
        if not self.shares_files:
            # Closes here would reach only this thread's private fd table:
            # a thread that shares the process's does them.
            links = self.links
            with _orphans_lock:
                if links is not None:
                    _orphans.append(links.close)
                _orphans.append(self.home.release)
            return
        if self.links is not None:
            self.links.close()
        self.home.release()
        _close_orphans()

    def _settle(self) -> None:
        """Open this thread's namespace directory and make sure the thread is
        in the executor's home namespaces (it starts in its creator's)."""
        _close_orphans()
        self.links = ThreadLinks(keep_gil=self.home.keep_gil)
        self.tid = threading.get_native_id()
        self.here = {**self.home.ids, **self.links.read(CHECKED)}
        for kind in HOME_ORDER:
            if kind in self.here and self.here[kind] != self.home.ids[kind]:
                if kind in UNJOINABLE:
                    raise UnsupportedKindError(
                        errno.EUSERS,
                        syscall="setns",
                        kind=kind,
                        detail="the thread that made this Workers has moved to another "
                        f"{kind} namespace; worker threads cannot follow",
                    )
                self._setns_home(kind)
        self._check(CHECKED, self.home.ids, "after settling")

    def _wait(self) -> _Call | None:
        """Wait for a call; ``None`` means exit (shutdown or idle timeout)."""
        while True:
            if self.wake.acquire(timeout=IDLE_TIMEOUT):
                call, self.call = self.call, None
                if call is None:
                    self._retire(None, discarded=False, spent=self.spent)
                return call
            workers = self.workers_ref()
            if workers is None or workers._retire_idle(self):
                self._retire(None, discarded=False)
                return None
            # A submitter picked us just as the wait timed out: take its call.

    def _serve(self, call: _Call) -> bool:
        """Run ``call`` and deliver its outcome; whether the thread stays."""
        if not call.start():  # a future cancelled while queued
            self._after(call)
            return True
        try:
            self._run(call)
        except _Spent:
            self._retire(call, discarded=False, spent=True)
            return False
        except _Discard as exc:
            logger.warning("nspool worker %s discarded: %s", self.thread.name, exc)
            self._retire(call, discarded=True)
            return False
        except BaseException as exc:
            # A fault of nspool itself: the thread's state is unknown, so it
            # goes; the caller still hears of the call.
            logger.exception("nspool worker %s failed; discarded", self.thread.name)
            if not call.ran:
                call.error = exc
            self._retire(call, discarded=True)
            return False
        return self.workers_ref() is not None

    def _run(self, call: _Call) -> None:
        """Enter, call, check, go home. Raises :class:`_Discard` if the thread
        must not be reused; the call's outcome is in ``call`` either way."""
        s = call.nsset
        if self.own_fs and (s is None or not s.handle.bits & MNT_BITS):
            self._follow_process_cwd()
        if call.stream is not None:
            self._drain(call.stream)
            self._after(call)
            return
        if s is None:
            self._call(call)
            self._leave(0, self.home.ids)
            self._after(call)
            return

        def fail(exc: BaseException) -> None:
            call.error = exc

        self._in_set(s, lambda _expected: self._call(call), fail)
        self._after(call)

    def _in_set(
        self,
        s: HasHandle,
        body: Callable[[dict[Kind, int]], None],
        fail: Callable[[BaseException], None],
    ) -> None:
        """Enter ``s``, run ``body(expected)`` with ``s`` as
        :func:`current`, check and go home. ``fail(error)`` instead of
        ``body`` if ``s`` is closed or cannot be entered. Raises
        :class:`_Discard` if the thread must not be reused."""
        h = s.handle
        try:
            h.acquire()
        except NamespaceError as exc:
            fail(exc)
            return
        try:
            expected = dict(self.here)
            try:
                self._enter(h, expected)
            except OSError as exc:
                fail(exc)
                self._leave(h.bits, self.here)
                return
            thread.stack.append(s)
            try:
                body(expected)
            finally:
                thread.stack.pop()
            self._leave(h.bits, expected)
        finally:
            h.leave()

    def _drain(self, stream: _Stream) -> None:
        """Enter the stream's set once and run its jobs until none is left,
        each checked as a call is (:meth:`_between_jobs`), then go home.
        Raises :class:`_Discard` as :meth:`_run` does; the jobs left are
        then drained by another thread."""
        workers = self.workers_ref()
        if workers is None:
            return
        stream.growing = False
        self._in_set(
            stream.nsset,
            lambda expected: self._run_jobs(workers, stream, expected),
            lambda exc: workers._fail_stream(stream, exc),
        )

    def _run_jobs(self, workers: Workers, stream: _Stream, expected: dict[Kind, int]) -> None:
        """Run jobs until the stream is empty, each outcome handed over as
        soon as the thread is checked (the submitter's side batches its
        wake-ups: see ``nspool._wait``)."""
        jobs, h = stream.jobs, stream.nsset.handle
        bits = h.bits
        busy = stream.busy
        while True:
            # Counted busy before taking a job: a job submitted from now on
            # brings another drainer unless one of them is free.
            busy.add(self)
            try:
                job = jobs.popleft()
            except IndexError:
                busy.discard(self)
                if workers._drainer_done(stream):
                    return
                continue
            if jobs and not stream.growing:
                workers._grow(stream)  # more waiting: another thread may help
            if job.cancelled or not job.take():  # withdrawn by its waiter
                busy.discard(self)
                continue
            if h.closed:
                job.error = h.closed_error()
                busy.discard(self)
                job.on_done(job)
                continue
            try:
                job.result = job.context.run(job.fn, *job.args, **job.kwargs)
            except BaseException as exc:
                job.error = exc
            try:
                self._between_jobs(bits, expected)
            except _Discard:
                busy.discard(self)
                job.on_done(job)
                workers._drainer_lost(stream)
                raise
            busy.discard(self)
            job.on_done(job)

    def _between_jobs(self, kind_bits: int, expected: dict[Kind, int]) -> None:
        """After a job, before the next one in the same set: the thread must
        still be in the set (the kinds read back after any call), and in
        home's namespaces for every other kind, forced back by one
        ``setns`` on the anchor. Without the anchor (or going home) every
        kind is read instead. Raises :class:`_Discard`."""
        self._check_shared(kind_bits, "after the call")
        anchor = self.home.anchor_fd
        if anchor < 0 or CHECK_EVERY_KIND:
            self._check(CHECKED, expected, "after the call")
            return
        self._check(checked_after(kind_bits), expected, "after the call")
        others = FORCED_BITS & ~kind_bits
        if others:
            try:
                self.home.setns(anchor, others)
            except OSError as exc:
                raise _Discard(f"cannot go home: {exc}") from exc

    def _enter(self, h: SetHandle, expected: dict[Kind, int]) -> None:
        """Enter ``s``'s kinds that the thread is not in yet. ``expected`` is
        updated to where the thread must be afterwards."""
        ids = h.ids_of_acquired()
        here = self.here
        entered: list[Kind] = []
        for kind, fd in h.order:
            want = ids[kind]
            if kind is not Kind.USER:
                expected[kind] = want
            if here.get(kind, want) == want:
                continue
            if kind in UNJOINABLE:
                raise UnsupportedKindError(
                    errno.EUSERS if kind is Kind.TIME else errno.EINVAL,
                    syscall="setns",
                    kind=kind,
                    detail="a thread of a multi-threaded process cannot join another "
                    f"{kind} namespace; start a process instead",
                )
            if kind is Kind.MNT and not self.own_fs:
                _sys.unshare_fs()
                self.own_fs = True
            self.home.setns(fd, kind)
            here[kind] = want
            if kind is not Kind.USER:
                entered.append(kind)
        if entered:
            self._check_entered(h, entered, ids)

    def _check_entered(self, h: SetHandle, entered: list[Kind], ids: dict[Kind, int]) -> None:
        """The thread is in the set's namespaces (ids compared) before the
        callable starts: a set's fd number may have been closed and reused
        for another namespace behind its back. Raises ``NamespaceError``
        (the caller then discards the thread)."""
        assert self.links is not None
        actual = self.links.read(entered)
        for kind in entered:
            if actual[kind] != ids[kind]:
                raise NamespaceError(
                    errno.ESTALE,
                    syscall="setns",
                    kind=kind,
                    detail=f"the set's {kind} fd {h.fds.get(kind)} now refers to "
                    f"{kind} namespace {actual[kind]}, not {ids[kind]}: was it closed "
                    "and its number reused? Do not close a set's fds; use s.dup()",
                )

    def _call(self, call: _Call) -> None:
        call.ran = True
        try:
            call.result = call.context.run(call.fn, *call.args, **call.kwargs)
        except BaseException as exc:
            call.error = exc

    def _leave(self, kind_bits: int, expected: dict[Kind, int]) -> None:
        """After a call in a set of ``kind_bits``: check the thread is where it
        should be (``expected``), then take it home. Raises :class:`_Discard`.

        With the anchor, only what a forced return does not cover is read:
        the set's own kinds (a callable that moved the thread in them is
        caught), ``time_for_children`` (no threaded process can join a time
        namespace) and mnt (forced only when the set entered it, since the
        return resets cwd and root). Every other kind is forced home by the
        one ``setns``, whatever the callable did to it.
        :data:`CHECK_EVERY_KIND` reads every kind.
        """
        self._check_shared(kind_bits, "after the call")
        if not self.home.returnable:
            self._check(CHECKED, expected, "after the call")
            self._to_limbo()
            return
        anchor = self.home.anchor_fd
        if anchor < 0 or CHECK_EVERY_KIND:
            checked: Iterable[Kind] = CHECKED
        else:
            checked = checked_after(kind_bits)
        self._check(checked, expected, "after the call")
        if anchor >= 0:
            # mnt only if the set moved it: a setns into a mount namespace
            # resets cwd and root, even into the one the thread is in.
            home_ids, here = self.home.ids, self.here
            left_mnt = here[Kind.MNT] != home_ids[Kind.MNT]
            try:
                if left_mnt:
                    self.home.setns(anchor, FORCED_WITH_MNT_BITS)
                    self._restore_fs()
                else:
                    self.home.setns(anchor, FORCED_BITS)
            except OSError as exc:
                raise _Discard(f"cannot go home: {exc}") from exc
            for kind in FORCED_WITH_MNT if left_mnt else FORCED:
                here[kind] = home_ids[kind]
            return
        entered = [k for k in HOME_CHECKED if self.here[k] != self.home.ids[k]]
        try:
            for kind in entered:
                self._setns_home(kind)
        except OSError as exc:
            raise _Discard(f"cannot go home: {exc}") from exc
        self._check(entered, self.home.ids, "after going home")

    def _to_limbo(self) -> None:
        """Rootless mode, after a call: move out of the set's namespaces into
        the executor's limbo (home cannot be reached again), so that the
        idle thread keeps no set alive. A thread that left home in a kind
        limbo does not cover raises :class:`_Spent`."""
        home, here = self.home, self.here
        strayed = 0
        for kind in CHECKED:
            where = here[kind]
            if where == home.ids[kind]:
                continue
            if not int(kind) & _LIMBO_BITS:
                raise _Spent
            if where != home.limbo_ids[kind]:
                try:
                    self.home.setns(home.limbo_fds[kind], kind)
                except OSError as exc:
                    raise _Discard(f"cannot leave the set: {exc}") from exc
                here[kind] = home.limbo_ids[kind]
            strayed |= int(kind)
        self.strayed = strayed

    def _after(self, call: _Call) -> None:
        """The worker is home and healthy: mark it idle (or give it the next
        queued call), then deliver."""
        workers = self.workers_ref()
        if workers is not None:
            workers._mark_idle_or_take(self, deliver=call)
        else:
            call.deliver()

    def _check(self, kinds: Iterable[Kind], expected: dict[Kind, int], when: str) -> None:
        try:
            assert self.links is not None
            actual = self.links.read(kinds)
        except OSError as exc:
            raise _Discard(f"cannot read its namespaces {when}: {exc}") from exc
        moved = [str(k) for k, ino in actual.items() if ino != expected[k]]
        if moved:
            raise _Discard(f"in unexpected {', '.join(moved)} namespaces {when}")

    def _check_shared(self, kind_bits: int, when: str) -> None:
        """The thread must still share the process's fd table and, unless it
        has its own for a mount namespace, its fs (cwd, root, umask): a
        callable that did ``unshare(CLONE_FILES)`` or ``unshare(CLONE_FS)``
        (and ``chroot``, ``chdir``) is caught. One ``kcmp`` each (about a
        microsecond); a thread with its own fs has its root compared
        instead, unless it is in a set's mount namespace (going home resets
        both). Raises :class:`_Discard`."""
        pid, tid = self.home.pid, self.tid
        try:
            files = _sys.kcmp(pid, tid, _sys.KCMP_FILES)
            if kind_bits & MNT_BITS:
                fs = 0
            elif self.own_fs:
                fs = 0 if same_file(os.stat("/"), self.home.root_stat) else 1
            else:
                fs = _sys.kcmp(pid, tid, _sys.KCMP_FS)
        except OSError as exc:
            raise _Discard(f"cannot compare its fs and files with pid {pid} {when}: {exc}") from exc
        if files or fs:
            # Threads it starts would share its fs and files: the home
            # thread starts them (see _Home.start).
            _tainted.on = True
        if files:
            self.shares_files = False
            raise _Discard(
                f"no longer shares the fd table of pid {pid} {when} "
                "(the callable called unshare(CLONE_FILES))"
            )
        if fs:
            raise _Discard(
                f"no longer shares the cwd and root of pid {pid} {when} "
                "(the callable called unshare(CLONE_FS), chroot or chdir)"
            )

    def _setns_home(self, kind: Kind) -> None:
        if kind is Kind.MNT and not self.own_fs:
            _sys.unshare_fs()
            self.own_fs = True
        self.home.setns(self.home.fds[kind], kind)
        self.here[kind] = self.home.ids[kind]
        if kind is Kind.MNT:
            self._restore_fs()

    def _restore_fs(self) -> None:
        """``setns`` into a mount namespace resets root and cwd to that
        namespace's root; put back the home root and the process's cwd."""
        os.fchdir(self.home.root)
        os.chroot(".")
        self._follow_process_cwd()

    def _follow_process_cwd(self) -> None:
        """A worker that has joined a mount namespace has its own cwd from
        then on; before other calls it takes the process's current one, as a
        thread sharing it would see."""
        os.chdir(f"/proc/{os.getpid()}/cwd")

    def _retire(self, call: _Call | None, *, discarded: bool, spent: bool = False) -> None:
        workers = self.workers_ref()
        if workers is not None:
            workers._forget(self, discarded=discarded, spent=spent)
        if call is not None:
            call.deliver()


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
        self._max_workers = max_workers
        self._same_cpu = same_cpu
        # The CPUs an unpinned worker may use: the creator's, as a new
        # thread would inherit them.
        self._cpus = os.sched_getaffinity(0)
        self._home = _Home(USE_HOME_ANCHOR, keep_gil=KEEP_GIL, process_home=_process_home)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        # Rootless mode only: idle workers in limbo, by the kinds they left.
        self._strayed: dict[int, list[_Worker]] = {}
        self._queue: collections.deque[_Call] = collections.deque()
        self._streams: dict[HasHandle, _Stream] = {}
        self._threads: set[_Worker] = set()
        # Threads forgotten (discarded or spent) but perhaps not yet ended:
        # shutdown(wait=True) joins them too.
        self._leaving: set[threading.Thread] = set()
        self._shutdown = False
        #: Set in a child process after ``os.fork()``: the threads stayed
        #: in the parent, so the executor refuses calls.
        self._forked = False
        self._calls = 0
        self._discarded = 0
        # Runs once: at shutdown, or when the executor is collected unshut.
        self._stop_idle = weakref.finalize(
            self, _stop_idle, self._lock, self._idle, self._strayed, self._home
        )
        _all_workers.add(self)

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
        call = _Call(nsset, fn, args, kwargs, None)
        waiter = call.waiter = threading.Lock()
        waiter.acquire()
        self._dispatch(call)
        waiter.acquire()
        error = call.error
        if error is not None:
            call.error = None
            try:
                raise error
            finally:
                del error
        result: _T = call.result
        call.result = None
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
        self._dispatch(_Call(nsset, fn, args, kwargs, future))
        return future

    def submit(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> Future[_T]:
        """As :meth:`submit_in`, in the executor's home namespaces (no set).
        The thread is still checked afterwards."""
        future: Future[_T] = Future()
        self._dispatch(_Call(None, fn, args, kwargs, future))
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
        with self._lock:
            if self._shutdown:
                raise self._refusal()
            self._calls += 1
            stream = self._streams.get(nsset)
            if stream is None:
                stream = self._streams[nsset] = _Stream(nsset)
            stream.jobs.append(job)
            if stream.drainers:
                # Every drainer busy (a job that blocks, say): one more joins.
                if (
                    len(stream.busy) < stream.drainers
                    or stream.growing
                    or stream.drainers >= self._max_workers
                ):
                    return
                stream.growing = True
            stream.drainers += 1
        self._dispatch_drainer(stream)

    def _dispatch_drainer(self, stream: _Stream) -> None:
        call = _Call(stream.nsset, _drain_marker, (), {}, None)
        call.stream = stream
        try:
            self._dispatch(call, count=False)
        except BaseException:
            with self._lock:
                stream.drainers -= 1
                stream.growing = False
            raise

    def _grow(self, stream: _Stream) -> None:
        """Jobs are waiting behind a running one: dispatch one more drainer
        (one at a time, ``max_workers`` at most)."""
        if stream.drainers >= self._max_workers:  # a hint, read without the lock
            return
        with self._lock:
            if stream.growing or self._shutdown or stream.drainers >= self._max_workers:
                return
            stream.growing = True
            stream.drainers += 1
        with contextlib.suppress(RuntimeError):  # shut down meanwhile
            self._dispatch_drainer(stream)

    def _drainer_done(self, stream: _Stream) -> bool:
        """A drainer found no job: it stops, unless one arrived meanwhile."""
        with self._lock:
            if stream.jobs:
                return False
            stream.drainers -= 1
            if not stream.drainers and self._streams.get(stream.nsset) is stream:
                del self._streams[stream.nsset]
            return True

    def _drainer_lost(self, stream: _Stream) -> None:
        """A drainer's thread was discarded: another takes over if jobs wait."""
        with self._lock:
            stream.drainers -= 1
            replace = bool(stream.jobs) and not self._shutdown
            if replace:
                stream.drainers += 1
            elif not stream.drainers and self._streams.get(stream.nsset) is stream:
                del self._streams[stream.nsset]
        if replace:
            with contextlib.suppress(RuntimeError):
                self._dispatch_drainer(stream)

    def _fail_stream(self, stream: _Stream, error: BaseException) -> None:
        """The set cannot be entered: every waiting job gets ``error`` (a
        copy each, since each is raised in its own task)."""
        while True:
            while stream.jobs:
                job = stream.jobs.popleft()
                if not job.cancelled:
                    job.error = copy.copy(error)
                    job.on_done(job)
            if self._drainer_done(stream):
                return

    def _fail_waiting(self, stream: _Stream, error: BaseException) -> None:
        """A drainer's thread could not settle at home (``EMFILE``, say): the
        jobs waiting now get ``error``, since nobody waits on the drainer's
        own call; jobs submitted later bring a fresh drainer."""
        with self._lock:
            jobs = list(stream.jobs)
            stream.jobs.clear()
            stream.growing = False
        for job in jobs:
            if not job.cancelled:
                job.error = copy.copy(error)
                job.on_done(job)
        self._drainer_lost(stream)

    def _dispatch(self, call: _Call, *, count: bool = True) -> None:
        worker: _Worker | None = None
        new = False
        with self._lock:
            if self._shutdown:
                raise self._refusal()
            if count:
                self._calls += 1
            alone = len(self._idle) == len(self._threads)  # no call is running
            evicted: _Worker | None = None
            if self._strayed and call.nsset is not None:
                worker = self._take_strayed(call.nsset.handle.bits)
            if worker is not None:
                worker.call = call
            elif self._idle:
                worker = self._idle.pop()
                worker.call = call
            elif len(self._threads) < self._max_workers:
                worker = _Worker(self, call)
                self._threads.add(worker)
                new = True
            elif self._strayed:
                # Full, and the idle threads cannot serve this call: one of
                # them makes way for a fresh one.
                evicted = self._take_strayed(-1)
                assert evicted is not None
                evicted.call = None
                self._threads.discard(evicted)
                worker = _Worker(self, call)
                self._threads.add(worker)
                new = True
            else:
                self._queue.append(call)
        if evicted is not None:
            evicted.wake.release()
        if worker is None:
            return
        same_cpu = self._same_cpu
        if same_cpu is True or (same_cpu == "auto" and alone):
            worker.move_to(_sys.current_cpu())
        elif same_cpu == "auto":
            worker.move_to(-1)
        if not new:
            worker.wake.release()
            return
        try:
            self._home.start(worker.thread)
        except BaseException:
            with self._lock:
                self._threads.discard(worker)
            raise

    def _refusal(self) -> RuntimeError:
        if self._forked:
            return WorkersForkedError(
                f"this Workers was made in process {self._home.pid}, which forked: its "
                "threads did not follow into this child; use default_workers() or make "
                "a new Workers here"
            )
        return RuntimeError("cannot schedule new calls after shutdown")

    def _after_fork_in_child(self) -> None:
        """In the child of ``os.fork()``: only the forking thread exists.
        Forget every worker (their locks may be held forever) and refuse
        calls at once instead of handing them to threads that are gone."""
        self._lock = threading.Lock()
        self._idle.clear()
        self._strayed.clear()
        self._queue.clear()
        self._streams.clear()
        self._threads.clear()
        self._leaving.clear()
        self._shutdown = self._forked = True
        self._stop_idle.detach()
        with contextlib.suppress(OSError):
            self._home.close()

    # -- called by workers -----------------------------------------------------------

    def _mark_idle_or_take(self, worker: _Worker, deliver: _Call | None) -> None:
        """A worker is home and healthy: hand it the next queued call or put
        it on the idle list, then deliver ``deliver``'s outcome."""
        with self._lock:
            if worker.strayed:
                self._park_strayed(worker)
            elif self._queue:
                worker.call = self._queue.popleft()
                worker.wake.release()
            elif self._shutdown:
                worker.call = None
                worker.wake.release()
            else:
                self._idle.append(worker)
        if deliver is not None:
            deliver.deliver()

    # -- rootless mode: workers in limbo ------------------------------------------

    def _take_strayed(self, set_bits: int) -> _Worker | None:
        """Under the lock: an idle worker in limbo that may serve a set of
        ``set_bits`` (it left home only in kinds the set holds; -1: any)."""
        for strayed, parked in self._strayed.items():
            if strayed & ~set_bits == 0:
                worker = parked.pop()
                if not parked:
                    del self._strayed[strayed]
                return worker
        return None

    def _park_strayed(self, worker: _Worker) -> None:
        """Under the lock: hand a worker in limbo the first queued call it
        may serve; else park it idle, or let it exit if calls it cannot
        serve are waiting for room."""
        strayed = worker.strayed
        for i, queued in enumerate(self._queue):
            if queued.nsset is not None and strayed & ~queued.nsset.handle.bits == 0:
                del self._queue[i]
                worker.call = queued
                worker.wake.release()
                return
        if self._shutdown or self._queue:
            worker.spent = True
            worker.call = None
            worker.wake.release()
            return
        self._strayed.setdefault(strayed, []).append(worker)

    def _retire_idle(self, worker: _Worker) -> bool:
        """An idle worker timed out: remove it unless a call was just handed
        to it. Returns whether it should exit."""
        with self._lock:
            parked = self._strayed.get(worker.strayed, []) if worker.strayed else self._idle
            try:
                parked.remove(worker)
            except ValueError:
                return False
            if worker.strayed and not parked:
                del self._strayed[worker.strayed]
            return True

    def _forget(self, worker: _Worker, *, discarded: bool, spent: bool = False) -> None:
        """A worker thread is leaving; if it was discarded (or spent, in
        rootless mode) and calls are waiting, a fresh thread takes its place."""
        replacement: _Worker | None = None
        with self._lock:
            self._threads.discard(worker)
            self._leaving = {t for t in self._leaving if t.is_alive()}
            self._leaving.add(worker.thread)
            with contextlib.suppress(ValueError):
                self._idle.remove(worker)
            if discarded:
                self._discarded += 1
            if (
                (discarded or spent)
                and self._queue
                and not self._shutdown
                and len(self._threads) < self._max_workers
            ):
                replacement = _Worker(self, self._queue.popleft())
                self._threads.add(replacement)
        if replacement is not None:
            self._home.start(replacement.thread)

    # -- lifetime -----------------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting calls; idle threads exit at once, busy ones after
        their call. ``cancel_futures`` cancels queued calls (``run_sync``
        callers waiting on them get :class:`concurrent.futures.CancelledError`);
        otherwise they still run. ``wait`` joins every thread.

        Safe to call more than once and from any thread but a worker's own
        (which cannot join itself).
        """
        with self._lock:
            self._shutdown = True
            cancelled: list[_Call] = []
            jobs: list[Job] = []
            if cancel_futures:
                cancelled = list(self._queue)
                self._queue.clear()
                for stream in self._streams.values():
                    jobs += stream.jobs
                    stream.jobs.clear()
            threads = [w.thread for w in self._threads] + list(self._leaving)
        for job in jobs:
            if not job.cancelled:
                job.error = CancelledError("Workers shut down before the call started")
                job.on_done(job)
        for call in cancelled:
            if call.future is not None:
                call.future.cancel()
            else:
                call.error = CancelledError("Workers shut down before the call started")
                call.deliver()
        self._stop_idle()
        if wait:
            for thread in threads:
                if thread is not threading.current_thread() and thread.ident:
                    thread.join()
            _close_orphans()

    @property
    def home_ids(self) -> dict[Kind, int]:
        """The inode of each home namespace of the executor (user included),
        where its threads live between calls."""
        return dict(self._home.ids)

    def stats(self) -> WorkersStats:
        """Counts of threads and calls, for monitoring and tests."""
        with self._lock:
            return WorkersStats(
                threads=len(self._threads),
                idle=len(self._idle),
                queued=len(self._queue),
                calls=self._calls,
                discarded=self._discarded,
            )

    def __repr__(self) -> str:
        st = self.stats()
        state = "shut down" if self._shutdown else "running"
        return (
            f"<Workers {state} threads={st.threads} idle={st.idle} "
            f"queued={st.queued} discarded={st.discarded}>"
        )


def _drain_marker() -> None:
    """The ``fn`` of a drainer call, never called: the worker runs the
    call's stream instead (see ``_Worker._drain``)."""


def _stop_idle(
    lock: threading.Lock,
    idle: list[_Worker],
    strayed: dict[int, list[_Worker]],
    home: _Home,
) -> None:
    """Tell idle workers to exit and drop the executor's hold on its home.
    Holds no reference to the executor, so it can run as its finalizer."""
    with lock:
        leaving = [*idle, *(w for parked in strayed.values() for w in parked)]
        idle.clear()
        strayed.clear()
    for worker in leaving:
        worker.call = None
        worker.wake.release()
    home.release()


_default: Workers | None = None
_default_lock = threading.Lock()
# Closes left by threads that lost the process's fd table
# (``unshare(CLONE_FILES)``), done by the next thread that has it.
_orphans: list[Callable[[], None]] = []
_orphans_lock = threading.Lock()


def _close_orphans() -> None:
    if not _orphans:  # read without the lock: a hint
        return
    with _orphans_lock:
        todo = list(_orphans)
        _orphans.clear()
    for close in todo:
        close()


_all_workers: weakref.WeakSet[Workers] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """``os.register_at_fork`` hook: every ``Workers`` of the parent refuses
    calls in the child (:class:`WorkersForkedError`), and the default one
    is forgotten, so that the child's first call makes fresh threads."""
    global _default, _default_lock, _limbo, _limbo_users, _limbo_lock, _orphans_lock
    # A parent's thread may have held these at the fork: new ones.
    _default, _default_lock, _limbo_lock = None, threading.Lock(), threading.Lock()
    _orphans_lock = threading.Lock()
    for w in list(_all_workers):
        w._after_fork_in_child()
    _limbo, _limbo_users = None, 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def default_workers() -> Workers:
    """The process-wide ``Workers`` used when none is given; created on first
    use, with its home in the process's home namespaces (those of the thread
    that imported nspool), however it is first reached: even from a
    thread inside a set (``call_inline``, a callable on a worker)."""
    global _default
    with _default_lock:
        if _default is None or _default._shutdown:
            _default = Workers(_process_home=True)
        return _default
