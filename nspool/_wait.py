"""Awaiting a worker's job from asyncio or Trio.

Owns the one way an event loop waits for a call on a worker thread: the call
is a :class:`~nspool.workers.Job`, handed to a worker either on its set's
stream (:meth:`Workers.submit_job`; ``await s.run``) or as a call of its own
(``submit_in``; ``await pool.run`` and the start of a process, whose sets
get one call each), and its completion comes back through the loop's
*inbox*: the worker appends a callback and wakes the loop only if the inbox
was empty, so many jobs finishing together cost one loop wake-up, and no
thread waits per awaiting task (:func:`wait_job`, :func:`run_in`). One
helper, :func:`unwrap`, turns a finished job into its result or raises its
error.

Cancellation (one story for every caller): cancelling the awaiting task (a
cancel scope, ``fail_after``, ``Task.cancel()``) takes effect at once. Then

* a job still queued never runs: the job is *withdrawn*
  (``job.cancelled`` is set, so the caller knows the set was not touched);
* a job already running cannot be stopped: it finishes in the background
  and its result is dropped; ``on_abandon``, if given, runs exactly once
  after it finished (on the worker thread, or at once on the loop if it
  finished just before the cancellation was seen). The pool uses it to
  throw the set away, never reuse it.

Why that holds: a cancellation can race the worker taking the job, and the
worker finishing it. Each race is settled by a token that both sides try to
take (:meth:`Job.seize`, and the *finish* token here, or a call's future):
``dict.pop`` is one atomic operation, with or without the GIL, so exactly
one side gets it and neither ever waits for the other.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from typing import Any, ParamSpec, TypeVar

import anyio
import sniffio

from ._handle import HasHandle
from .errors import outcome
from .workers import Job, Workers, default_workers

__all__ = ["make_job", "no_async_library", "run_in", "unwrap", "wait_job"]

_P = ParamSpec("_P")
_T = TypeVar("_T")

logger = logging.getLogger("nspool")


class _Inbox:
    """Completions bound for one event loop, delivered in batches.

    ``deliver`` may be called from any thread; the callbacks run on the loop
    thread, all that arrived before the loop got to them in one go.
    """

    def __init__(self, schedule: Callable[[Callable[[], None]], object]) -> None:
        self._schedule = schedule
        self._lock = threading.Lock()
        self._items: list[Callable[[], None]] = []
        self._scheduled = False

    def deliver(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._items.append(callback)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._schedule(self._drain)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            with self._lock:
                self._items.clear()
                self._scheduled = False

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for callback in items:
            callback()


_asyncio_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = (
    weakref.WeakKeyDictionary()
)
_trio_inbox: Any = None  # a trio.lowlevel.RunVar, made on first use


def _inbox(library: str) -> _Inbox:
    """The inbox of the running event loop (made on first use)."""
    if library == "asyncio":
        loop = asyncio.get_running_loop()
        inbox = _asyncio_inboxes.get(loop)
        if inbox is None:
            inbox = _asyncio_inboxes[loop] = _Inbox(loop.call_soon_threadsafe)
        return inbox
    if library == "trio":
        import trio  # only on Trio's loop: Trio is not a dependency

        global _trio_inbox
        if _trio_inbox is None:
            _trio_inbox = trio.lowlevel.RunVar("nspool_inbox")
        try:
            found: _Inbox = _trio_inbox.get()
        except LookupError:
            found = _Inbox(trio.lowlevel.current_trio_token().run_sync_soon)
            _trio_inbox.set(found)
        return found
    raise RuntimeError(f"nspool's async front end does not support {library}")


def no_async_library(context: contextvars.Context) -> None:
    """Clear sniffio's marker in a call's copied context, as
    ``anyio.to_thread.run_sync`` does: the callable runs on a worker
    thread, where no event loop is running."""
    context.run(sniffio.current_async_library_cvar.set, None)


def _not_waited(_job: Job) -> None:
    """A job's ``on_done`` until :func:`wait_job` sets the real one."""


def make_job(fn: Callable[_P, Any], /, *args: _P.args, **kwargs: _P.kwargs) -> Job:
    """A job for :func:`wait_job`: ``fn(*args, **kwargs)`` in a copy of the
    caller's context."""
    return Job(fn, args, kwargs, _not_waited)


def unwrap(job: Job) -> Any:
    """A finished job's result, or its error raised; both are dropped from
    the job (see :func:`~nspool.errors.outcome`)."""
    return outcome(*job.take())


def _abandoned(on_abandon: Callable[[], None]) -> None:
    """Run ``on_abandon`` for a job whose waiter is gone: an error has
    nobody to go to, so it is logged (on a worker thread it must not be
    taken for a fault of the worker)."""
    try:
        on_abandon()
    except Exception:
        logger.exception("nspool: on_abandon of a cancelled call failed")


