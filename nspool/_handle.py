"""A set's fds, shared by the threads that use them: what the mechanisms work on.

A :class:`SetHandle` owns one close-on-exec fd per kind and counts its
users, so that ``close()`` while another thread is entering the fds is safe:
they are closed only once the last user is done, and an fd number is never
reused under a ``setns`` in flight. Workers, sockets, processes and the pool
take a handle (or anything with a ``handle``: :class:`HasHandle`), never the
private fields of the user's ``NamespaceSet``, which holds one.

Also here, since they are about fds alone: :func:`close_fds`,
:func:`dup_fds`, and what a fork into an ended pid namespace means
(:func:`fork_error`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol

from .errors import NamespaceError, PidNamespaceEndedError, SetClosedError, from_errno
from .kinds import SETNS_ORDER, Kind

__all__ = [
    "HasHandle",
    "InitRef",
    "SetHandle",
    "close_fds",
    "dup_fds",
    "fork_error",
    "pid_namespace_ended_error",
]

_PID_BITS = int(Kind.PID)


class InitRef(Protocol):
    """A counted reference to a pid namespace's init (``_pidinit.PidInit``)."""

    @property
    def pid(self) -> int: ...

    def alive(self) -> bool: ...

    def acquire(self) -> InitRef: ...

    def release(self) -> None: ...


class HasHandle(Protocol):
    """Anything the mechanisms can run in: a ``NamespaceSet``, or a bare
    :class:`SetHandle` (whose ``handle`` is itself)."""

    @property
    def handle(self) -> SetHandle: ...


