"""``Pool``: namespace sets created ahead of demand.

A new network namespace costs the kernel about half a millisecond to make
and as much again to free. A pool keeps ``warm`` fresh sets ready, made by
background creator threads, so that taking one is a list pop. Sets handed
out are thrown away after use by default (gonso's advice); a ``recycle``
hook may instead reset them, and the pool checks the reset held before it
offers the set again.

Guarantees:

* Pool state (ready list, counts) changes under one lock; creating and
  closing sets (syscalls, milliseconds) happen outside it, so a taker never
  waits behind a creation.
* No set is handed to two takers: a set is in exactly one of the ready list,
  a taker's hands, the recycler, or the closer.
* Discarded sets go to a background closer that frees them in small
  batches (at most :data:`CLOSE_RATE` a second, :data:`CLOSE_TICK` apart)
  while it keeps up, and at once when its backlog passes half its bound:
  freeing hundreds of netns at once stalls new creations in the kernel, but
  every pending set is an open fd. At the bound (:data:`CLOSE_BACKLOG`, or an
  eighth of the soft ``RLIMIT_NOFILE``) a discarded set is closed at once.
* Sets of net, uts, ipc and cgroup kinds are made by creator processes on
  other CPUs than the pool's starter and passed back by fd (see
  :class:`Pool`); others by creator threads in this process.
* A creation failure (``EPERM``, ``ENOSPC`` at the namespace limit,
  ``EMFILE``, a hook that raises, a lost creator process) is counted in
  :meth:`Pool.stats`; the creators back off (doubling from
  :data:`BACKOFF_MIN` to :data:`BACKOFF_MAX`) instead of spinning. A taker
  that finds no ready set waits a little for one being made, then creates
  one itself (a *miss*) and so sees such an error directly.
* Closing the pool closes every set it holds and waits for its threads and
  processes; sets leased out at that moment are closed when they come back.

This module is the pool's front: its lifetime, taking and giving back,
running a callable in a fresh set, and its tunables. Its parts, each on a
small interface: the counts under the lock (:mod:`nspool._pool_book`, the
base of :class:`Pool`), the creators (:mod:`nspool._pool_creators`), the
closer (:mod:`nspool._pool_closer`), the recycle check and the after-create
hook (:mod:`nspool._pool_state`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import ParamSpec, TypeVar, Unpack

import anyio
import anyio.to_thread

from ._creator_proc import PROCESS_KINDS
from ._options import SetOptions, UnshareOptions
from ._pool_book import PoolBook
from ._pool_closer import Closer, close_bound
from ._pool_creators import PROCESS_BATCH as PROCESS_BATCH  # re-exported: read it here
from ._pool_creators import Creators, PoolSide, cpu_set
from ._pool_lease import Lease, PoolStats, check_callable, check_int
from ._pool_state import Recycler, net_state
from ._wait import make_job, unwrap, wait_job
from .kinds import Kind, KindsArg
from .nsset import NamespaceSet
from .workers import Workers, default_workers

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "CLOSE_BACKLOG",
    "CLOSE_RATE",
    "CLOSE_TICK",
    "MAX_CREATORS",
    "MAX_MISSES_AT_ONCE",
    "TAKE_WAIT",
    "Lease",
    "Pool",
    "PoolStats",
    "net_state",
]

logger = logging.getLogger("nspool")

#: The closer's pace while it keeps up: at most this many closes a second,
#: above what creators make, yet a burst of hundreds is spread out.
CLOSE_RATE = 4000
#: Seconds between two batches of closes.
CLOSE_TICK = 0.002
#: The most discarded sets waiting to be closed (each holds fds).
CLOSE_BACKLOG = 256
#: Creator back-off after a failure, doubling up to the maximum (seconds).
BACKOFF_MIN = 0.01
BACKOFF_MAX = 1.0
#: Creation latencies kept for the percentiles in ``stats()``.
LATENCY_WINDOW = 1024
#: Seconds a taker waits for a set being made before making its own.
TAKE_WAIT = 0.03
#: Misses made at once by takers, at most: more than the CPUs can do only
#: slows every one of them.
MAX_MISSES_AT_ONCE = max(1, len(os.sched_getaffinity(0)))
#: The most creators a pool may have.
MAX_CREATORS = 16
#: Seconds between two looks at the pool in ``await_ready``.
READY_POLL = 0.005

_P = ParamSpec("_P")
_T = TypeVar("_T")


class Pool(PoolBook):
    """Fresh namespace sets of ``kinds``, ``warm`` of them made ahead.

    ``lo`` is brought up in each new netns (``loopback=False`` leaves it
    down); then ``after_create(s)``, if given, runs inside the set before it
    is offered. ``recycle(s)``, if given, runs inside a returned set (on a
    worker) to reset it; the set is reused only if ``verify(s)`` (default for
    a netns: :func:`net_state`, on a worker) equals what it was when the set
    was first offered, else it is thrown away.
    ``max_sets`` bounds ready + leased + being created; ``get`` waits at the
    bound. ``creators`` make sets in parallel (at most :data:`MAX_CREATORS`).

    Where sets are made, chosen per kind:

    * net, uts, ipc and cgroup sets with no other option are made by
      ``creators`` *creator processes* (``creator_processes=True``, the
      default for them): fresh interpreters pinned to ``creator_cpus`` that
      unshare, bring ``lo`` up and pass the fds back (``SCM_RIGHTS``), so the
      half millisecond of kernel work a netns costs takes none of this
      process's GIL and, on two or more CPUs, none of the caller's CPU. An
      ``after_create`` hook then runs in this process on a worker inside the
      set (a thread hop, tens of microseconds a set, under our GIL).
    * Sets with a user, pid, mnt or time namespace, or with options
      (``hostname``, maps, ``private_tmp``, ...), are made in this process by
      ``creators`` threads, as :meth:`NamespaceSet.unshare` makes them;
      ``creator_processes=False`` chooses this for the others too.

    ``creator_cpus``: the CPUs creators run on. By default every CPU but the
    one of the thread that starts the pool (the event loop's, in an async
    program), or the only CPU there is.

    A taker that finds no set ready waits up to :data:`TAKE_WAIT` seconds for
    one being made, then makes its own (a *miss*); at most
    :data:`MAX_MISSES_AT_ONCE` misses are made at once, further takers wait
    for one of them or for a creator.

    Sizing ``warm``: it must cover the demand while creation catches up.
    A creator process makes about 1,000-1,500 netns a second on these
    machines; each live netns costs about 230 KiB of kernel memory
    (``bench/``). :meth:`wait_ready` (or ``await pool.await_ready()``) waits
    until ``warm`` sets are ready.

    The keyword options of :meth:`NamespaceSet.unshare` (``uid_map``,
    ``private_tmp``, ``hostname``, ...) apply to every set. Sets holding a
    user namespace are made in a helper process each, tens of times slower
    than a netns alone.

    Use ``with Pool(...) as pool:`` (or :meth:`start`/:meth:`close`). All
    methods may be called from any thread. Bad arguments raise ``TypeError``
    or ``ValueError`` here, before anything is made.
    """

    def __init__(
        self,
        kinds: KindsArg,
        *,
        warm: int = 16,
        max_sets: int | None = None,
        after_create: Callable[[NamespaceSet], object] | None = None,
        loopback: bool = True,
        recycle: Callable[[NamespaceSet], object] | None = None,
        verify: Callable[[], object] | None = None,
        workers: Workers | None = None,
        creators: int = 2,
        creator_processes: bool | None = None,
        creator_cpus: Iterable[int] | None = None,
        **options: Unpack[UnshareOptions],
    ) -> None:
        kind = Kind.require(kinds, what="Pool")
        self._options = SetOptions.make(kind, **options)
        check_int("warm", warm, 0)
        n_creators = check_int("creators", creators, 1, MAX_CREATORS)
        if max_sets is not None:
            check_int("max_sets", max_sets, 0)
            if max_sets < max(1, warm):
                raise ValueError("max_sets must be at least warm (and at least 1)")
        super().__init__(
            kind,
            warm=warm,
            max_sets=max_sets,
            backoff=_backoff_bounds,
            latency_window=LATENCY_WINDOW,
        )
        for name, fn in (("after_create", after_create), ("recycle", recycle), ("verify", verify)):
            check_callable(name, fn)
        if not isinstance(loopback, bool):
            raise TypeError(f"loopback must be a bool, not {loopback!r}")
        if creator_processes is not None and not isinstance(creator_processes, bool):
            raise TypeError(f"creator_processes must be a bool or None, not {creator_processes!r}")
        if workers is not None and not isinstance(workers, Workers):
            raise TypeError(f"workers must be a Workers or None, not {workers!r}")
        cpus = cpu_set(creator_cpus)
        can_process = Creators.can_use_processes(self.kinds, self._options)
        if creator_processes and not can_process:
            raise ValueError(
                f"creator processes make only {PROCESS_KINDS} sets without options, "
                f"not {self.kinds} sets with {self._options}"
            )
        self._recycle = recycle
        self._recycler = (
            None
            if recycle is None
            else Recycler(
                self.kinds,
                recycle,
                verify,
                workers=self._workers_or_default,
                record_failure=self._record_failure,
            )
        )
        self._workers = workers
        # The pool's helpers, on a small interface each (no private field).
        self._creators = Creators(
            PoolSide(
                claim=self._claim,
                wait_for_need=self._await_need,
                offer_made=self._offer_made,
                failed_creating=self._failed_creating,
                gave_up=self._gave_up,
                record_failure=self._record_failure,
                made=self._made,
                creator_replaced=self._creator_replaced,
                workers=self._workers_or_default,
            ),
            self.kinds,
            self._options,
            n=n_creators,
            use_processes=can_process if creator_processes is None else creator_processes,
            cpus=cpus,
            loopback=loopback and bool(self.kinds & Kind.NET),
            after_create=after_create,
        )
        self._closer = Closer(bound=close_bound(CLOSE_BACKLOG), pace=_close_pace)

    # -- lifetime -----------------------------------------------------------------

    def start(self) -> Pool:
        """Start the creators and the closer; returns the pool. Creator
        processes are started by their threads, so this does not wait for
        them."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._running:
                return self
            self._running = True
            # Under the lock, so that close() never sees them unstarted.
            self._creators.start()
            self._closer.start(self._creators.cpus)
        return self

    def close(self) -> None:
        """Stop the threads and creator processes, close every set the pool
        holds (ready ones and those waiting to be closed), and wait for it.
        Leased sets are closed as they come back. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._running = False
            ready = list(self._ready)
            self._ready.clear()
            self._baseline.clear()
            for cond in (self._refill, self._takers, self._warmth):
                cond.notify_all()
        self._creators.stop()
        self._closer.close()
        for s in ready:
            s.close()

    def __enter__(self) -> Pool:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Pool:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the pool on a thread (joining its threads blocks),
        shielded from cancellation so that nothing is left behind."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.close)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until ``warm`` sets are ready (or ``max_sets`` are held),
        starting the pool if it was not started, so that a daemon can start
        serving from a full pool.

        Raises the creation's error as soon as a set fails to be made while
        waiting (a pool that cannot make sets never warms), ``TimeoutError``
        after ``timeout`` seconds, :class:`PoolClosedError` if the pool is
        closed meanwhile. Any thread; nothing to cancel.
        """
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            failures = self._failures
            while not self._warm_or_raise(failures):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"the pool was not warm within {timeout} s")
                self._warmth.wait(left)

    async def await_ready(self, timeout: float | None = None) -> None:
        """:meth:`wait_ready` for asyncio or Trio, without a thread: checks
        every :data:`READY_POLL` seconds.

        Cancellation: the wait stops at once; the pool goes on warming.
        """
        self.start()
        with anyio.fail_after(timeout):
            with self._lock:
                failures = self._failures
            while True:
                with self._lock:
                    if self._warm_or_raise(failures):
                        return
                await anyio.sleep(READY_POLL)

    def _warm_or_raise(self, failures: int) -> bool:
        """Under the lock: whether the pool is warm; raises if it is closed
        or a creation failed since ``failures`` were counted."""
        if self._closed:
            raise self._closed_error()
        target = self.warm if self.max_sets is None else min(self.warm, self.max_sets)
        if len(self._ready) >= target:
            return True
        if self._failures > failures and self._last_error is not None:
            raise self._last_error
        return False

    async def run(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Await ``fn(*args, **kwargs)`` on a worker inside a fresh set,
        then give the set back (thrown away unless recycled); asyncio or
        Trio.

        Cancellation: the awaiting task is cancelled at once; a callable
        already running finishes in the background and its set is thrown
        away when it does, never reused.
        """
        s = await self._take_async()
        job = make_job(fn, *args, **kwargs)
        try:
            await wait_job(self._workers_or_default(), s, job, lambda: self._drop(s), stream=False)
        except BaseException:
            if job.cancelled:  # withdrawn before it ran: the set is untouched
                await self._give_back_async(s)
            raise  # else the abandoned call's set is dropped when it finishes
        await self._give_back_async(s)
        result: _T = unwrap(job)
        return result

    async def _take_async(self) -> NamespaceSet:
        """A set without blocking the loop: a ready one at once, else one
        made on a thread (a miss)."""
        s = self._take_ready()
        if s is not None:
            return s
        return await anyio.to_thread.run_sync(self.get)

    async def _give_back_async(self, s: NamespaceSet) -> None:
        """:meth:`put` without blocking the loop (a recycle runs on a
        thread), shielded: the set is given back even if the task is
        cancelled."""
        with anyio.CancelScope(shield=True):
            if self._recycle is None:
                self.put(s)
            else:
                await anyio.to_thread.run_sync(self.put, s)

    # -- taking sets ------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> NamespaceSet:
        """A fresh set, owned by the caller until :meth:`put`.

        Takes a ready one at once (a hit). If none is ready but creators are
        making some, waits up to :data:`TAKE_WAIT` seconds for one (still a
        hit); then creates one on the calling thread (a miss, about a
        millisecond), raising the creation's error if it fails. At most
        :data:`MAX_MISSES_AT_ONCE` misses are made at once; at ``max_sets``
        it waits for room. Either wait ends after ``timeout`` seconds
        (``TimeoutError``).
        """
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        take_until = now + TAKE_WAIT
        with self._lock:
            while True:
                if self._closed:
                    raise self._closed_error()
                if self._ready:
                    return self._hand_out_ready()
                now = time.monotonic()
                room = self.max_sets is None or self._total() < self.max_sets
                # Creators are making a set, or will be as soon as one wakes.
                coming = self._running and (self._creating > self._missing or self.warm > 0)
                if coming and now < take_until:
                    wait: float | None = take_until - now
                elif room and self._missing < MAX_MISSES_AT_ONCE:
                    self._misses += 1
                    self._creating += 1
                    self._missing += 1
                    break
                else:
                    wait = None
                if deadline is not None:
                    if now >= deadline:
                        raise TimeoutError(f"no namespace set free within {timeout} s")
                    wait = deadline - now if wait is None else min(wait, deadline - now)
                self._takers.wait(wait)
        try:
            s = self._creators.make()
        except BaseException:
            with self._lock:
                self._creating -= 1
                self._missing -= 1
                self._refill.notify()
                self._takers.notify()
                self._made_room()
            raise
        with self._lock:
            self._creating -= 1
            self._missing -= 1
            self._refill.notify()  # it counted as being created: refill now
            self._takers.notify()  # a miss slot is free
            if self._is_closed():
                closed = True
            else:
                self._leased.add(s)
                closed = False
        if closed:
            s.close()
            raise self._closed_error()
        return s

    def put(self, s: NamespaceSet) -> None:
        """Give back a set from :meth:`get`. Without ``recycle`` it is thrown
        away (closed in the background). With ``recycle`` it is reset on a
        worker and, if its state matches its first offer, made ready again.

        Blocks while ``recycle`` and the check run, if any.
        """
        with self._lock:
            if s not in self._leased:
                raise ValueError(f"{s!r} was not taken from this pool")
            self._leased.discard(s)
            baseline = self._baseline.pop(s, None)
            reuse = self._recycle is not None and not self._closed and not s.closed
            if reuse:
                self._recycling += 1
        if not reuse:
            self._discard(s)
            return
        assert self._recycler is not None
        held = self._recycler.reset_holds(s, baseline)
        with self._lock:
            self._recycling -= 1
            self._made_room()
            if held and not self._closed:
                self._baseline[s] = baseline
                self._offer_locked(s)
                self._recycled += 1
                return
        self._discard(s)

    def _take_ready(self) -> NamespaceSet | None:
        """A ready set (a hit) if there is one, else ``None``; never blocks."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            return self._hand_out_ready() if self._ready else None

    def _drop(self, s: NamespaceSet) -> None:
        """Take back a leased set that must not be reused (its call was
        abandoned): thrown away, never recycled. Any thread."""
        with self._lock:
            self._leased.discard(s)
            self._baseline.pop(s, None)
        self._discard(s)

    def lease(self, timeout: float | None = None) -> Lease:
        """A set for the length of a block, as a context manager of either
        kind: ``with pool.lease() as s:`` takes it with :meth:`get` and gives
        it back with :meth:`put` (blocking the thread); ``async with
        pool.lease() as s:`` (asyncio or Trio) takes a ready one at once or
        makes one on a thread, and gives it back shielded from cancellation,
        without blocking the event loop. ``timeout`` bounds the wait, as in
        :meth:`get`."""
        return Lease(
            timeout,
            take=self.get,
            give_back=self.put,
            take_async=self._take_async,
            give_back_async=self._give_back_async,
        )

    def run_sync(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn`` on a worker inside a fresh set, then give the set back
        (thrown away unless recycled). Blocks the calling thread.

        Cancellation: as ``Workers.run_sync``; the set is given back only
        when the call is done.
        """
        with self.lease() as s:
            return self._workers_or_default().run_sync(s, fn, *args, **kwargs)

    def stats(self) -> PoolStats:
        """Counts and creation latency percentiles, for monitoring."""
        with self._lock:
            lat = sorted(self._latencies)
            return PoolStats(
                ready=len(self._ready),
                leased=len(self._leased),
                creating=self._creating,
                created=self._created,
                discarded=self._discarded,
                recycled=self._recycled,
                hits=self._hits,
                misses=self._misses,
                failures=self._failures,
                last_failure=self._last_failure,
                create_p50=lat[len(lat) // 2] if lat else None,
                create_p99=lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
                closing=self._closer.pending,
                creator_losses=self._creators.losses,
            )

    def __repr__(self) -> str:
        st = self.stats()
        return (
            f"<Pool {self.kinds} warm={self.warm} ready={st.ready} leased={st.leased} "
            f"created={st.created} misses={st.misses} failures={st.failures}>"
        )

    # -- inside -------------------------------------------------------------------------

    def _workers_or_default(self) -> Workers:
        return self._workers if self._workers is not None else default_workers()

    def _made(self, s: NamespaceSet, started: float) -> NamespaceSet:
        """Record a set made since ``started``, with its recycle baseline."""
        try:
            baseline = self._recycler.baseline(s) if self._recycler is not None else None
        except BaseException as exc:
            s.close()
            self._record_failure(exc)
            raise
        with self._lock:
            self._created += 1
            self._latencies.append(time.perf_counter() - started)
            if baseline is not None:
                self._baseline[s] = baseline
        return s

    def _discard(self, s: NamespaceSet) -> None:
        """Throw ``s`` away: to the closer, or closed here at once when the
        closer's backlog is at its bound (each pending set holds fds) or the
        pool is closed."""
        with self._lock:
            self._discarded += 1
            self._made_room()
            closed = self._closed
        if closed or not self._closer.offer(s):
            s.close()


def _backoff_bounds() -> tuple[float, float]:
    """The creators' back-off bounds, read at each failure:
    :data:`BACKOFF_MIN` and :data:`BACKOFF_MAX` as they are now."""
    return BACKOFF_MIN, BACKOFF_MAX


def _close_pace() -> tuple[int, float]:
    """The closer's pace, read before every batch: :data:`CLOSE_RATE` and
    :data:`CLOSE_TICK` as they are now (tests and bench set them)."""
    return CLOSE_RATE, CLOSE_TICK