def _run_claimed(job: Job) -> None:
    """A job handed off as a call of its own, on the worker: it runs only
    if the worker takes its claim before a cancelled waiter does."""
    if job.seize():
        job.run()


def _hand_off_failed(job: Job, future: Future[None]) -> None:
    """A job's own call that did not run the job: the error of the hand-off
    itself (the set closed or not enterable, the executor shut down) is
    the job's error."""
    if future.cancelled():
        job.error = CancelledError("Workers shut down before the call started")
    elif (error := future.exception()) is not None:
        job.error = error


async def wait_job(
    executor: Workers,
    s: HasHandle | None,
    job: Job,
    on_abandon: Callable[[], None] | None = None,
    *,
    stream: bool = True,
) -> None:
    """Hand ``job`` to a worker inside ``s`` and wait, without blocking the
    loop, until it is done; :func:`unwrap` then gives its outcome. On a
    stream the job's ``on_done`` is set here.

    The hand-off: with ``stream``, the job joins ``s``'s stream
    (:meth:`Workers.submit_job`: jobs awaited at once share a worker that
    entered once); otherwise it is a call of its own (``submit_in``, or
    ``submit`` in the executor's home if ``s`` is ``None``), cheaper for a
    set that gets one call, as the pool's fresh sets do (a stream of one
    job costs a second check of the thread). Either way the same claim
    settles a cancellation; whether an abandoned job has finished is told
    by the finish token on a stream, by the call's future otherwise (its
    ``add_done_callback`` is atomic in the same way).

    Raises only if the job cannot be handed off (the executor is shut
    down) or the wait is cancelled. Then ``job.cancelled`` tells which half
    of the promise applies: set, the job was withdrawn and never runs; not
    set, it is running or ran, and ``on_abandon`` runs once it has finished.
    """
    library = sniffio.current_async_library()
    inbox = _inbox(library)
    if library == "asyncio":
        # A bare asyncio future: cheaper than an anyio.Event, and anyio's
        # cancel scopes cancel the task awaiting it all the same.
        waiter = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not waiter.done():
                waiter.set_result(None)

    else:
        event = anyio.Event()
        wake = event.set
    if not stream:
        pass  # the call's future reports instead of on_done (below)
    elif on_abandon is None:
        job.on_done = lambda _job: inbox.deliver(wake)
    else:
        # The finish token: taken by the worker when the job is done (then
        # the waiter is woken), or by a waiter abandoning the running job
        # (then the worker runs on_abandon instead).
        finish = {0: True}

        def done(_job: Job) -> None:
            if finish.pop(0, False):
                inbox.deliver(wake)
            else:
                _abandoned(on_abandon)

        job.on_done = done
    no_async_library(job.context)
    future: Future[None] | None = None
    try:
        if not stream:
            future = (
                executor.submit(_run_claimed, job)
                if s is None
                else executor.submit_in(s, _run_claimed, job)
            )

            def settled(call: Future[None]) -> None:
                if job.claim:  # unclaimed: the call did not run the job
                    _hand_off_failed(job, call)
                inbox.deliver(wake)

            future.add_done_callback(settled)
        elif s is None:
            raise TypeError("a stream needs a set")
        else:
            executor.submit_job(s, job)
    except BaseException:
        job.cancelled = True  # never handed off, so never runs
        raise
    try:
        if library == "asyncio":
            await waiter
        else:
            await event.wait()
    except BaseException:
        if job.seize():
            job.cancelled = True  # withdrawn before a worker took it
            if future is not None:
                future.cancel()  # a call still queued need not even start
        elif on_abandon is None:
            pass
        elif future is not None:
            # After the job's own callback; at once if it is done already.
            future.add_done_callback(lambda _f: _abandoned(on_abandon))
        elif not finish.pop(0, False):
            _abandoned(on_abandon)  # it finished before we got here
        raise


async def run_in(
    workers: Workers | None,
    s: HasHandle,
    fn: Callable[_P, _T],
    /,
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> _T:
    """Await ``fn(*args, **kwargs)`` run on a worker thread inside ``s``
    (``workers``, or the default executor if ``None``). asyncio or Trio.

    Calls awaited at once on the same set form a stream
    (:meth:`Workers.submit_job`): a worker that has entered the set runs
    them one after another, each checked as any call is, and more workers
    join while calls wait, so calls that block still run side by side.

    Cancellation: the awaiting task is cancelled at once; a call still
    queued never runs; a running one finishes in the background and its
    result is dropped.
    """
    job = Job(fn, args, kwargs, _not_waited)
    await wait_job(workers if workers is not None else default_workers(), s, job)
    result: _T = unwrap(job)
    return result
