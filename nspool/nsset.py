"""``NamespaceSet``: a set of namespaces held by file descriptors.

A set owns one close-on-exec fd per kind. Holding the fd keeps the namespace
alive; closing the set's last fd (with no thread or process left inside) lets
the kernel free it. A set never moves the thread that creates or opens it:
new namespaces are made on a short-lived helper thread, which is thrown away
afterwards, so the caller's own namespaces are untouched (the bug of
vishvananda/netns#50 and #79 cannot happen here).

Thread-safety: every method may be called from any thread. ``close()`` while
another thread is using the fds (for example entering them) is safe: the fds
are closed only once the last user is done, so an fd number is never reused
under a ``setns`` in flight.

Unsafe cases, on purpose left to the caller:

* ``fds()`` hands out the set's own fds: they stay valid only until
  ``close()``. Use ``dup()`` to keep namespaces beyond the set's life.
* ``setns`` into a time namespace fails with ``EUSERS`` in any multi-threaded
  process, and into a user namespace with ``EINVAL``; holding such fds works.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket as _socket
import stat
import subprocess
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar, Unpack

if TYPE_CHECKING:
    import anyio.abc

    from .aio import Command, NamespaceProcess, ProcessOptions

import sniffio

from . import _sys
from ._options import SetOptions, UnshareOptions
from ._pidinit import PidInit as _PidInit
from ._userns import make_in_helper
from .errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidNetnsNameError,
    KindError,
    NamespaceError,
    NamespaceExistsError,
    NamespaceNotFoundError,
    NotANamespaceError,
    PidNamespaceEndedError,
    ProcessNotFoundError,
    SetClosedError,
    UnsupportedKindError,
    from_errno,
)
from .kinds import ALL_KINDS, NO_KINDS, SETNS_ORDER, Kind
from .net import loopback_up

__all__ = ["INLINE_KINDS", "NamespaceSet", "current", "enter"]

#: Where ``ip netns`` keeps its names (iproute2's ``NETNS_RUN_DIR``).
NETNS_RUN_DIR = "/run/netns"

#: The calling thread's namespace links, as the host's ``/proc`` shows them.
_THREAD_NS_DIR = "/proc/thread-self/ns"

#: Propagation given to a new mount namespace's mounts, as ``unshare(1)``
#: does by default: nothing mounted inside reaches the host or back.
NEW_MOUNT_PROPAGATION = _sys.MS_REC | _sys.MS_PRIVATE

#: Kinds a thread can enter and leave again at once, which is what
#: :meth:`NamespaceSet.call_inline` needs of the caller's thread. Not mnt
#: (joining one makes the thread unshare its cwd and root for good), pid and
#: time (they move only children; time cannot be joined by a threaded
#: process), nor user (cannot be joined by a threaded process).
INLINE_KINDS = Kind.NET | Kind.UTS | Kind.IPC | Kind.CGROUP

_NO_OPTIONS = SetOptions()

_T = TypeVar("_T")
_P = ParamSpec("_P")
KindsArg = Kind | int | str | Iterable[str | Kind]


class _HomeFds(dict[Kind, int]):
    """A thread's own namespaces, opened when first needed; closed when the
    thread ends and its thread-local state is dropped."""

    def __del__(self) -> None:
        _close_fds(self.values())


class _ThreadState(threading.local):
    """Per thread: the sets it is running a call in (innermost last), and
    fds of the namespaces it is in outside any set."""

    def __init__(self) -> None:
        self.stack: list[NamespaceSet] = []
        self.home = _HomeFds()


_thread = _ThreadState()


def current() -> NamespaceSet | None:
    """The set whose call the calling thread is running (the innermost one,
    for nested ``call_inline``), or ``None`` outside any call.

    Threads started by the callable are not counted as running in the set,
    though they begin in its namespaces (see the kernel rules).
    """
    stack = _thread.stack
    return stack[-1] if stack else None


def _open_thread_ns(kind: Kind) -> int:
    """An fd of the calling thread's own namespace of ``kind`` (for pid and
    time, where its children go), close-on-exec and checked."""
    return _sys.open_ns(os.path.join(_THREAD_NS_DIR, kind.for_children_name), kind)


def _way_back(kind: Kind) -> int:
    """An fd of where the calling thread is now for ``kind``: the innermost
    running set holding ``kind``, or else the thread's own namespace (opened
    once per thread while the thread is in it)."""
    for s in reversed(_thread.stack):
        fd = s._fds.get(kind)
        if fd is not None:
            return fd
    home = _thread.home
    fd = home.get(kind)
    if fd is None:
        fd = _open_thread_ns(kind)
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


def _forget_thread_home() -> None:
    """Close the calling thread's cached home fds (tests use this to leave
    the main thread as they found it)."""
    home, _thread.home = _thread.home, _HomeFds()
    _close_fds(home.values())
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


def _run_hook(s: NamespaceSet, hook: Callable[[NamespaceSet], object]) -> None:
    """Call ``hook(s)`` on the calling thread, which is inside ``s``, with
    ``s`` as :func:`current` meanwhile."""
    _thread.stack.append(s)
    try:
        hook(s)
    finally:
        _thread.stack.pop()


def _on_helper_thread(work: Callable[[], _T], cleanup: Callable[[_T], None], *, name: str) -> _T:
    """Run ``work`` on a new thread that exits afterwards, and return its
    result; any namespace change ``work`` makes dies with that thread.

    Blocks the calling thread until the helper ends. If the wait is
    interrupted (``KeyboardInterrupt``), the helper finishes on its own and
    hands its result to ``cleanup`` instead, so nothing it made leaks.
    """
    lock = threading.Lock()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # delivered to the caller below
            with lock:
                box["error"] = exc
            return
        with lock:
            abandoned = box.get("abandoned", False)
            if not abandoned:
                box["result"] = result
        if abandoned:
            cleanup(result)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        thread.join()
    except BaseException:
        with lock:
            box["abandoned"] = True
            finished = "result" in box
        if finished:
            cleanup(box.pop("result"))
        raise
    if "error" in box:
        error: BaseException = box.pop("error")
        try:
            raise error
        finally:
            del error
    result: _T = box.pop("result")
    return result


def _close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


#: The longest file name, so the longest ``ip netns`` name (``NAME_MAX``).
NETNS_NAME_MAX = 255


def _validate_name(name: object) -> str:
    """``name`` if it can be an ``ip netns`` name, checked before any file
    is touched; else :class:`InvalidNetnsNameError` (a ``ValueError``)."""
    if not isinstance(name, str):
        raise InvalidArgumentTypeError(
            errno.EINVAL,
            syscall="ip netns",
            kind=Kind.NET,
            detail=f"a netns name is a str, not {type(name).__name__}",
        )
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\0" in name
        or len(os.fsencode(name)) > NETNS_NAME_MAX
    ):
        raise InvalidNetnsNameError(
            errno.EINVAL,
            syscall="ip netns",
            kind=Kind.NET,
            path=name if "\0" not in name else repr(name),
            detail="not a valid netns name (empty, '.', '..', contains '/' or NUL, "
            f"or longer than {NETNS_NAME_MAX} bytes)",
        )
    return name


def _fs_path(path: object, *, what: str, kind: object = None) -> str:
    """``path`` (str, bytes or ``os.PathLike``) as a str, decoded as
    ``os.fsdecode`` does; :class:`InvalidArgumentTypeError` for anything
    else and :class:`InvalidArgumentError` for an empty path or a NUL."""
    try:
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TypeError(type(path).__name__)
        text = os.fsdecode(path)
    except TypeError:
        raise InvalidArgumentTypeError(
            errno.EINVAL,
            syscall=what,
            kind=kind,
            detail=f"a path is a str, bytes or os.PathLike, not {type(path).__name__}",
        ) from None
    if not text or "\0" in text:
        raise InvalidArgumentError(
            errno.EINVAL,
            syscall=what,
            kind=kind,
            path=repr(text),
            detail="a path must be non-empty and contain no NUL",
        )
    return text


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
        _close_fds(copies.values())
        raise
    return copies


class _UnshareMethod(Protocol):
    def __call__(
        self, kinds: KindsArg, *, loopback: bool = False, **options: Unpack[UnshareOptions]
    ) -> NamespaceSet: ...


_warned_blocking = False


def _on_event_loop() -> bool:
    """Whether the calling thread is running an asyncio or Trio loop."""
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        return False
    return True


def _warn_blocking() -> None:
    global _warned_blocking
    _warned_blocking = True
    warnings.warn(
        "NamespaceSet.run_sync() called on an event loop's thread blocks the loop until the "
        "call returns; use `await s.run(fn)` there",
        RuntimeWarning,
        stacklevel=3,
    )


def _loopback_hook(kinds: Kind, loopback: bool) -> Callable[[NamespaceSet], object] | None:
    """``unshare(loopback=...)``: a hook that brings ``lo`` up inside."""
    if not isinstance(loopback, bool):
        raise InvalidArgumentTypeError(
            errno.EINVAL, syscall="unshare", detail=f"loopback must be a bool, not {loopback!r}"
        )
    if not loopback:
        return None
    if not kinds & Kind.NET:
        raise KindError(
            errno.EINVAL, syscall="unshare", kind=kinds, detail="loopback=True needs a new netns"
        )
    return lambda _s: loopback_up()


class _Unshare:
    """Descriptor behind ``NamespaceSet.unshare``: on the class it creates
    namespaces from the caller's, on an instance it creates them nested in
    that set."""

    def __get__(self, obj: NamespaceSet | None, owner: type[NamespaceSet]) -> _UnshareMethod:
        if obj is None:
            return owner._unshare_new
        return obj._unshare_nested


class NamespaceSet:
    """One open namespace per kind, owned by fd.

    Make one with :meth:`unshare`, :meth:`current`, :meth:`from_pid`,
    :meth:`from_path`, :meth:`from_dir` or :meth:`from_name`; use it as a
    context manager or call :meth:`close`. A set that is garbage-collected
    unclosed is closed with a :class:`ResourceWarning`.

    A set holding a pid namespace that it created keeps that namespace's
    init process running until the set (and every set sharing it) is closed;
    closing ends every process in the namespace.
    """

    unshare = _Unshare()

    def __init__(
        self,
        fds: Mapping[Kind, int],
        *,
        init: _PidInit | None = None,
    ) -> None:
        """Take ownership of ``fds`` (one namespace fd per single kind).

        Prefer the named constructors; this one trusts its arguments. ``init``
        is a reference to the pid-namespace init this set keeps alive.
        """
        self._fds: dict[Kind, int] = dict(fds)
        self._bits = sum(int(k) for k in self._fds)
        self._kinds = Kind(self._bits)
        # Hot paths test these as plain ints: IntFlag arithmetic is slow.
        self._inline_ok = not self._bits & ~int(INLINE_KINDS)
        self._init = init
        self._lock = threading.Lock()
        self._users = 0
        self._closed = False
        self._released = False
        self._id_cache: dict[Kind, int] | None = None
        #: Set once a fork into the set's pid namespace failed with ENOMEM.
        self._pid_ended = False
        #: (kind, fd) in the order a thread enters them.
        self._order = tuple((k, self._fds[k]) for k in SETNS_ORDER if k in self._fds)

    # -- construction -------------------------------------------------------

    @classmethod
    def _unshare_new(
        cls, kinds: KindsArg, *, loopback: bool = False, **options: Unpack[UnshareOptions]
    ) -> NamespaceSet:
        """Create new namespaces of ``kinds`` (``NamespaceSet.unshare(kinds)``).

        The calling thread does not move: the namespaces are made on a helper
        thread that is thrown away afterwards, or, for a set that holds a
        user namespace, in a helper process (a threaded process cannot
        create or join one). Called on a set instead (``s.unshare(kinds)``),
        the new namespaces are nested in ``s``: a new mount namespace is a
        copy of ``s``'s, new namespaces are owned by ``s``'s user namespace,
        and the result also holds ``s``'s other kinds.

        A new mount namespace gets private propagation
        (:data:`NEW_MOUNT_PROPAGATION`). A new pid namespace gets an init
        process (see the class docstring). Pid and time namespaces affect only
        processes started from a thread in the set.

        Keyword options, each for a namespace new in this call
        (:class:`KindError` otherwise):

        - ``uid_map``, ``gid_map``: lines ``(inside, outside, count)`` for a
          new user namespace; default: root inside is the caller's effective
          uid and gid outside; ``[]`` leaves every id unmapped. ``setgroups``
          is denied when the kernel requires it for the gid map.
        - ``private_tmp=True``: a fresh tmpfs on ``/tmp`` in the new mount
          namespace (private propagation: the host never sees it).
        - ``private_proc=True``: with new pid and mount namespaces, a
          ``/proc`` of the new pid namespace, mounted by its init, so
          processes started in the set see only their own.
        - ``hostname``, ``domainname``: names of the new uts namespace.
        - ``clock_offsets``: ``{"monotonic": seconds, "boottime": seconds}``
          for the new time namespace, seen by processes started in the set.
        - ``loopback=True``: bring ``lo`` up in the new netns. Without it
          ``lo`` is left down, as ``ip netns add`` leaves it: nothing can
          reach 127.0.0.1 in the set (a pool's sets have it up by default).

        Blocks the calling thread for about a millisecond (the kernel's cost
        of a network namespace), longer with a pid or user namespace (a
        process starts). On failure nothing is left behind: no fd, thread,
        process or namespace.
        """
        kinds = Kind.require(kinds, what="unshare")
        set_options = SetOptions.make(kinds, **options)
        return cls._create(kinds, None, _loopback_hook(kinds, loopback), options=set_options)

    def _unshare_nested(
        self, kinds: KindsArg, *, loopback: bool = False, **options: Unpack[UnshareOptions]
    ) -> NamespaceSet:
        """Create new namespaces of ``kinds`` nested in this set
        (``s.unshare(kinds)``); see :meth:`_unshare_new`."""
        kinds = Kind.require(kinds, what="unshare")
        set_options = SetOptions.make(kinds, **options)
        return type(self)._create(kinds, self, _loopback_hook(kinds, loopback), options=set_options)

    @classmethod
    def _create(
        cls,
        kinds: Kind,
        base: NamespaceSet | None,
        hook: Callable[[NamespaceSet], object] | None = None,
        *,
        options: SetOptions = _NO_OPTIONS,
    ) -> NamespaceSet:
        """Make the set on a throwaway helper thread (or in a helper process
        if it holds a user namespace); ``hook(set)`` runs on that thread
        while it is still inside the new namespaces (the pool's after-create
        hook, with no extra thread hop); for a user set, after that thread
        has entered all but its user and time namespaces. If the hook
        raises, the set is closed and the error propagates."""
        if base is not None and kinds & Kind.PID and base._kinds & Kind.PID:
            raise UnsupportedKindError(
                errno.EINVAL,
                syscall="unshare",
                kind=Kind.PID,
                detail="a new pid namespace cannot be made from a thread that "
                "has joined another pid namespace",
            )
        borrowed: contextlib.AbstractContextManager[dict[Kind, int]] = (
            base._borrow() if base is not None else contextlib.nullcontext({})
        )
        with borrowed as base_fds:
            # What the new set shares with the base: its own copies of those fds.
            shared = dup_fds({k: fd for k, fd in base_fds.items() if not k & kinds})
            base_init = base._init if base is not None and Kind.PID in shared else None

            # A thread of a threaded process can neither create nor join a
            # user namespace: such sets are made in a helper process.
            in_helper = bool(kinds & Kind.USER) or Kind.USER in base_fds

            def work() -> NamespaceSet:
                init: _PidInit | None
                try:
                    if in_helper:
                        new_fds, helper = make_in_helper(kinds, base_fds, options)
                        init = (
                            None
                            if helper is None
                            else _PidInit(helper.process, pid=helper.init_pid)
                        )
                    else:
                        new_fds, init = _make_namespaces(kinds, base_fds, options)
                except BaseException:
                    _close_fds(shared.values())
                    raise
                if init is None and base_init is not None:
                    init = base_init.acquire()
                made = cls({**shared, **new_fds}, init=init)
                if hook is not None:
                    try:
                        if in_helper:
                            # This thread made nothing itself: it enters what
                            # a thread can (all but user and time).
                            with made._borrow() as fds:
                                enter(fds, skip=Kind.USER | Kind.TIME)
                        _run_hook(made, hook)
                    except BaseException:
                        made.close()
                        raise
                return made

            return _on_helper_thread(work, NamespaceSet.close, name="nspool-unshare")

    @classmethod
    def current(cls, kinds: KindsArg = ALL_KINDS) -> NamespaceSet:
        """The calling thread's namespaces of ``kinds`` (default: all).

        For pid and time this is where the thread's *children* go
        (``pid_for_children``, ``time_for_children``), which is what entering
        the set later reproduces. Raises :class:`NamespaceNotFoundError` if the
        thread unshared a pid namespace that has no process yet.
        """
        kinds = Kind.require(kinds, what="current")
        return cls._open_each(
            kinds, _THREAD_NS_DIR, name_of=lambda k: k.for_children_name, pid=None
        )

    @classmethod
    def from_pid(cls, pid: int, kinds: KindsArg = ALL_KINDS) -> NamespaceSet:
        """The namespaces of ``kinds`` (default: all) of process ``pid``.

        The pid is pinned with a pidfd before anything is read, and checked to
        be alive after its ``/proc`` directory is opened, so a pid that exits
        (and is perhaps reused) in between raises
        :class:`ProcessNotFoundError` instead of yielding another process's
        namespaces (containernetworking/plugins#714).
        """
        kinds = Kind.require(kinds, what="from_pid")
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise TypeError(f"pid must be an int, not {type(pid).__name__}")
        pidfd = _sys.pidfd_open(pid)
        try:
            ns_dir = f"/proc/{pid}/ns"
            try:
                dir_fd = os.open(ns_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                err = errno.ESRCH if exc.errno == errno.ENOENT else (exc.errno or errno.EIO)
                raise from_errno(err, syscall="open", kind=kinds, path=ns_dir, pid=pid) from exc
            try:
                if not _sys.pidfd_is_alive(pidfd):
                    raise ProcessNotFoundError(
                        errno.ESRCH,
                        syscall="open",
                        kind=kinds,
                        path=ns_dir,
                        pid=pid,
                        detail="the process exited while its namespaces were read",
                    )
                try:
                    return cls._open_each(
                        kinds, ns_dir, name_of=lambda k: k.proc_name, pid=pid, dir_fd=dir_fd
                    )
                except NamespaceNotFoundError as exc:
                    # The directory outlives the process: a vanished link means
                    # the process exited (or is a zombie without namespaces).
                    if _sys.pidfd_is_alive(pidfd) and os.path.exists(f"/proc/{pid}/exe"):
                        raise
                    raise ProcessNotFoundError(
                        errno.ESRCH,
                        syscall="open",
                        kind=exc.kind,
                        path=exc.path,
                        pid=pid,
                        detail="the process exited while its namespaces were read",
                    ) from exc
            finally:
                os.close(dir_fd)
        finally:
            os.close(pidfd)

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], kind: KindsArg | None = None) -> NamespaceSet:
        """The namespace at ``path``: ``/proc/PID/ns/net``, a bind mount such as
        ``/run/netns/blue``, ``/proc/self/fd/N``.

        ``kind`` is the single kind the file must be; omitted, it is read from
        the file. :class:`KindMismatchError` if the file is a namespace of
        another kind, :class:`NotANamespaceError` if it is no namespace.
        """
        path = _fs_path(path, what="from_path")
        if kind is None:
            fd, actual = _sys.open_ns_nonblocking(path, None)
            return cls({actual: fd})
        try:
            single = Kind.require(kind, what="from_path")
        except KindError as exc:
            exc.path = exc.filename = path
            raise
        if len(list(single.singles())) != 1:
            raise KindError(
                errno.EINVAL,
                syscall="from_path",
                kind=single,
                path=path,
                detail="a namespace file has exactly one kind",
            )
        return cls({single: _sys.open_ns_nonblocking(path, single)[0]})

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str], kinds: KindsArg) -> NamespaceSet:
        """The namespaces of ``kinds`` in a directory laid out like
        ``/proc/PID/ns`` (one file per kind, named as in ``/proc``), such as
        one written by :meth:`mount`."""
        directory = _fs_path(directory, what="from_dir")
        kinds = Kind.require(kinds, what="from_dir")
        try:
            dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise from_errno(
                exc.errno or errno.EIO, syscall="open", kind=kinds, path=directory
            ) from exc
        try:
            return cls._open_each(
                kinds, directory, name_of=lambda k: k.proc_name, pid=None, dir_fd=dir_fd
            )
        finally:
            os.close(dir_fd)

    @classmethod
    def from_name(cls, name: str) -> NamespaceSet:
        """The network namespace that ``ip netns`` calls ``name``."""
        path = os.path.join(NETNS_RUN_DIR, _validate_name(name))
        try:
            return cls({Kind.NET: _sys.open_ns_nonblocking(path, Kind.NET)[0]})
        except NamespaceNotFoundError as exc:
            raise NamespaceNotFoundError(
                errno.ENOENT,
                syscall="open",
                kind=Kind.NET,
                path=path,
                detail=f"no netns named {name!r}; hint: create it with `ip netns add {name}`",
            ) from exc

    @classmethod
    def _open_each(
        cls,
        kinds: Kind,
        directory: str,
        *,
        name_of: Callable[[Kind], str],
        pid: int | None,
        dir_fd: int | None = None,
    ) -> NamespaceSet:
        fds: dict[Kind, int] = {}
        try:
            for kind in kinds.singles():
                name = name_of(kind)
                path = name if dir_fd is not None else os.path.join(directory, name)
                fds[kind] = _sys.open_ns_nonblocking(path, kind, dir_fd=dir_fd, pid=pid)[0]
        except BaseException as exc:
            _close_fds(fds.values())
            if isinstance(exc, NamespaceError) and dir_fd is not None:
                exc.path = os.path.join(directory, os.path.basename(exc.path or ""))
                exc.filename = exc.path
            raise
        return cls(fds)

    # -- use ----------------------------------------------------------------

    @property
    def kinds(self) -> Kind:
        """The kinds this set holds."""
        return self._kinds

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def pid_namespace_ended(self) -> bool:
        """Whether the set's pid namespace can take no new process: its init
        (see :attr:`init_pid`) has exited or was killed, or a fork into it
        already failed with ``ENOMEM``. Then ``run_process`` and
        ``open_process`` raise :class:`PidNamespaceEndedError`; make a new
        set. ``False`` for a set without a pid namespace."""
        if not self._bits & int(Kind.PID):
            return False
        if not self._pid_ended and self._init is not None and not self._init.alive():
            self._pid_ended = True
        return self._pid_ended

    def _check_pid_namespace(self) -> None:
        """Raise :class:`PidNamespaceEndedError` if :attr:`pid_namespace_ended`."""
        if self.pid_namespace_ended:
            raise pid_namespace_ended_error(self)

    @property
    def init_pid(self) -> int | None:
        """The pid (as this process sees it) of the init this set keeps in its
        pid namespace, or ``None`` if it keeps none."""
        return None if self._init is None else self._init.pid

    def id(self, kind: KindsArg) -> int:
        """The inode number of the namespace of ``kind``, as in
        ``readlink /proc/PID/ns/KIND`` (``net:[4026531840]``).

        Only meaningful while the namespace lives: the kernel reuses the
        number once it is freed.
        """
        single = Kind.require(kind, what="id")
        with self._borrow():
            ids = self._ids_of_acquired()
        if single not in ids:
            raise KindError(
                errno.EINVAL, syscall="id", kind=single, detail=f"the set holds {self._kinds}"
            )
        return ids[single]

    def ids(self) -> dict[Kind, int]:
        """:meth:`id` of every kind in the set."""
        with self._borrow():
            return dict(self._ids_of_acquired())

    def fds(self, kinds: KindsArg | None = None) -> dict[Kind, int]:
        """The set's own fds of ``kinds`` (default: all), valid until
        :meth:`close`. Do not close them; :meth:`dup` gives fds to keep."""
        with self._borrow(None if kinds is None else Kind.require(kinds, what="fds")) as fds:
            return dict(fds)

    def dup(self, kinds: KindsArg | None = None) -> NamespaceSet:
        """A new, independent set holding the same namespaces of ``kinds``
        (default: all). Closing either set leaves the other usable."""
        wanted = None if kinds is None else Kind.require(kinds, what="dup")
        with self._borrow(wanted) as fds:
            copies = dup_fds(fds)
            init = self._init.acquire() if self._init and Kind.PID in copies else None
            return type(self)(copies, init=init)

    def call_inline(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Call ``fn(*args, **kwargs)`` on the calling thread inside this set:
        enter, call, and go back to where the thread was, with no thread hop.

        For quick work such as making a socket in a netns. Only for sets whose
        kinds are all in :data:`INLINE_KINDS` (net, uts, ipc, cgroup);
        others raise :class:`UnsupportedKindError` before anything moves.

        The way back is by fd, so it holds even if ``fn`` moved the thread
        within these kinds; but unlike a worker thread, the calling thread is
        not checked for other kinds ``fn`` may have changed: run untrusted
        callables with ``run_sync``. Threads ``fn`` starts stay in the set's
        namespaces. If going back fails (it should not: the kernel accepts a
        namespace the thread was already in), :class:`NamespaceError` is raised
        and the thread must not be trusted again.

        The first call on a thread opens fds of that thread's own namespaces
        and keeps them for the thread's life, so later calls cost two
        ``setns`` per kind.
        """
        if not self._inline_ok:
            outside = self._kinds & ~INLINE_KINDS
            raise UnsupportedKindError(
                errno.EINVAL,
                syscall="call_inline",
                kind=outside,
                detail=f"only {INLINE_KINDS} can be entered and left on the calling "
                "thread; use run_sync",
            )
        self._acquire()
        try:
            return self._inline(self._order, True, fn, *args, **kwargs)
        finally:
            self._leave()

    def _call_in_netns(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn`` on the calling thread inside this set's netns only (the
        other kinds untouched), e.g. to make a socket there. A socket belongs
        to the netns it was made in, whatever thread uses it later."""
        self._acquire()
        try:
            order = tuple((k, fd) for k, fd in self._order if k is Kind.NET)
            if not order:
                raise KindError(
                    errno.EINVAL,
                    syscall="socket",
                    kind=Kind.NET,
                    detail=f"the set holds no network namespace ({self._kinds})",
                )
            return self._inline(order, False, fn, *args, **kwargs)
        finally:
            self._leave()

    def _inline(
        self,
        order: tuple[tuple[Kind, int], ...],
        push: bool,
        fn: Callable[_P, _T],
        /,
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """Enter ``order`` on the calling thread, call, go back by fd. Call
        between :meth:`_acquire` and :meth:`_leave`; ``push`` makes the set
        :func:`current` during the call."""
        back = [(kind, _way_back(kind)) for kind, _ in order]
        entered = 0
        stack = _thread.stack
        try:
            for kind, fd in order:
                _sys.setns(fd, kind)
                entered += 1
            if not push:
                return fn(*args, **kwargs)
            stack.append(self)
            try:
                return fn(*args, **kwargs)
            finally:
                stack.pop()
        finally:
            for kind, fd in back[:entered]:
                _sys.setns(fd, kind)

    def run_sync(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn(*args, **kwargs)`` on a worker thread inside this set, and
        return its result; the same as
        ``nspool.workers.default_workers().run_sync(self, fn, ...)``.

        Blocks the calling thread. The worker enters the set, runs ``fn`` with
        the caller's ``contextvars``, is checked and goes home, or is thrown
        away if ``fn`` moved it; see :class:`nspool.Workers`. Pid and time
        namespaces reach only processes ``fn`` starts.

        Cancellation: interrupting the wait (``KeyboardInterrupt``) does not
        stop ``fn``; it finishes on its thread and its result is dropped.

        Called on an event loop's thread it blocks the loop: the first such
        call warns (``RuntimeWarning``); use ``await s.run(fn)`` there.
        """
        if not _warned_blocking and _on_event_loop():
            _warn_blocking()
        # The executor is the next layer down (it imports this module), so
        # it is looked up at call time.
        from .workers import default_workers

        return default_workers().run_sync(self, fn, *args, **kwargs)

    async def run(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Await ``fn(*args, **kwargs)`` run on a worker thread inside this
        set (the default ``Workers``), from asyncio or Trio, without blocking
        the event loop; see :func:`nspool.aio.run_in`.

        Cancellation: the awaiting task is cancelled at once; a call still
        queued never runs; a running one finishes in the background and its
        result is dropped.
        """
        # The async front end sits layers below; looked up at call time.
        from .aio import run_in

        return await run_in(None, self, fn, *args, **kwargs)

    async def socket(self, family: int = 2, type: int = 1, proto: int = 0) -> _socket.socket:
        """A non-blocking socket that lives in this set's netns (default
        ``AF_INET``, ``SOCK_STREAM``); see :func:`nspool.aio.socket_in`."""
        from .aio import socket_in

        return socket_in(self, family, type, proto)

    async def connect_tcp(self, host: str, port: int) -> anyio.abc.SocketStream:
        """An anyio stream connected from this set's netns, the name resolved
        inside the set; see :func:`nspool.aio.connect_tcp_in`.

        Cancellation: as for any anyio connect; nothing is left open."""
        from .aio import connect_tcp_in

        return await connect_tcp_in(self, host, port)

    async def create_tcp_listener(
        self, local_host: str | None = None, local_port: int = 0
    ) -> anyio.abc.SocketListener:
        """An anyio listener bound in this set's netns; see
        :func:`nspool.aio.create_tcp_listener_in`."""
        from .aio import create_tcp_listener_in

        return await create_tcp_listener_in(self, local_host, local_port)

    async def run_process(
        self,
        command: Command,
        *,
        input: bytes | None = None,
        stdin: int | IO[Any] | None = None,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
        check: bool = True,
        **options: Unpack[ProcessOptions],
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``command`` inside this set (forked from a worker that entered
        it) and return its output, as ``anyio.run_process`` does; see
        :func:`nspool.aio.run_process_in`.

        Cancellation: the process is killed and reaped.

        Raises :class:`PidNamespaceEndedError` if the set's pid namespace
        has ended (its init was killed)."""
        from .aio import run_process_in

        self._check_pid_namespace()
        try:
            return await run_process_in(
                self,
                command,
                input=input,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                check=check,
                **options,
            )
        except OSError as exc:
            error = fork_error(self, exc)
            if error is exc:
                raise
            raise error from exc

    async def open_process(
        self,
        command: Command,
        *,
        stdin: int | IO[Any] | None = subprocess.PIPE,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
        **options: Unpack[ProcessOptions],
    ) -> NamespaceProcess:
        """Start ``command`` inside this set, as ``anyio.open_process`` does,
        and return the process (use it with ``async with``); see
        :func:`nspool.aio.open_process_in`.

        Cancellation: a process started by a cancelled call is killed and
        reaped.

        Raises :class:`PidNamespaceEndedError` if the set's pid namespace
        has ended (its init was killed)."""
        from .aio import open_process_in

        self._check_pid_namespace()
        try:
            return await open_process_in(
                self, command, stdin=stdin, stdout=stdout, stderr=stderr, **options
            )
        except OSError as exc:
            error = fork_error(self, exc)
            if error is exc:
                raise
            raise error from exc

    # -- persistence -----------------------------------------------------------

    def persist(self, name: str) -> str:
        """Give the set's network namespace the ``ip netns`` name ``name``
        (a bind mount at ``/run/netns/NAME``); returns that path.

        ``/run/netns`` is set up as iproute2 sets it up (a shared mount), so
        ``ip netns`` sees the name and ``ip netns del`` removes it. Raises
        :class:`NamespaceExistsError` if the name is taken. Undo with
        :meth:`unpersist`.
        """
        path = os.path.join(NETNS_RUN_DIR, _validate_name(name))
        with self._borrow(Kind.NET) as fds:
            if Kind.NET not in fds:
                raise KindError(
                    errno.EINVAL,
                    syscall="persist",
                    kind=Kind.NET,
                    path=path,
                    detail=f"the set holds no network namespace ({self._kinds})",
                )
            _prepare_netns_dir(NETNS_RUN_DIR)
            _bind_ns(fds[Kind.NET], Kind.NET, path, exclusive=True)
        return path

    @staticmethod
    def unpersist(name: str) -> None:
        """Remove the ``ip netns`` name ``name`` (as ``ip netns del`` does:
        a lazy unmount, then the file). The namespace itself lives on while
        anything else holds it."""
        _unbind_ns(os.path.join(NETNS_RUN_DIR, _validate_name(name)), Kind.NET)

    def mount_ns(self, kind: KindsArg, path: str | os.PathLike[str]) -> None:
        """Bind-mount the namespace of single kind ``kind`` at ``path`` (an
        empty file is created if ``path`` does not exist), so that it outlives
        this set and this process. Undo with :meth:`unmount`.

        A mount namespace can only be mounted in an older mount namespace
        than itself (the kernel refuses loops with ``EINVAL``).
        """
        single = Kind.require(kind, what="mount_ns")
        path = _fs_path(path, what="mount_ns", kind=single)
        with self._borrow(single) as fds:
            if single not in fds:
                raise KindError(
                    errno.EINVAL,
                    syscall="mount_ns",
                    kind=single,
                    path=path,
                    detail=f"the set holds {self._kinds}",
                )
            _bind_ns(fds[single], single, path)

    def mount(self, directory: str | os.PathLike[str]) -> None:
        """Bind-mount every namespace of the set in ``directory`` (created if
        missing), one file per kind named as in ``/proc/PID/ns``; read it back
        with :meth:`from_dir`, undo it with :meth:`unmount`."""
        directory = _fs_path(directory, what="mount", kind=self._kinds)
        made_dir = not os.path.isdir(directory)
        if made_dir:
            try:
                os.makedirs(directory, mode=0o755)
            except OSError as exc:
                raise from_errno(
                    exc.errno or errno.EIO, syscall="mkdir", kind=self._kinds, path=directory
                ) from exc
        done: list[str] = []
        try:
            with self._borrow() as fds:
                for kind, fd in fds.items():
                    path = os.path.join(directory, kind.proc_name)
                    _bind_ns(fd, kind, path)
                    done.append(path)
        except BaseException:
            for path in done:
                with contextlib.suppress(NamespaceError):
                    _unbind_ns(path, None)
            if made_dir:
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            raise

    @staticmethod
    def unmount(path: str | os.PathLike[str]) -> None:
        """Undo :meth:`mount_ns` (a file) or :meth:`mount` (a directory):
        lazily unmount each namespace file, remove it, and for a directory
        remove the directory."""
        path = _fs_path(path, what="unmount")
        if os.path.islink(path) or not os.path.isdir(path):
            _unbind_ns(path, None)
            return
        entries = [os.path.join(path, entry) for entry in sorted(os.listdir(path))]
        # Check all first: refuse before anything is unmounted or removed.
        for entry in entries:
            _check_unbindable(entry, None)
        for entry in entries:
            _unbind_ns(entry, None)
        try:
            os.rmdir(path)
        except OSError as exc:
            raise from_errno(exc.errno or errno.EIO, syscall="rmdir", path=path) from exc

    # -- lifetime -------------------------------------------------------------

    def _acquire(self) -> dict[Kind, int]:
        """Start using the set's fds; they stay open until the matching
        :meth:`_leave`, even if another thread closes the set meanwhile.
        Raises :class:`SetClosedError` if the set is already closed."""
        with self._lock:
            if self._closed:
                raise SetClosedError(
                    errno.EBADF,
                    syscall="NamespaceSet",
                    kind=self._kinds,
                    detail="the set is closed",
                )
            self._users += 1
        return self._fds

    def _ids_of_acquired(self) -> dict[Kind, int]:
        """The inode of each namespace, computed once (the fds never change).
        Call only between :meth:`_acquire` and :meth:`_leave`."""
        ids = self._id_cache
        if ids is None:
            ids = self._id_cache = {k: os.fstat(fd).st_ino for k, fd in self._fds.items()}
        return ids

    @contextlib.contextmanager
    def _borrow(self, kinds: Kind | None = None) -> Iterator[dict[Kind, int]]:
        """Use the fds of ``kinds`` (default: all) without racing ``close()``:
        they are not closed until every borrower is done."""
        self._acquire()
        try:
            if kinds is None:
                yield self._fds
            else:
                yield {k: fd for k, fd in self._fds.items() if k & kinds}
        finally:
            self._leave()

    def _leave(self) -> None:
        """End one :meth:`_borrow`; the last borrower of a closed set
        releases it."""
        with self._lock:
            self._users -= 1
            release = self._closed and not self._users and not self._released
            if release:
                self._released = True
        if release:
            self._release()

    def close(self) -> None:
        """Close the set's fds (once no other thread is still using them),
        and end its pid-namespace init if it is the last set sharing it.
        Idempotent; safe from any thread."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            release = not self._users
            self._released = release
        if release:
            self._release()

    def _release(self) -> None:
        fds, self._fds = self._fds, {}
        self._order = ()
        _close_fds(fds.values())
        init, self._init = self._init, None
        if init is not None:
            init.release()

    def __enter__(self) -> NamespaceSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        if self._closed:
            return f"<NamespaceSet {self._kinds} closed>"
        try:
            ids = " ".join(f"{k.proc_name}:[{i}]" for k, i in self.ids().items())
        except (OSError, NamespaceError):
            ids = str(self._kinds)
        return f"<NamespaceSet {ids}>"


def pid_namespace_ended_error(s: NamespaceSet) -> PidNamespaceEndedError:
    """The error for a fork into ``s`` whose pid namespace has ended."""
    init = f"its init (pid {s._init.pid})" if s._init is not None else "its PID 1"
    return PidNamespaceEndedError(
        errno.ENOMEM,
        syscall="fork",
        kind=Kind.PID,
        pid=None if s._init is None else s._init.pid,
        detail=f"the set's pid namespace has ended: {init} exited or was killed, "
        "so the kernel takes no new process there; close the set and make a new one",
    )


def fork_error(s: NamespaceSet, exc: BaseException) -> BaseException:
    """Translate an error from starting a process in ``s``: ``ENOMEM`` from
    ``fork``/``clone`` into a set holding a pid namespace means that
    namespace has ended (its PID 1 is gone). Then ``s`` remembers it
    (:attr:`NamespaceSet.pid_namespace_ended`) and a
    :class:`PidNamespaceEndedError` is returned; any other error is
    returned as it is. Callers: ``raise fork_error(s, exc) from exc``."""
    if (
        isinstance(exc, OSError)
        and not isinstance(exc, NamespaceError)
        and exc.errno == errno.ENOMEM
        and s._bits & int(Kind.PID)
    ):
        s._pid_ended = True
        return pid_namespace_ended_error(s)
    return exc


# -- helpers that run on the creating thread -------------------------------------


def _make_namespaces(
    kinds: Kind, base_fds: Mapping[Kind, int], options: SetOptions
) -> tuple[dict[Kind, int], _PidInit | None]:
    """On a helper thread (which is thrown away afterwards): enter
    ``base_fds``, create namespaces of ``kinds``, apply ``options``, and
    open them.

    A time namespace is created last, after the pid init started, so that
    the init stays in the parent time namespace: the new one's clock offsets
    can be set only while no process is in it.
    """
    ns_dir = os.open(_THREAD_NS_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fds: dict[Kind, int] = {}
    init: _PidInit | None = None
    try:
        # A thread cannot setns into a time namespace once the process has
        # threads; it does not need to, only its children do.
        enter(base_fds, skip=Kind.TIME)
        first = kinds & ~Kind.TIME
        if first:
            _sys.unshare(first)
        if kinds & Kind.MNT:
            _sys.mount(None, "/", None, NEW_MOUNT_PROPAGATION, kind=Kind.MNT)
        options.apply_on_thread(kinds)
        if kinds & Kind.PID:
            init = _PidInit.start(mount_proc=options.private_proc)
        if kinds & Kind.TIME:
            _sys.unshare(Kind.TIME)
            # Only /proc/TID names a thread's own offsets file (not thread-self).
            options.write_clock_offsets(threading.get_native_id())
        for kind in kinds.singles():
            fds[kind] = _sys.open_ns(kind.for_children_name, kind, dir_fd=ns_dir)
    except BaseException:
        _close_fds(fds.values())
        if init is not None:
            init.release()
        raise
    finally:
        os.close(ns_dir)
    return fds, init


def _prepare_netns_dir(directory: str) -> None:
    """Set ``directory`` up as iproute2 does: created 0755, and a shared
    mount point (bound onto itself first if it is not a mount point), so that
    a name removed in one mount namespace is removed in all of them."""
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise from_errno(exc.errno or errno.EIO, syscall="mkdir", path=directory) from exc
    try:
        _sys.mount("", directory, "none", _sys.MS_SHARED | _sys.MS_REC)
    except NamespaceError as exc:
        if exc.errno != errno.EINVAL:
            raise
        _sys.mount(directory, directory, "none", _sys.MS_BIND | _sys.MS_REC)
        _sys.mount("", directory, "none", _sys.MS_SHARED | _sys.MS_REC)


def _bind_ns(fd: int, kind: Kind, path: str, *, exclusive: bool = False) -> None:
    """Bind-mount the namespace ``fd`` at ``path``, creating an empty file
    there if none exists (and removing it again if the mount fails).

    The target is opened with ``O_NOFOLLOW`` and the mount made on that fd
    (``/proc/self/fd/N``), so a symlink planted at ``path`` never makes its
    target a mount. ``exclusive`` (``persist``): anything already at
    ``path`` is refused with :class:`NamespaceExistsError`; otherwise only
    an existing empty regular file is used, nothing else.
    """
    created = False
    try:
        target = os.open(
            path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0
        )
        created = True
    except FileExistsError:
        if exclusive:
            raise NamespaceExistsError(
                errno.EEXIST,
                syscall="open",
                kind=kind,
                path=path,
                detail="the name is taken (a file or symlink is there): pick another "
                "name, or remove it if it is stale (ip netns del)",
            ) from None
        target = _open_existing_target(path, kind)
    except OSError as exc:
        raise from_errno(exc.errno or errno.EIO, syscall="open", kind=kind, path=path) from exc
    try:
        _sys.mount(f"/proc/self/fd/{fd}", f"/proc/self/fd/{target}", "none", _sys.MS_BIND)
    except NamespaceError as exc:
        if created:
            with contextlib.suppress(OSError):
                os.unlink(path)
        exc.kind, exc.path, exc.filename = str(kind), path, path
        raise
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    finally:
        os.close(target)


def _open_existing_target(path: str, kind: Kind) -> int:
    """An ``O_PATH``-free fd of the existing mount target ``path``, which
    must be an empty regular file, not a symlink and not already a mount."""
    try:
        target = os.open(
            path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
        )
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NamespaceExistsError(
                errno.EEXIST,
                syscall="open",
                kind=kind,
                path=path,
                detail="a symlink is there; nspool mounts only on a file it creates "
                "or an empty regular file",
            ) from exc
        raise from_errno(exc.errno or errno.EIO, syscall="open", kind=kind, path=path) from exc
    try:
        if os.path.ismount(path):
            raise NamespaceExistsError(
                errno.EEXIST, syscall="mount", kind=kind, path=path, detail="already mounted"
            )
        st = os.fstat(target)
        if not stat.S_ISREG(st.st_mode) or st.st_size:
            raise NamespaceExistsError(
                errno.EEXIST,
                syscall="mount",
                kind=kind,
                path=path,
                detail="a file that is not empty (or not a regular file) is there; "
                "nspool mounts only on an empty file, and leaves this one in place",
            )
    except BaseException:
        os.close(target)
        raise
    return target


def _check_unbindable(path: str, kind: Kind | None) -> bool:
    """Whether ``path`` is a mount point (``True``) or an empty regular file
    (``False``), the only things :func:`_unbind_ns` removes; raises
    :class:`NotANamespaceError` for anything else, which is left in place."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise from_errno(exc.errno or errno.EIO, syscall="umount2", kind=kind, path=path) from exc
    if stat.S_ISLNK(st.st_mode):
        what = "a symlink"
    elif os.path.ismount(path):
        return True
    elif stat.S_ISREG(st.st_mode) and not st.st_size:
        return False
    else:
        what = "a file with content" if stat.S_ISREG(st.st_mode) else "not a regular file"
    raise NotANamespaceError(
        errno.EINVAL,
        syscall="umount2",
        kind=kind,
        path=path,
        detail=f"not a namespace mount nspool made ({what}): left in place",
    )


def _unbind_ns(path: str, kind: Kind | None) -> None:
    """Lazily unmount the namespace bound at ``path`` and remove the file.
    ``MNT_DETACH`` never fails with ``EBUSY``. Only a mount point or an
    empty regular file (a mount point whose mount is gone) is removed;
    anything else raises :class:`NotANamespaceError` and stays."""
    if _check_unbindable(path, kind):
        try:
            _sys.umount2(path, _sys.MNT_DETACH | _sys.UMOUNT_NOFOLLOW, kind=kind)
        except NamespaceError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # Unmounted meanwhile: what is left is checked again.
            _check_unbindable(path, kind)
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size:
                return  # the mount covered a file that is not ours to remove
    try:
        os.unlink(path)
    except OSError as exc:
        raise from_errno(exc.errno or errno.EIO, syscall="unlink", kind=kind, path=path) from exc
