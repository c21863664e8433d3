"""The worker thread: one dedicated OS thread and its loop.

Owns :class:`Worker`. Its thread settles at home, waits on its own lock
for an item, serves it, and reports to its executor's scheduler through the
scheduler's public methods (``mark_idle_or_take``, ``retire_idle``,
``forget``, ``grow``, ``drainer_done``, ...); the scheduler, in turn, sees
only the worker's slot and lock (``nspool._idle.Taker``). A call

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
import errno
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable

from . import _native, _sys
from ._handle import HasHandle, SetHandle
from ._handoff import Call, Drain, Item, Job, Leave, Stream
from ._home import (
    FilesLost,
    Spent,
    Stranded,
    check_links,
    close_orphans,
    follow_process_cwd,
    leave_to_orphans,
)
from ._native import BatonLike
from ._scheduler import Scheduler
from ._thread_ns import (
    CHECKED,
    FORCED,
    FORCED_BITS,
    FORCED_WITH_MNT,
    FORCED_WITH_MNT_BITS,
    HOME_CHECKED,
    HOME_ORDER,
    MNT_BITS,
    UNJOINABLE,
    ThreadLinks,
    checked_after,
    link_names,
    quick_checked_after,
    thread,
)
from .errors import NamespaceError, UnsupportedKindError
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
        #: Whether the checks after a call are one call of
        #: :func:`nspool._native.check_and_return` (compiled where it is
        #: built, else its Python twin): only where the syscalls keep the
        #: GIL, as that call does.
        self.quick = self.home.keep_gil
        #: A stream's job whose outcome waits until the thread is retired.
        self.undelivered: Job | None = None
        #: The set the thread stayed in after its last call (see
        #: :meth:`_may_stay`), or ``None`` if it is home.
        self.parked: SetHandle | None = None

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
        links = self.links
        if not self.shares_files:
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
        """Open this thread's namespace directory and make sure the thread is
        in the executor's home namespaces (it starts in its creator's)."""
        close_orphans()
        home = self.home
        self.links = ThreadLinks(keep_gil=home.keep_gil)
        self.tid = threading.get_native_id()
        here = self.here = {**home.ids, **self.links.read(CHECKED)}
        moved = [k for k in HOME_ORDER if k in here and here[k] != home.ids[k]]
        for kind in moved:
            if kind in UNJOINABLE:
                raise UnsupportedKindError(
                    errno.EUSERS,
                    syscall="setns",
                    kind=kind,
                    detail="the thread that made this Workers has moved to another "
                    f"{kind} namespace; worker threads cannot follow",
                )
        home.go_back(self.links, moved, limbo=False, own_fs=self.own_fs, when="after settling")
        self._went_home(moved)

    def _went_home(self, kinds: Iterable[Kind]) -> None:
        """Record that the thread is home in ``kinds`` (:meth:`Home.go_back`)."""
        here, ids = self.here, self.home.ids
        for kind in kinds:
            here[kind] = ids[kind]
            if kind is Kind.MNT:
                self.own_fs = True

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
        parked = self.parked
        if parked is not None and (s is None or s.handle is not parked):
            self._leave_park()
        if self.own_fs and (s is None or not s.handle.bits & MNT_BITS):
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
            self._leave(0, self.home.ids)
            self._after(item)
            return
        call: Call = item

        def run(_expected: dict[Kind, int]) -> None:
            call.ran = True
            call.run()

        def fail(exc: BaseException) -> None:
            call.error = exc

        self._in_set(s, run, fail, stay=self.tunables.stay_in_set)
        self._after(call)

    def _in_set(
        self,
        s: HasHandle,
        body: Callable[[dict[Kind, int]], None],
        fail: Callable[[BaseException], None],
        *,
        stay: bool = False,
        checked: bool = False,
    ) -> None:
        """Enter ``s``, run ``body(expected)`` with ``s`` as
        :func:`current`, check and go home, or with ``stay`` stay in ``s``
        where the worker may (:meth:`_may_stay`): checked as between two
        jobs, unless ``checked`` (``body`` checked the thread after each
        callable it ran). ``fail(error)`` instead of ``body`` if ``s`` is
        closed or cannot be entered. Raises :class:`Stranded` if the thread
        must not be reused."""
        h = s.handle
        try:
            h.acquire()
        except NamespaceError as exc:
            if self.parked is not None:
                self._leave_park()  # closed just after the worker was picked
            fail(exc)
            return
        self.parked = None  # where the thread is, ``here`` says from now on
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
            if stay and self._may_stay(h):
                if not checked:
                    self._between_jobs(h.bits, expected)
                self.parked = h
            else:
                self._leave(h.bits, expected)
        finally:
            h.leave()

    def _may_stay(self, h: SetHandle) -> bool:
        """Whether the thread may stay in ``h`` after a call, idle until the
        next: where the checks after a call are one quick call and the way
        home one ``setns`` on the anchor for every kind it entered (no mount
        namespace; a user or time namespace is never entered), and unless
        ``h`` is closed (one closed later sends its
        idle workers home: ``Scheduler.send_home``)."""
        return (
            self._can_be_quick(h.bits, self.home.anchor_fd)
            and self.home.returnable
            and not h.closed
        )

    def _leave_park(self) -> None:
        """Go home from the set the thread stayed in: one forced return on
        the anchor. It was checked before it stayed and nothing moves an
        idle thread. Raises :class:`Stranded`."""
        self.parked = None
        home = self.home
        try:
            home.setns(home.anchor_fd, FORCED_BITS)
        except OSError as exc:
            raise Stranded(f"cannot go home: {exc}") from exc
        here, home_ids = self.here, home.ids
        for kind in FORCED:
            here[kind] = home_ids[kind]

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
        self._in_set(
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
                self._between_jobs(bits, expected)
            except Stranded:
                busy.discard(self)
                # Delivered once the thread is counted discarded (_retire),
                # so that a waiter woken by it sees the discard in stats().
                self.undelivered = job
                core.drainer_lost(stream)
                raise
            busy.discard(self)
            job.on_done(job)

    def _between_jobs(self, kind_bits: int, expected: dict[Kind, int]) -> None:
        """After a job, before the next one in the same set: the thread must
        still be in the set (the kinds read back after any call), and in
        home's namespaces for every other kind, forced back by one
        ``setns`` on the anchor. Without the anchor (or going home) every
        kind is read instead. Raises :class:`Stranded`."""
        anchor = self.home.anchor_fd
        others = FORCED_BITS & ~kind_bits
        if self._can_be_quick(kind_bits, anchor) and self._quick_check(
            quick_checked_after(kind_bits), expected, anchor if others else -1, others
        ):
            return
        self._check_shared(kind_bits, "after the call")
        if anchor < 0 or self.tunables.check_every_kind:
            self._check(CHECKED, expected, "after the call")
            return
        self._check(checked_after(kind_bits), expected, "after the call")
        if others:
            try:
                self.home.setns(anchor, others)
            except OSError as exc:
                raise Stranded(f"cannot go home: {exc}") from exc

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

    def _leave(self, kind_bits: int, expected: dict[Kind, int]) -> None:
        """After a call in a set of ``kind_bits``: check the thread is where it
        should be (``expected``), then take it home. Raises :class:`Stranded`.

        With the anchor, only what a forced return does not cover is read:
        the set's own kinds (a callable that moved the thread in them is
        caught), ``time_for_children`` (no threaded process can join a time
        namespace) and mnt (forced only when the set entered it, since the
        return resets cwd and root). Every other kind is forced home by the
        one ``setns``, whatever the callable did to it. The tunable
        ``CHECK_EVERY_KIND`` reads every kind.
        """
        home = self.home
        anchor = home.anchor_fd
        if (
            self._can_be_quick(kind_bits, anchor)
            and home.returnable
            and self._quick_check(quick_checked_after(kind_bits), expected, anchor, FORCED_BITS)
        ):
            here, home_ids = self.here, home.ids
            for kind in FORCED:
                here[kind] = home_ids[kind]
            return
        self._check_shared(kind_bits, "after the call")
        if not home.returnable:
            self._check(CHECKED, expected, "after the call")
            self.strayed = home.to_limbo(self.here)
            return
        if anchor < 0 or self.tunables.check_every_kind:
            checked: Iterable[Kind] = CHECKED
        else:
            checked = checked_after(kind_bits)
        self._check(checked, expected, "after the call")
        if anchor >= 0:
            # mnt only if the set moved it: a setns into a mount namespace
            # resets cwd and root, even into the one the thread is in.
            home_ids, here = home.ids, self.here
            left_mnt = here[Kind.MNT] != home_ids[Kind.MNT]
            try:
                if left_mnt:
                    home.setns(anchor, FORCED_WITH_MNT_BITS)
                    home.restore_fs()
                else:
                    home.setns(anchor, FORCED_BITS)
            except OSError as exc:
                raise Stranded(f"cannot go home: {exc}") from exc
            for kind in FORCED_WITH_MNT if left_mnt else FORCED:
                here[kind] = home_ids[kind]
            return
        assert self.links is not None
        entered = [k for k in HOME_CHECKED if self.here[k] != home.ids[k]]
        try:
            home.go_back(self.links, entered, limbo=False, own_fs=self.own_fs, check=entered)
        except OSError as exc:
            raise Stranded(f"cannot go home: {exc}") from exc
        self._went_home(entered)

    def _can_be_quick(self, kind_bits: int, anchor: int) -> bool:
        """Whether the checks after a call in a set of ``kind_bits`` can be
        one call of :func:`nspool._native.check_and_return`: with the
        anchor, outside any mount namespace (the thread shares the process's
        fs, compared by ``kcmp``) and unless every kind is to be read."""
        return (
            self.quick
            and anchor >= 0
            and not kind_bits & MNT_BITS
            and not self.own_fs
            and not self.tunables.check_every_kind
        )

    def _quick_check(
        self, kinds: tuple[Kind, ...], expected: dict[Kind, int], anchor: int, flags: int
    ) -> bool:
        """The thread shares the process's fd table and fs, its links of
        ``kinds`` are ``expected``, and then (``anchor`` >= 0) it is forced
        home in ``flags``, all in one call (compiled, or its Python twin). ``False``
        if anything is wrong: the caller then runs the checks one by one,
        which find the same fault and say what it is."""
        links = self.links
        assert links is not None
        return (
            _native.check_and_return(
                self.home.pid,
                self.tid,
                True,
                links.fd,
                link_names(kinds),
                tuple([expected[k] for k in kinds]),
                anchor,
                flags,
            )
            == _native.CHECK_OK
        )

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

    def _check(self, kinds: Iterable[Kind], expected: dict[Kind, int], when: str) -> None:
        assert self.links is not None
        check_links(self.links, kinds, expected, when)

    def _check_shared(self, kind_bits: int, when: str) -> None:
        """The thread still shares the process's fd table and fs
        (:meth:`Home.check_shared`). Raises :class:`Stranded`."""
        try:
            self.home.check_shared(self.tid, kind_bits, self.own_fs, when)
        except FilesLost:
            self.shares_files = False
            raise

    def _retire(self, item: Item | None, *, discarded: bool, spent: bool = False) -> None:
        core = self.core_ref()
        if core is not None:
            core.forget(self, discarded=discarded, spent=spent)
        job, self.undelivered = self.undelivered, None
        if job is not None:
            job.on_done(job)
        if item is not None:
            item.deliver()
