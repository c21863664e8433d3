"""The scheduler: how work items reach an executor's worker threads.

Owns one executor's queue of calls, streams of jobs and counts
(:class:`Scheduler`), with its idle workers (``nspool._idle``), and the
settings the workers read at call time (:class:`Tunables`). The worker side
is ``nspool._idle.Taker`` (``nspool._worker.Worker`` is one).

Guarantees and the reasons for them, in the manner of Trio's thread cache:

* Hand-over without a queue: an idle worker waits on its own lock; a
  submitter takes an idle worker (the one that stayed in the call's set,
  else the most recently idle: ``nspool._idle``), puts the item in its slot
  and releases that lock. One lock release wakes exactly one thread.
* A set closed while idle workers wait inside it sends them home before
  its ``close()`` returns (:meth:`Scheduler.send_home`): an idle thread
  never keeps a closed set's namespaces alive.
* A worker marks itself idle *before* it delivers an outcome
  (:meth:`Scheduler.mark_idle_or_take`), so a caller that submits again as
  soon as it is woken finds that same thread free.
* Jobs on one set are batched: a worker that has entered the set runs job
  after job with no hand-off of its own; more drainers join only while jobs
  wait behind busy ones, one at a time and ``max_workers`` at most, so that
  jobs that block still run side by side.
* State (idle list, queue, streams, counts) changes under one lock;
  syscalls, thread starts and deliveries happen outside it.
* The scheduler holds its workers, never the executor, and a worker holds
  only a weak reference to its scheduler: an unreferenced executor can be
  collected, and its finalizer (:attr:`Scheduler.stop`) lets the idle
  threads exit.
* Rootless mode: a worker waiting in limbo serves only sets that hold every
  kind it has left; when the executor is full, one of them makes way.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import itertools
import os
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Literal, Protocol

from . import _sys
from ._handle import HasHandle, SetHandle
from ._handoff import Call, Drain, Item, Job, Leave, Stream
from ._home import Home
from ._idle import IdleWorkers, Taker

__all__ = ["CLOSE_LOCK_WAIT", "LEAVE_TIMEOUT", "Scheduler", "Tunables"]

#: Seconds a set's ``close()`` waits for each idle worker that stayed in the
#: set to go home (it takes one ``setns``; the wait is a bound, not a pace).
LEAVE_TIMEOUT = 5.0
#: Seconds a set's ``close()`` waits for the scheduler's lock before it
#: leaves the sending home to a thread of its own (a ``close()`` from a
#: finalizer may run on a thread that holds the lock).
CLOSE_LOCK_WAIT = 0.05

_tokens = itertools.count()


class Tunables(Protocol):
    """Settings a worker reads when it uses them, not when it is made (the
    executor's module constants, which tests and benchmarks set)."""

    @property
    def idle_timeout(self) -> float:
        """Seconds an idle worker waits for a call before it exits."""

    @property
    def check_every_kind(self) -> bool:
        """Whether every link is read after each call."""

    @property
    def stay_in_set(self) -> bool:
        """Whether a worker stays in a set between calls."""


class Scheduler:
    """One executor's idle workers, queue, streams and counts, under one
    lock; the executor (``Workers``) submits through it, and its workers
    (``Taker``) report back through its public methods. ``new_worker``
    makes a worker whose thread is then started at ``home``; ``refusal``
    makes the error for calls after shutdown (``forked``: in a forked
    child). ``owner``'s collection stops the idle workers (:meth:`stop`)."""

    def __init__(
        self,
        owner: object,
        home: Home,
        new_worker: Callable[[Scheduler, Item | None], Taker],
        refusal: Callable[[bool, int], RuntimeError],
        tunables: Tunables,
        *,
        max_workers: int,
        same_cpu: bool | Literal["auto"],
    ) -> None:
        self.home = home
        #: What the workers read at call time.
        self.tunables = tunables
        #: The CPUs an unpinned worker may use: the creator's, as a new
        #: thread would inherit them.
        self.cpus = os.sched_getaffinity(0)
        self.max_workers = max_workers
        self._same_cpu = same_cpu
        self._new_worker = new_worker
        self._refusal = refusal
        self._lock = threading.Lock()
        self._idle = IdleWorkers()
        # This scheduler's key in the sets it watches (SetHandle.watch), and
        # what they call when closed.
        self._token = next(_tokens)
        self._on_set_closed = self._closed_watcher()
        self._queue: collections.deque[Item] = collections.deque()
        self._streams: dict[HasHandle, Stream] = {}
        self._threads: set[Taker] = set()
        # Threads forgotten (discarded or spent) but perhaps not yet ended:
        # shutdown(wait=True) joins them too.
        self._leaving: set[threading.Thread] = set()
        self.shut_down = False
        #: Set in a child process after ``os.fork()``: the threads stayed
        #: in the parent, so the executor refuses calls.
        self.forked = False
        self._calls = 0
        self._discarded = 0
        # Runs once: at shutdown, or when the owner is collected unshut.
        self.stop = weakref.finalize(owner, self._stop_idle)

    # -- submitting ---------------------------------------------------------------

    def submit_job(self, nsset: HasHandle, job: Job) -> None:
        """Queue ``job`` on ``nsset``'s stream (see ``Workers.submit_job``)."""
        with self._lock:
            if self.shut_down:
                raise self._refusal(self.forked, self.home.pid)
            self._calls += 1
            stream = self._streams.get(nsset)
            if stream is None:
                stream = self._streams[nsset] = Stream(nsset)
            stream.jobs.append(job)
            if stream.drainers:
                # Every drainer busy (a job that blocks, say): one more joins.
                if (
                    len(stream.busy) < stream.drainers
                    or stream.growing
                    or stream.drainers >= self.max_workers
                ):
                    return
                stream.growing = True
            stream.drainers += 1
        self._dispatch_drainer(stream)

    def _dispatch_drainer(self, stream: Stream) -> None:
        try:
            self.dispatch(Drain(stream), count=False)
        except BaseException:
            with self._lock:
                stream.drainers -= 1
                stream.growing = False
            raise

    def dispatch(self, item: Item, *, count: bool = True) -> None:
        """Hand ``item`` to a worker: an idle one (``IdleWorkers.take``), a
        new one, or the queue."""
        worker: Taker | None = None
        new = False
        with self._lock:
            if self.shut_down:
                raise self._refusal(self.forked, self.home.pid)
            if count:
                self._calls += 1
            alone = self._idle.count() == len(self._threads)  # no call is running
            evicted: Taker | None = None
            worker = self._idle.take(item)
            if worker is not None:
                worker.item = item
            elif len(self._threads) < self.max_workers:
                worker = self._new_worker(self, item)
                self._threads.add(worker)
                new = True
            elif self._idle.strayed:
                # Full, and the idle threads cannot serve this call: one of
                # them makes way for a fresh one.
                evicted = self._idle.take_strayed(-1)
                assert evicted is not None
                evicted.item = None
                self._threads.discard(evicted)
                self._leaving.add(evicted.thread)
                worker = self._new_worker(self, item)
                self._threads.add(worker)
                new = True
            else:
                self._queue.append(item)
        if evicted is not None:
            evicted.wake.post()
        if worker is None:
            return
        same_cpu = self._same_cpu
        if same_cpu is True or (same_cpu == "auto" and alone):
            worker.move_to(_sys.current_cpu())
        elif same_cpu == "auto":
            worker.move_to(-1)
        if not new:
            worker.wake.post()
            return
        try:
            self.home.start(worker.thread)
        except BaseException:
            with self._lock:
                self._threads.discard(worker)
            raise

    # -- streams ------------------------------------------------------------------

    def grow(self, stream: Stream) -> None:
        """Jobs are waiting behind a running one: dispatch one more drainer
        (one at a time, ``max_workers`` at most)."""
        if stream.drainers >= self.max_workers:  # a hint, read without the lock
            return
        with self._lock:
            if stream.growing or self.shut_down or stream.drainers >= self.max_workers:
                return
            stream.growing = True
            stream.drainers += 1
        with contextlib.suppress(RuntimeError):  # shut down meanwhile
            self._dispatch_drainer(stream)

    def drainer_done(self, stream: Stream) -> bool:
        """A drainer found no job: it stops, unless one arrived meanwhile."""
        with self._lock:
            if stream.jobs:
                return False
            stream.drainers -= 1
            if not stream.drainers and self._streams.get(stream.nsset) is stream:
                del self._streams[stream.nsset]
            return True

    def drainer_lost(self, stream: Stream) -> None:
        """A drainer's thread was discarded: another takes over if jobs wait."""
        with self._lock:
            stream.drainers -= 1
            replace = bool(stream.jobs) and not self.shut_down
            if replace:
                stream.drainers += 1
            elif not stream.drainers and self._streams.get(stream.nsset) is stream:
                del self._streams[stream.nsset]
        if replace:
            with contextlib.suppress(RuntimeError):
                self._dispatch_drainer(stream)

    def fail_stream(self, stream: Stream, error: BaseException) -> None:
        """The set cannot be entered: every waiting job gets ``error`` (a
        copy each, since each is raised in its own task)."""
        while True:
            while stream.jobs:
                job = stream.jobs.popleft()
                if not job.cancelled:
                    job.error = copy.copy(error)
                    job.on_done(job)
            if self.drainer_done(stream):
                return

    def fail_waiting(self, stream: Stream, error: BaseException) -> None:
        """A drainer's thread could not settle at home (``EMFILE``, say): the
        jobs waiting now get ``error``, since nobody waits on the drain
        itself; jobs submitted later bring a fresh drainer."""
        with self._lock:
            jobs = list(stream.jobs)
            stream.jobs.clear()
            stream.growing = False
        for job in jobs:
            if not job.cancelled:
                job.error = copy.copy(error)
                job.on_done(job)
        self.drainer_lost(stream)

    # -- reported by workers ------------------------------------------------------

    def mark_idle_or_take(self, worker: Taker, deliver: Item | None) -> None:
        """A worker is home and healthy, or healthy in the set it stayed in
        (``worker.parked``): hand it the next queued call or put it on the
        idle list, then deliver ``deliver``'s outcome. A worker that stayed
        in a set closed meanwhile is sent home instead."""
        with self._lock:
            if worker.strayed:
                self._park_strayed(worker)
            elif self._queue:
                worker.item = self._queue.popleft()
                worker.wake.post()
            elif self.shut_down:
                worker.item = None
                worker.wake.post()
            elif worker.parked is None:
                self._idle.home.append(worker)
            elif worker.parked.watch(self._token, self._on_set_closed):
                self._idle.put_parked(worker, worker.parked)
            else:
                worker.item = Leave()  # its set was closed as it finished
                worker.wake.post()
        if deliver is not None:
            deliver.deliver()

    def _closed_watcher(self) -> Callable[[SetHandle], None]:
        """What a set calls when it is closed (``SetHandle.watch``): holds
        only a weak reference, so a set does not keep an executor alive."""
        ref = weakref.ref(self)

        def closed(h: SetHandle) -> None:
            core = ref()
            if core is not None:
                core.send_home(h)

        return closed

    def send_home(self, h: SetHandle) -> None:
        """``h`` was closed: every idle worker that stayed in it goes home,
        and this returns once they have (each within
        :data:`LEAVE_TIMEOUT`), so a closed set's namespaces are not kept
        alive by a thread. Runs on the closing thread; if the lock is not
        free soon (a finalizer on a thread that holds it), a thread of its
        own does the sending and the close does not wait."""
        if not self._lock.acquire(timeout=CLOSE_LOCK_WAIT):
            threading.Thread(
                target=self.send_home, args=(h,), name="nspool-send-home", daemon=True
            ).start()
            return
        try:
            parked = self._idle.take_all_in(h)
            leaves = []
            for worker in parked:
                leave = worker.item = Leave()
                leaves.append(leave)
        finally:
            self._lock.release()
        for worker in parked:
            worker.wake.post()
        for leave in leaves:
            leave.done.wait(LEAVE_TIMEOUT)

    def _park_strayed(self, worker: Taker) -> None:
        """Under the lock: hand a worker in limbo the first queued call it
        may serve; else park it idle, or let it exit if calls it cannot
        serve are waiting for room."""
        strayed = worker.strayed
        for i, queued in enumerate(self._queue):
            if queued.nsset is not None and strayed & ~queued.nsset.handle.bits == 0:
                del self._queue[i]
                worker.item = queued
                worker.wake.post()
                return
        if self.shut_down or self._queue:
            worker.spent = True
            worker.item = None
            worker.wake.post()
            return
        self._idle.put_strayed(worker)

    def retire_idle(self, worker: Taker) -> bool:
        """An idle worker timed out: remove it unless a call was just handed
        to it. Returns whether it should exit."""
        with self._lock:
            return self._idle.remove(worker)

    def forget(self, worker: Taker, *, discarded: bool, spent: bool = False) -> None:
        """A worker thread is leaving; if it was discarded (or spent, in
        rootless mode) and calls are waiting, a fresh thread takes its place."""
        replacement: Taker | None = None
        with self._lock:
            self._threads.discard(worker)
            self._leaving = {t for t in self._leaving if t.is_alive()}
            self._leaving.add(worker.thread)
            self._idle.remove(worker)
            if discarded:
                self._discarded += 1
            if (
                (discarded or spent)
                and self._queue
                and not self.shut_down
                and len(self._threads) < self.max_workers
            ):
                replacement = self._new_worker(self, self._queue.popleft())
                self._threads.add(replacement)
        if replacement is not None:
            self.home.start(replacement.thread)

    # -- lifetime -----------------------------------------------------------------

    def shutdown(self, *, cancel_futures: bool) -> list[threading.Thread]:
        """Refuse calls from now on and stop the idle workers (see
        ``Workers.shutdown``); the threads to join."""
        with self._lock:
            self.shut_down = True
            cancelled: list[Item] = []
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
            if not isinstance(call, Call):
                continue  # a drain's jobs were cancelled above
            if call.future is not None:
                call.future.cancel()
            else:
                call.error = CancelledError("Workers shut down before the call started")
                call.deliver()
        self.stop()
        return threads

    def _stop_idle(self) -> None:
        """Tell idle workers to exit and drop the executor's hold on its home."""
        with self._lock:
            leaving = self._idle.clear()
        for worker in leaving:
            worker.item = None
            worker.wake.post()
        self.home.release()

    def counts(self) -> tuple[int, int, int, int, int]:
        """Threads, idle ones, queued calls, calls, discarded threads."""
        with self._lock:
            return (
                len(self._threads),
                self._idle.count(),
                len(self._queue),
                self._calls,
                self._discarded,
            )

    def after_fork_in_child(self) -> None:
        """In the child of ``os.fork()``: only the forking thread exists.
        Forget every worker (their locks may be held forever) and refuse
        calls at once instead of handing them to threads that are gone."""
        self._lock = threading.Lock()
        self._idle = IdleWorkers()
        self._queue.clear()
        self._streams.clear()
        self._threads.clear()
        self._leaving.clear()
        self.shut_down = self.forked = True
        self.stop.detach()
        with contextlib.suppress(OSError):
            self.home.close()
