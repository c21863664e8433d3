"""A thread's own namespaces: reading its links, entering sets, coming back.

What every layer above needs of "the calling thread": the sets whose call
it is running (:data:`thread`, behind ``nspool.current()``), fds of its own
namespaces (:func:`open_thread_ns`, :func:`way_back`), :func:`enter`, a call
made on the calling thread inside a set (:func:`call_inline`), and the
link reader the workers check with (:class:`ThreadLinks`).

The hot path's tables live here too, decided once at import: which kinds a
worker reads back after a call and which it forces home in one ``setns``.
They are plain ints and tuples: ``IntFlag`` arithmetic costs about a
microsecond an operation. Whether the syscalls keep the GIL is decided
once per executor (:func:`setns_for`, :class:`ThreadLinks`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import ParamSpec, TypeVar

from . import _native, _sys
from ._handle import HasHandle, close_fds
from .errors import UnsupportedKindError
from .kinds import NO_KINDS, SETNS_ORDER, Kind

__all__ = [
    "CHECKED",
    "THREAD_NS_DIR",
    "ThreadLinks",
    "call_inline",
    "checked_after",
    "enter",
    "link_names",
    "open_thread_ns",
    "quick_checked_after",
    "same_file",
    "setns_for",
    "thread",
]

_T = TypeVar("_T")
_P = ParamSpec("_P")

#: The calling thread's namespace links, as the host's ``/proc`` shows them.
THREAD_NS_DIR = "/proc/thread-self/ns"

#: Kinds whose link a worker reads after each call. Not user: a thread of a
#: multi-threaded process can neither unshare nor join one, so it cannot move.
CHECKED = tuple(k for k in SETNS_ORDER if k is not Kind.USER)
#: Kinds a thread cannot join in a threaded process: a set may hold them
#: only if they are the ones the worker is already in.
UNJOINABLE = frozenset((Kind.USER, Kind.TIME))
#: Kinds a worker forces home in one ``setns`` on the anchor's pidfd (and
#: mnt, once the thread has its own cwd and root).
FORCED = (Kind.NET, Kind.UTS, Kind.IPC, Kind.CGROUP, Kind.PID)
FORCED_BITS = sum(int(k) for k in FORCED)
FORCED_WITH_MNT = (*FORCED, Kind.MNT)
FORCED_WITH_MNT_BITS = FORCED_BITS | int(Kind.MNT)
#: Kinds read after every call because the forced return does not cover them.
NOT_FORCED_BITS = int(Kind.TIME) | int(Kind.MNT)
MNT_BITS = int(Kind.MNT)
#: Order for going home: mnt first, so that the thread is back in its own
#: filesystem view before anything else.
HOME_ORDER = tuple(reversed(SETNS_ORDER))
HOME_CHECKED = tuple(k for k in HOME_ORDER if k in CHECKED)
_LINK_NAMES: dict[Kind, bytes] = {k: os.fsencode(k.for_children_name) for k in CHECKED}
_checked_for: dict[int, tuple[Kind, ...]] = {}
_quick_checked_for: dict[int, tuple[Kind, ...]] = {}
_names_for: dict[tuple[Kind, ...], tuple[bytes, ...]] = {}


def setns_for(keep_gil: bool) -> Callable[[int, int], None]:
    """The ``setns`` a worker calls: one that keeps the GIL (microseconds,
    where a released GIL can take a switch interval to get back on a busy
    interpreter), or the plain one."""
    return _sys.setns_holding_gil if keep_gil else _sys.setns


def checked_after(kind_bits: int) -> tuple[Kind, ...]:
    """The kinds read after a call in a set of ``kind_bits`` (memoised)."""
    checked = _checked_for.get(kind_bits)
    if checked is None:
        mask = kind_bits | NOT_FORCED_BITS
        checked = _checked_for[kind_bits] = tuple(k for k in CHECKED if int(k) & mask)
    return checked


def quick_checked_after(kind_bits: int) -> tuple[Kind, ...]:
    """The kinds read after a call in a set of ``kind_bits`` that holds no
    mount namespace, when the same checks compare the thread's fs with the
    process's by ``kcmp`` (memoised): as :func:`checked_after`, without mnt.
    A thread that shares its fs cannot have left its mount namespace:
    ``setns`` into one refuses a shared fs (``EINVAL``) and
    ``unshare(CLONE_NEWNS)`` unshares the fs first, so the fs comparison
    catches what the mnt link would."""
    checked = _quick_checked_for.get(kind_bits)
    if checked is None:
        checked = _quick_checked_for[kind_bits] = tuple(
            k for k in checked_after(kind_bits) if k is not Kind.MNT
        )
    return checked


def link_names(kinds: tuple[Kind, ...]) -> tuple[bytes, ...]:
    """The link names of ``kinds`` in ``/proc/thread-self/ns`` (memoised),
    as the compiled checks take them."""
    names = _names_for.get(kinds)
    if names is None:
        names = _names_for[kinds] = tuple(_LINK_NAMES[k] for k in kinds)
    return names


def same_file(a: os.stat_result, b: os.stat_result | None) -> bool:
    """Whether two stats name the same file."""
    return b is not None and (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


class _HomeFds(dict[Kind, int]):
    """A thread's own namespaces, opened when first needed; closed when the
    thread ends and its thread-local state is dropped."""

    def __del__(self, close: Callable[[Iterable[int]], None] = close_fds) -> None:
        # ``close`` bound now: module globals may be gone at interpreter exit.
        close(self.values())


class _ThreadState(threading.local):
    """Per thread: the sets it is running a call in (innermost last), and
    fds of the namespaces it is in outside any set."""

    def __init__(self) -> None:
        self.stack: list[HasHandle] = []
        self.home = _HomeFds()


#: The calling thread's state (see :class:`_ThreadState`).
thread = _ThreadState()


def open_thread_ns(kind: Kind) -> int:
    """An fd of the calling thread's own namespace of ``kind`` (for pid and
    time, where its children go), close-on-exec and checked."""
    return _sys.open_ns(os.path.join(THREAD_NS_DIR, kind.for_children_name), kind)


def way_back(kind: Kind) -> int:
    """An fd of where the calling thread is now for ``kind``: the innermost
    running set holding ``kind``, or else the thread's own namespace (opened
    once per thread while the thread is in it)."""
    for s in reversed(thread.stack):
        fd = s.handle.fds.get(kind)
        if fd is not None:
            return fd
    home = thread.home
    fd = home.get(kind)
    if fd is None:
        fd = open_thread_ns(kind)
        if not _sys.may_return(fd):
            os.close(fd)
            raise UnsupportedKindError(
                errno.EPERM,
                syscall="setns",
                kind=kind,
                detail="this thread could not come back: its namespace belongs to an "
                "ancestor user namespace (rootless mode); use run_sync or run",
            )
        home[kind] = fd
    return fd


def forget_thread_home() -> None:
    """Close the calling thread's cached home fds (tests use this to leave
    the main thread as they found it)."""
    home, thread.home = thread.home, _HomeFds()
    close_fds(home.values())
    home.clear()


def enter(fds: Mapping[Kind, int], *, skip: Kind = NO_KINDS) -> None:
    """Move the calling thread into the namespaces ``fds``, in
    :data:`~nspool.kinds.SETNS_ORDER`, except the kinds in ``skip``.

    Runs on the calling thread and changes it: call it only on a thread that
    is then restored or thrown away. Before a mount namespace the thread stops
    sharing its filesystem attributes (``unshare(CLONE_FS)``), which the
    kernel requires; from then on its cwd and root are its own.
    On failure the thread may be partly moved: discard it.
    """
    for kind in SETNS_ORDER:
        fd = fds.get(kind)
        if fd is None or kind & skip:
            continue
        if kind is Kind.MNT:
            _sys.unshare_fs()
        _sys.setns(fd, kind)


def run_as_current(
    s: HasHandle, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """``fn(*args, **kwargs)`` with ``s`` as ``nspool.current()`` meanwhile
    (the calling thread is inside ``s``)."""
    stack = thread.stack
    stack.append(s)
    try:
        return fn(*args, **kwargs)
    finally:
        stack.pop()


def call_inline(
    s: HasHandle,
    kinds: Kind | None,
    fn: Callable[_P, _T],
    /,
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> _T:
    """Enter ``s``'s namespaces of ``kinds`` (default: all, and ``s`` is
    ``nspool.current()`` during the call) on the calling thread, call, and
    go back by fd. Raises :class:`~nspool.SetClosedError` if ``s`` is
    closed; the caller checks that the kinds can be left again."""
    h = s.handle
    h.acquire()
    try:
        order = h.order if kinds is None else tuple((k, fd) for k, fd in h.order if k & kinds)
        back = [(kind, way_back(kind)) for kind, _ in order]
        entered = 0
        try:
            for kind, fd in order:
                _sys.setns(fd, kind)
                entered += 1
            if kinds is not None:
                return fn(*args, **kwargs)
            return run_as_current(s, fn, *args, **kwargs)
        finally:
            for kind, fd in back[:entered]:
                _sys.setns(fd, kind)
    finally:
        h.leave()


class ThreadLinks:
    """Reads the calling thread's namespace links, for the checks after a
    call. Made on the thread it reads: the directory fd is opened once and
    keeps naming that thread even inside a mount namespace whose ``/proc``
    shows other pids. ``keep_gil``: read through
    :func:`nspool._native.read_inodes` (compiled, or its GIL-holding Python
    twin; see :func:`setns_for`) or ``os.readlink``."""

    def __init__(self, *, keep_gil: bool = True) -> None:
        self.keep_gil = keep_gil
        self.fd = os.open(THREAD_NS_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.stat = os.fstat(self.fd)

    def read(self, kinds: Iterable[Kind]) -> dict[Kind, int]:
        """The inode of each kind's link; ``OSError`` if it cannot be read."""
        fd = self.fd
        if self.keep_gil:
            order = tuple(kinds)
            return dict(zip(order, _native.read_inodes(fd, link_names(order)), strict=True))
        links: dict[Kind, int] = {}
        for kind in kinds:
            link = os.readlink(kind.for_children_name, dir_fd=fd)
            links[kind] = int(link[link.index("[") + 1 : -1])
        return links

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        # A callable may have closed our fd (and the number may now be
        # someone else's): close it only if it is still our directory.
        with contextlib.suppress(OSError):
            if fd >= 0 and same_file(os.fstat(fd), self.stat):
                os.close(fd)
