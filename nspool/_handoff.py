"""The hand-off model: what a submitter gives a worker thread.

A worker takes an :data:`Item`: a :class:`Call` (one callable, its
outcome delivered to a ``Future`` or to a blocked caller's lock), a
:class:`Drain` (run the :class:`Stream` of :class:`Job` objects waiting for
one set, one after another, until none is left) or a :class:`Leave` (go
home from the closed set it stayed in). A :class:`Call` and a
:class:`Job` are both a :class:`Task`: a callable in a copy of the
submitter's ``contextvars`` and its outcome, which :func:`outcome` unwraps.
How items reach workers is ``nspool._scheduler``'s.

Guarantees and the reasons for them:

* ``run_sync``'s caller waits on a bare baton (``nspool._native.Baton``)
  that the worker posts as it goes to wait for its next item, with the GIL
  already let go of (:meth:`Call.hand_over`): the caller wakes to a free GIL.
* An outcome is delivered after the worker is home (or discarded) and the
  item then drops its callable, arguments and context, so none of them
  lives on with the worker.
* Raising an outcome leaves no cycle (error, traceback, frame) that keeps
  the error's frames alive (:func:`outcome`, :meth:`Task.take`).
* A job withdrawn (:attr:`Job.cancelled`) before a worker takes it never
  runs and never calls back; one taken finishes.
"""

from __future__ import annotations

import collections
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeAlias, TypeVar

from ._handle import HasHandle
from ._native import BatonLike
from .errors import outcome

__all__ = ["Call", "Drain", "Item", "Job", "Leave", "Stream", "Task", "outcome"]

_T = TypeVar("_T")


class Task:
    """A callable to run in a copy of the submitter's ``contextvars``, and
    its outcome: :attr:`result` or :attr:`error`."""

    __slots__ = ("args", "context", "error", "fn", "kwargs", "result")

    def __init__(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.context = contextvars.copy_context()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """Call it (on the calling thread), keeping the outcome."""
        try:
            self.result = self.context.run(self.fn, *self.args, **self.kwargs)
        except BaseException as exc:
            self.error = exc

    def take(self) -> tuple[Any, BaseException | None]:
        """The outcome, which the task no longer holds: ``outcome(*t.take())``."""
        result, error = self.result, self.error
        self.result = self.error = None
        return result, error


class Job(Task):
    """One call in a stream of calls for one set (``Workers.submit_job``),
    for front ends that wait for many calls at once.

    The job runs on whichever worker is draining its set's stream; that
    worker calls ``on_done(job)`` afterwards, on its own thread, with the
    outcome in :attr:`result` or :attr:`error`. Setting :attr:`cancelled`
    withdraws the job if no worker has taken it yet (``on_done`` is then
    never called); a job already taken finishes. A waiter that must know
    which of the two happened calls :meth:`seize` instead: the worker seizes
    the same claim before it runs the job, and only one of them gets it.
    """

    __slots__ = ("cancelled", "claim", "on_done")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        on_done: Callable[[Job], None],
    ) -> None:
        Task.__init__(self, fn, args, kwargs)
        self.on_done = on_done
        self.cancelled = False
        #: The claim token (see :meth:`seize`).
        self.claim = {0: True}

    def seize(self) -> bool:
        """Take the job's claim: ``True`` for exactly one caller, the worker
        about to run it or a waiter withdrawing it (``dict.pop`` is atomic,
        with or without the GIL)."""
        return self.claim.pop(0, False)


class Call(Task):
    """One submitted call and where its outcome goes.

    :meth:`deliver` runs on the worker thread after the worker is home (or
    discarded). The waiter is either a ``Future`` (``submit_in``) or a bare
    lock that the blocked caller waits on (``run_sync``).
    """

    __slots__ = ("future", "nsset", "ran", "waiter")

    def __init__(
        self,
        nsset: HasHandle | None,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: Future[Any] | None,
    ) -> None:
        Task.__init__(self, fn, args, kwargs)
        self.nsset = nsset
        self.future = future
        self.waiter: BatonLike | None = None
        self.ran = False

    def start(self) -> bool:
        """Whether the call should run (a cancelled future's does not)."""
        return self.future is None or self.future.set_running_or_notify_cancel()

    def fail(self, error: BaseException) -> None:
        """nspool failed around the call: its caller hears of it, unless the
        callable ran and has an outcome already."""
        if not self.ran:
            self.error = error

    def deliver(self) -> None:
        waiter = self.hand_over()
        if waiter is not None:
            waiter.post()

    def hand_over(self) -> BatonLike | None:
        """Deliver, except that a blocked caller's baton is returned to be
        posted by the worker as it goes to wait (``pass_baton``)."""
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
        self.fn = self.args = self.kwargs = None  # type: ignore[assignment]
        self.context = None  # type: ignore[assignment]
        return self.waiter


class Stream:
    """The jobs waiting for one set, taken in order by its drainers: workers
    that enter the set once and run job after job, checked after each,
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
        self.busy: set[object] = set()


class Drain:
    """A worker's item that drains :attr:`stream`: it has no outcome of its
    own (each job has), so nothing waits on it."""

    __slots__ = ("nsset", "stream")

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.nsset: HasHandle = stream.nsset

    def start(self) -> bool:
        return True

    def fail(self, error: BaseException) -> None:
        """Nobody waits on a drain: its jobs hear of failures themselves."""

    def deliver(self) -> None:
        """Nothing to deliver: each job was handed over as it finished."""


class Leave:
    """A worker's item that sends it home from the set it stayed in after
    its last call (the set was closed); :attr:`done` is set once it is."""

    __slots__ = ("done", "nsset")

    def __init__(self) -> None:
        self.nsset: HasHandle | None = None
        self.done = threading.Event()

    def start(self) -> bool:
        return True

    def fail(self, error: BaseException) -> None:
        """Nobody waits for an outcome: only for :attr:`done`."""

    def deliver(self) -> None:
        self.done.set()


#: What a worker takes from its slot or the queue.
Item: TypeAlias = Call | Drain | Leave
