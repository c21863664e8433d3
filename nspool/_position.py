"""Where a worker thread is, and the moves and checks of a call.

Owns :class:`Position`: one worker thread's namespaces, by kind, as the
worker itself keeps track of them (so it knows which kinds to skip without
asking the kernel), and every move and check a call makes: settling at
home, entering a set (:meth:`Position.in_set`), the checks after a call,
and the way home, or staying in the set until the next call there
(``STAY_IN_SET``). ``nspool._worker`` runs the thread loop on top of it.

Guarantees and the reasons for them:

* Before a callable runs, the thread is in exactly the set's namespaces:
  kinds it enters are read back (a set's fd number may have been closed and
  reused behind its back), kinds it is already in are skipped.
* After a call the thread is checked before it delivers: it still shares
  the process's fd table and fs (``kcmp``), the set's own kinds and
  ``time_for_children`` are where they should be (a callable that moved
  the thread there is caught: :class:`~nspool._home.Stranded`), and every
  other kind is forced home by one ``setns`` on the anchor's pidfd.
  Where it can, that is one call of :func:`nspool._native.check_and_return`;
  on any fault the checks run again one by one and say what is wrong.
* A thread stays in a set only where the way back is that one ``setns``
  (no mount namespace, the anchor, home reachable again) and the set is
  open; it goes home before a call anywhere else.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable, Iterable
from typing import TypeAlias

from . import _native, _sys
from ._handle import HasHandle, SetHandle
from ._home import FilesLost, Home, Stranded, check_links
from ._scheduler import Tunables
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

__all__ = ["Position"]

#: :func:`nspool._native.check_and_return`'s arguments.
_CheckArgs: TypeAlias = tuple[int, int, bool, int, tuple[bytes, ...], tuple[int, ...], int, int]


class Position:
    """One worker thread's namespaces and the moves of its calls. Used only
    on that thread (after :meth:`settle`)."""

    def __init__(self, home: Home, tunables: Tunables) -> None:
        self.home = home
        self.tunables = tunables
        #: Where the thread is, by kind.
        self.here: dict[Kind, int] = dict(home.ids)
        self.links: ThreadLinks | None = None
        self.tid = 0
        #: False once the thread is found with a private fd table.
        self.shares_files = True
        #: Whether the thread has its own cwd and root (unshare(CLONE_FS)),
        #: which joining a mount namespace requires.
        self.own_fs = False
        #: Rootless mode: the kinds in which the thread is in limbo, not at
        #: home; it serves only sets that hold all of them.
        self.strayed = 0
        #: Whether the checks after a call are one call of
        #: :func:`nspool._native.check_and_return` (compiled where it is
        #: built, else its Python twin): only where the syscalls keep the
        #: GIL, as that call does.
        self.quick = home.keep_gil
        #: The set the thread stayed in after its last call (see
        #: :meth:`_may_stay`), or ``None`` if it is home.
        self.parked: SetHandle | None = None
        #: The arguments of the quick checks after a call in :attr:`parked`,
        #: worked out once when the thread stayed (:meth:`again_in_park`).
        self._park_check: _CheckArgs | None = None

    def settle(self) -> None:
        """Open this thread's namespace directory and make sure the thread is
        in the executor's home namespaces (it starts in its creator's)."""
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

    def in_set(
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
                self.leave_park()  # closed just after the worker was picked
            fail(exc)
            return
        self.parked = None  # where the thread is, ``here`` says from now on
        try:
            expected = dict(self.here)
            try:
                self._enter(h, expected)
            except OSError as exc:
                fail(exc)
                self.leave(h.bits, self.here)
                return
            thread.stack.append(s)
            try:
                body(expected)
            finally:
                thread.stack.pop()
            if stay and self._may_stay(h):
                if not checked:
                    self.between_jobs(h.bits, expected)
                self._park_in(h, expected)
            else:
                self.leave(h.bits, expected)
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

    def _park_in(self, h: SetHandle, expected: dict[Kind, int]) -> None:
        """The thread stays in ``h``, where it is now (``expected``)."""
        others = FORCED_BITS & ~h.bits
        self._park_check = self._check_args(
            quick_checked_after(h.bits), expected, self.home.anchor_fd if others else -1, others
        )
        self.parked = h

    def may_run_again(self, s: HasHandle) -> bool:
        """Whether a call in ``s`` can take :meth:`again_in_park`: the thread
        stayed in ``s``'s handle, and the tunables still say to stay and to
        check only what the forced return does not cover."""
        return (
            self.parked is s.handle
            and self.tunables.stay_in_set
            and not self.tunables.check_every_kind
        )

    def again_in_park(self, s: HasHandle, run: Callable[[], None]) -> bool:
        """Another call in the set the thread stayed in (see
        :meth:`may_run_again`): nothing to enter, and after ``run()`` the
        quick checks worked out when it stayed; it stays again if they pass
        and the set is open, else it is checked one step at a time and goes
        home (raising :class:`Stranded` on a fault). ``False``, with nothing
        run, if the set was closed meanwhile: the caller takes the usual
        way (:meth:`in_set`), which goes home and fails the call. The hot
        path of a worker; measured in ``bench/workers.py``."""
        h = s.handle
        try:
            h.acquire()
        except NamespaceError:
            return False
        try:
            stack = thread.stack
            stack.append(s)
            try:
                run()
            finally:
                stack.pop()
            args = self._park_check
            assert args is not None
            if _native.check_and_return(*args) == _native.CHECK_OK and not h.closed:
                return True
            self.parked = None
            self.leave(h.bits, dict(self.here))
            return True
        finally:
            h.leave()

    def leave_park(self) -> None:
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

    def between_jobs(self, kind_bits: int, expected: dict[Kind, int]) -> None:
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

    def leave(self, kind_bits: int, expected: dict[Kind, int]) -> None:
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
        args = self._check_args(kinds, expected, anchor, flags)
        return _native.check_and_return(*args) == _native.CHECK_OK

    def _check_args(
        self, kinds: tuple[Kind, ...], expected: dict[Kind, int], anchor: int, flags: int
    ) -> _CheckArgs:
        """The arguments of :func:`nspool._native.check_and_return` for
        :meth:`_quick_check`."""
        links = self.links
        assert links is not None
        ids = tuple([expected[k] for k in kinds])
        return (self.home.pid, self.tid, True, links.fd, link_names(kinds), ids, anchor, flags)

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
