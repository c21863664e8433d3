"""The worker thread: one dedicated OS thread and its loop.

Owns :class:`Worker`. Its thread settles at home, waits on its own baton
for an item, serves it, and reports to its executor's scheduler through the
scheduler's public methods (``mark_idle_or_take``, ``retire_idle``,
``forget``, ``grow``, ``drainer_done``, ...); the scheduler, in turn, sees
only the worker's slot and baton (``nspool._idle.Taker``). The moves and
checks are its :class:`~nspool._position.Position`'s. A call

1. enters the set's namespaces in :data:`~nspool.kinds.SETNS_ORDER`,
   skipping kinds the thread is already in;
2. runs the callable in a copy of the submitter's ``contextvars``;
3. checks that the thread is in exactly the namespaces it entered, for
   every kind (``pid_for_children`` and ``time_for_children`` included), so
   a callable that called ``unshare`` or ``setns`` itself is caught, and
   that it still shares the process's fd table and fs;
4. goes home (and after a mount namespace, back to its cwd and root), and
   checks again; or, where it may (``STAY_IN_SET``, no mount namespace,
   the anchor to go home by), goes home only in the kinds outside the set
   and waits in the set for its next call, which then enters nothing. A
   call elsewhere sends it home first; so does the set's ``close()``.

Guarantees and the reasons for them:

* A thread that fails a check, or cannot go home, is *discarded*: it exits
  and never takes another call, the event is logged and counted, and a new
  thread takes its place when there is work. The caller gets the
  callable's result or exception either way. No thread ever runs a call in
  namespaces it was not asked for.
* Every worker thread starts by moving itself to its executor's home (a new
  thread inherits its creator's namespaces, and the creator may be inside a
  set); one that cannot is discarded before it takes its first item.
* A blocked ``run_sync`` caller is woken as the worker goes to wait, with
  the GIL already let go of (``nspool._native.pass_baton``), and after the
  worker is marked idle: a caller that submits again at once finds it free.
* A worker holds only a weak reference to its scheduler while idle, so an
  unreferenced executor can be collected; its threads then exit.
* In rootless mode, where home cannot be reached again, a worker waits in
  limbo after a call (see ``nspool._home``), or exits if it has left home
  in a kind limbo does not cover.

Kernel limits a worker cannot lift: a multi-threaded process cannot join a
user namespace (``EINVAL``) or a time namespace (``EUSERS``), so a set whose
user or time namespace differs from home is refused with
:class:`UnsupportedKindError`. Pid and time namespaces apply only to
processes the callable starts; a set with a pid namespace keeps an init in it
(see ``NamespaceSet``), so those processes are its PIDs 2, 3, ...
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import weakref

from . import _native
from ._handle import SetHandle
from ._handoff import Call, Drain, Item, Job, Leave, Stream
from ._home import (
    Spent,
    Stranded,
    close_orphans,
    follow_process_cwd,
    leave_to_orphans,
)
from ._native import BatonLike
from ._position import Position
from ._scheduler import Scheduler
from ._thread_ns import (
    MNT_BITS,
)
from .kinds import Kind

__all__ = ["Worker"]

logger = logging.getLogger("nspool")

_worker_numbers = itertools.count(1)


class Worker:
    """One dedicated thread. Idle, it waits on ``wake``; a submitter puts an
    item in ``item`` and releases ``wake``. ``item`` set to ``None`` with
    ``wake`` released means: exit."""

    def __init__(self, core: Scheduler, first: Item | None) -> None:
        self.core_ref = weakref.ref(core)
        self.home = core.home.acquire()
        self.tunables = core.tunables
        #: The CPUs it may use unpinned (the executor creator's).
        self.cpus = core.cpus
        self.wake = _native.Baton()
        #: A blocked caller's baton, posted as the thread goes to wait.
        self.to_post: BatonLike | None = None
        self.item: Item | None = first
        self.thread = threading.Thread(
            target=self._main, name=f"nspool-worker-{next(_worker_numbers)}", daemon=True
        )
        #: Where the thread is, and the moves and checks of a call.
        self.pos = Position(self.home, core.tunables)
        self.cpu = -1
        #: Whether its exit should let a fresh thread take queued calls.
        self.spent = False
        #: A stream's job whose outcome waits until the thread is retired.
        self.undelivered: Job | None = None

    @property
    def strayed(self) -> int:
        """Rootless mode: the kinds in which the thread waits in limbo."""
        return self.pos.strayed

    @property
    def parked(self) -> SetHandle | None:
        """The set the thread stayed in after its last call, if any."""
        return self.pos.parked

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
                os.sched_setaffinity(tid, {cpu} if cpu >= 0 else self.cpus)

    def _main(self) -> None:
        item, self.item = self.item, None
        if self.cpu >= 0:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {self.cpu})
        try:
            self._settle()
        except BaseException as exc:
            logger.error("nspool worker could not settle at home: %s", exc)
            if item is not None:
                item.fail(exc)
            self._retire(item, discarded=True)
            core = self.core_ref()
            if isinstance(item, Drain) and core is not None:
                # A drain has no waiter: the stream's jobs do.
                core.fail_waiting(item.stream, exc)
            self._close()
            return
        try:
            while True:
                if item is None:
                    item = self._wait()
                    if item is None:
                        return
                if not self._serve(item):
                    return
                item = None
        finally:
            self._close()

    def _close(self) -> None:
        post, self.to_post = self.to_post, None
        if post is not None:
            post.post()
        links = self.pos.links
        if not self.pos.shares_files:
            # Closes here would reach only this thread's private fd table:
            # a thread that shares the process's does them.
            if links is not None:
                leave_to_orphans(links.close, self.home.release)
            else:
                leave_to_orphans(self.home.release)
            return
        if links is not None:
            links.close()
        self.home.release()
        close_orphans()

    def _settle(self) -> None:
        """Close what earlier threads left to close, then settle at home
        (:meth:`Position.settle`)."""
        close_orphans()
        self.pos.settle()

    def _wait(self) -> Item | None:
        """Wait for an item; ``None`` means exit (shutdown or idle timeout)."""
        while True:
            post, self.to_post = self.to_post, None
            timeout = self.tunables.idle_timeout
            if (
                self.wake.wait(timeout)
                if post is None
                else _native.pass_baton(post, self.wake, timeout)
            ):
                item, self.item = self.item, None
                if item is None:
                    self._retire(None, discarded=False, spent=self.spent)
                return item
            core = self.core_ref()
            if core is None or core.retire_idle(self):
                self._retire(None, discarded=False)
                return None
            # A submitter picked us just as the wait timed out: take its item.

    def _serve(self, item: Item) -> bool:
        """Run ``item`` and deliver its outcome; whether the thread stays."""
        if not item.start():  # a future cancelled while queued
            self._after(item)
            return True
        try:
            self._run(item)
        except Spent:
            self._retire(item, discarded=False, spent=True)
            return False
        except Stranded as exc:
            logger.warning("nspool worker %s discarded: %s", self.thread.name, exc)
            self._retire(item, discarded=True)
            return False
        except BaseException as exc:
            # A fault of nspool itself: the thread's state is unknown, so it
            # goes; the caller still hears of the call.
            logger.exception("nspool worker %s failed; discarded", self.thread.name)
            item.fail(exc)
            self._retire(item, discarded=True)
            return False
        return self.core_ref() is not None

    def _run(self, item: Item) -> None:
        """Enter, call, check, go home. Raises :class:`Stranded` if the thread
        must not be reused; the call's outcome is in ``item`` either way."""
        s = item.nsset
        parked = self.pos.parked
        if parked is not None and (s is None or s.handle is not parked):
            self.pos.leave_park()
        if self.pos.own_fs and (s is None or not s.handle.bits & MNT_BITS):
            follow_process_cwd()
        if isinstance(item, Leave):
            self._after(item)
            return
        if isinstance(item, Drain):
            self._drain(item.stream)
            self._after(item)
            return
        if s is None:
            item.ran = True
            item.run()
            self.pos.leave(0, self.home.ids)
            self._after(item)
            return
        call: Call = item
        pos = self.pos
        if pos.may_run_again(s):
            call.ran = True
            if pos.again_in_park(s, call.run):
                self._after(call)
                return
            call.ran = False

        def run(_expected: dict[Kind, int]) -> None:
            call.ran = True
            call.run()

        def fail(exc: BaseException) -> None:
            call.error = exc

        self.pos.in_set(s, run, fail, stay=self.tunables.stay_in_set)
        self._after(call)

    def _drain(self, stream: Stream) -> None:
        """Enter the stream's set once and run its jobs until none is left,
        each checked as a call is (:meth:`_between_jobs`), then go home or
        stay in the set (no second check: each job's was the last word).
        Raises :class:`Stranded` as :meth:`_run` does; the jobs left are
        then drained by another thread."""
        core = self.core_ref()
        if core is None:
            return
        stream.growing = False
        self.pos.in_set(
            stream.nsset,
            lambda expected: self._run_jobs(core, stream, expected),
            lambda exc: core.fail_stream(stream, exc),
            stay=self.tunables.stay_in_set,
            checked=True,
        )

    def _run_jobs(self, core: Scheduler, stream: Stream, expected: dict[Kind, int]) -> None:
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
                if core.drainer_done(stream):
                    return
                continue
            if jobs and not stream.growing:
                core.grow(stream)  # more waiting: another thread may help
            if job.cancelled or not job.seize():  # withdrawn by its waiter
                busy.discard(self)
                continue
            if h.closed:
                job.error = h.closed_error()
                busy.discard(self)
                job.on_done(job)
                continue
            job.run()
            try:
                self.pos.between_jobs(bits, expected)
            except Stranded:
                busy.discard(self)
                # Delivered once the thread is counted discarded (_retire),
                # so that a waiter woken by it sees the discard in stats().
                self.undelivered = job
                core.drainer_lost(stream)
                raise
            busy.discard(self)
            job.on_done(job)

    def _after(self, item: Item) -> None:
        """The worker is home (or in its set) and healthy: mark it idle (or
        give it the next queued item), then deliver; a blocked caller is
        woken as the thread goes to wait (:attr:`to_post`)."""
        core = self.core_ref()
        if core is None:
            item.deliver()
        elif isinstance(item, Call) and item.waiter is not None:
            core.mark_idle_or_take(self, deliver=None)
            self.to_post = item.hand_over()
        else:
            core.mark_idle_or_take(self, deliver=item)

    def _retire(self, item: Item | None, *, discarded: bool, spent: bool = False) -> None:
        core = self.core_ref()
        if core is not None:
            core.forget(self, discarded=discarded, spent=spent)
        job, self.undelivered = self.undelivered, None
        if job is not None:
            job.on_done(job)
        if item is not None:
            item.deliver()