def close_fds(fds: Iterable[int]) -> None:
    """Close each fd, ignoring those already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def dup_fds(fds: Mapping[Kind, int]) -> dict[Kind, int]:
    """A close-on-exec copy of every fd in ``fds``, or none: if one ``dup``
    fails (``EMFILE``), the copies made so far are closed and a
    :class:`NamespaceError` naming the kind is raised."""
    copies: dict[Kind, int] = {}
    try:
        for kind, fd in fds.items():
            try:
                copies[kind] = os.dup(fd)  # close-on-exec, as Python's dup is
            except OSError as exc:
                raise from_errno(
                    exc.errno or errno.EIO,
                    syscall="dup",
                    kind=kind,
                    detail="too many open files: raise RLIMIT_NOFILE or close fds"
                    if exc.errno == errno.EMFILE
                    else None,
                ) from exc
    except BaseException:
        close_fds(copies.values())
        raise
    return copies


class SetHandle:
    """One open namespace per kind, owned by fd, with a count of its users.

    The fields are read on hot paths and never change while the handle is
    open: ``fds`` (kind to fd), ``bits`` (the kinds as a plain int: IntFlag
    arithmetic is slow), ``kinds``, ``order`` ((kind, fd) in the order a
    thread enters them) and ``init`` (the pid-namespace init it keeps alive,
    or ``None``). Use the fds only between :meth:`acquire` and
    :meth:`leave` (or in :meth:`borrow`).
    """

    __slots__ = (
        "_ids",
        "_lock",
        "_released",
        "_users",
        "_watchers",
        "bits",
        "closed",
        "fds",
        "init",
        "kinds",
        "order",
        "pid_ended",
    )

    def __init__(self, fds: Mapping[Kind, int], *, init: InitRef | None = None) -> None:
        """Take ownership of ``fds`` (one namespace fd per single kind) and of
        the reference ``init``; trusts its arguments."""
        self.fds: dict[Kind, int] = dict(fds)
        self.bits = sum(int(k) for k in self.fds)
        self.kinds = Kind(self.bits)
        self.init = init
        self.order = tuple((k, self.fds[k]) for k in SETNS_ORDER if k in self.fds)
        self.closed = False
        #: Set once a fork into the set's pid namespace failed with ENOMEM.
        self.pid_ended = False
        self._lock = threading.Lock()
        self._users = 0
        self._released = False
        self._ids: dict[Kind, int] | None = None
        self._watchers: dict[object, Callable[[SetHandle], None]] = {}

    @property
    def handle(self) -> SetHandle:
        """Itself (see :class:`HasHandle`)."""
        return self

    def acquire(self) -> dict[Kind, int]:
        """Start using the fds; they stay open until the matching
        :meth:`leave`, even if another thread closes the handle meanwhile.
        Raises :class:`SetClosedError` if it is already closed."""
        with self._lock:
            if self.closed:
                raise SetClosedError(
                    errno.EBADF, syscall="NamespaceSet", kind=self.kinds, detail="the set is closed"
                )
            self._users += 1
        return self.fds

    def leave(self) -> None:
        """End one :meth:`acquire`; the last user of a closed handle
        releases its fds."""
        with self._lock:
            self._users -= 1
            release = self.closed and not self._users and not self._released
            if release:
                self._released = True
        if release:
            self._release()

    @contextlib.contextmanager
    def borrow(self, kinds: Kind | None = None) -> Iterator[dict[Kind, int]]:
        """Use the fds of ``kinds`` (default: all) without racing :meth:`close`."""
        fds = self.acquire()
        try:
            yield fds if kinds is None else {k: fd for k, fd in fds.items() if k & kinds}
        finally:
            self.leave()

    def ids_of_acquired(self) -> dict[Kind, int]:
        """The inode of each namespace, computed once (the fds never change).
        Call only between :meth:`acquire` and :meth:`leave`."""
        ids = self._ids
        if ids is None:
            ids = self._ids = {k: os.fstat(fd).st_ino for k, fd in self.fds.items()}
        return ids

    def closed_error(self) -> NamespaceError:
        """The error for using this handle once it is closed."""
        return SetClosedError(
            errno.EBADF, syscall="NamespaceSet", kind=self.kinds, detail="the set is closed"
        )

    def dup(self, kinds: Kind | None = None) -> SetHandle:
        """A new handle on the same namespaces of ``kinds`` (default: all)."""
        with self.borrow(kinds) as fds:
            copies = dup_fds(fds)
            init = self.init.acquire() if self.init is not None and Kind.PID in copies else None
            return SetHandle(copies, init=init)

    @property
    def pid_namespace_ended(self) -> bool:
        """Whether the pid namespace can take no new process (see
        ``NamespaceSet.pid_namespace_ended``)."""
        if not self.bits & _PID_BITS:
            return False
        if not self.pid_ended and self.init is not None and not self.init.alive():
            self.pid_ended = True
        return self.pid_ended

    def watch(self, key: object, on_close: Callable[[SetHandle], None]) -> bool:
        """Have ``on_close(handle)`` called once when the handle is closed,
        on the closing thread, after the fds are released or handed to their
        last user (one callback per ``key``; a later one replaces it).
        ``False``, and nothing registered, if it is closed already."""
        with self._lock:
            if self.closed:
                return False
            self._watchers[key] = on_close
            return True

    def close(self) -> None:
        """Close the fds once no thread is using them, drop the init
        reference, then call what :meth:`watch` registered. Idempotent;
        safe from any thread."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            release = not self._users
            self._released = release
            watchers, self._watchers = self._watchers, {}
        if release:
            self._release()
        for on_close in watchers.values():
            on_close(self)

    def _release(self) -> None:
        fds, self.fds = self.fds, {}
        self.order = ()
        close_fds(fds.values())
        init, self.init = self.init, None
        if init is not None:
            init.release()


def pid_namespace_ended_error(s: HasHandle) -> PidNamespaceEndedError:
    """The error for a fork into ``s`` whose pid namespace has ended."""
    h = s.handle
    init = f"its init (pid {h.init.pid})" if h.init is not None else "its PID 1"
    return PidNamespaceEndedError(
        errno.ENOMEM,
        syscall="fork",
        kind=Kind.PID,
        pid=None if h.init is None else h.init.pid,
        detail=f"the set's pid namespace has ended: {init} exited or was killed, "
        "so the kernel takes no new process there; close the set and make a new one",
    )


def fork_error(s: HasHandle, exc: BaseException) -> BaseException:
    """Translate an error from starting a process in ``h``: ``ENOMEM`` from
    ``fork``/``clone`` into a set holding a pid namespace means that
    namespace has ended (its PID 1 is gone). Then ``s`` remembers it
    (``pid_ended``) and a :class:`PidNamespaceEndedError` is returned; any
    other error is returned as it is. Callers: ``raise fork_error(s, exc)
    from exc``."""
    h = s.handle
    if (
        isinstance(exc, OSError)
        and not isinstance(exc, NamespaceError)
        and exc.errno == errno.ENOMEM
        and h.bits & _PID_BITS
    ):
        h.pid_ended = True
        return pid_namespace_ended_error(h)
    return exc
