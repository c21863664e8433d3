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
import subprocess
import types
import warnings
from collections.abc import Callable, Mapping
from typing import ParamSpec, Protocol, TypeVar, Unpack

import anyio.abc
import sniffio

from . import _open, _persist
from ._create import NO_OPTIONS, create
from ._handle import InitRef, SetHandle
from ._loopback import loopback_up
from ._options import SetOptions, UnshareOptions
from ._persist import NETNS_RUN_DIR
from ._process import (
    Command,
    NamespaceProcess,
    OpenOptions,
    RunOptions,
    open_process_in,
    run_process_in,
)
from ._sockets import connect_tcp_in, create_tcp_listener_in, socket_in
from ._thread_ns import call_inline, run_as_current, thread
from ._wait import run_in
from .errors import (
    InvalidArgumentTypeError,
    KindError,
    NamespaceError,
    UnsupportedKindError,
)
from .kinds import ALL_KINDS, Kind, KindsArg
from .workers import default_workers

__all__ = ["INLINE_KINDS", "NETNS_RUN_DIR", "NamespaceSet", "current"]

#: Kinds a thread can enter and leave again at once, which is what
#: :meth:`NamespaceSet.call_inline` needs of the caller's thread. Not mnt
#: (joining one makes the thread unshare its cwd and root for good), pid and
#: time (they move only children; time cannot be joined by a threaded
#: process), nor user (cannot be joined by a threaded process).
INLINE_KINDS = Kind.NET | Kind.UTS | Kind.IPC | Kind.CGROUP

_T = TypeVar("_T")
_S = TypeVar("_S", bound="NamespaceSet")
_P = ParamSpec("_P")


def current() -> NamespaceSet | None:
    """The set whose call the calling thread is running (the innermost one,
    for nested ``call_inline``), or ``None`` outside any call.

    Threads started by the callable are not counted as running in the set,
    though they begin in its namespaces (see the kernel rules).
    """
    for s in reversed(thread.stack):
        if isinstance(s, NamespaceSet):
            return s
    return None


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
            return types.MethodType(_unshare_new, owner)
        return types.MethodType(_unshare_nested, obj)


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
        fds: Mapping[Kind, int] | SetHandle,
        *,
        init: InitRef | None = None,
    ) -> None:
        """Take ownership of ``fds`` (one namespace fd per single kind, or a
        :class:`SetHandle` made by the layers below).

        Prefer the named constructors; this one trusts its arguments. ``init``
        is a reference to the pid-namespace init this set keeps alive.
        """
        self._handle = fds if isinstance(fds, SetHandle) else SetHandle(fds, init=init)
        # Hot paths test this as a plain int: IntFlag arithmetic is slow.
        self._inline_ok = not self._handle.bits & ~int(INLINE_KINDS)

    @property
    def handle(self) -> SetHandle:
        """The set's fds as the layers below see them (workers, sockets,
        processes, the pool): owned by this set; not needed by users."""
        return self._handle

    # -- construction -------------------------------------------------------

    @classmethod
    def current(cls, kinds: KindsArg = ALL_KINDS) -> NamespaceSet:
        """The calling thread's namespaces of ``kinds`` (default: all).

        For pid and time this is where the thread's *children* go
        (``pid_for_children``, ``time_for_children``), which is what entering
        the set later reproduces. Raises :class:`NamespaceNotFoundError` if the
        thread unshared a pid namespace that has no process yet.
        """
        return cls(_open.current(kinds))

    @classmethod
    def from_pid(cls, pid: int, kinds: KindsArg = ALL_KINDS) -> NamespaceSet:
        """The namespaces of ``kinds`` (default: all) of process ``pid``.

        The pid is pinned with a pidfd before anything is read, and checked to
        be alive after its ``/proc`` directory is opened, so a pid that exits
        (and is perhaps reused) in between raises
        :class:`ProcessNotFoundError` instead of yielding another process's
        namespaces (containernetworking/plugins#714).
        """
        return cls(_open.from_pid(pid, kinds))

    @classmethod
    def from_path(cls, path: str | os.PathLike[str], kind: KindsArg | None = None) -> NamespaceSet:
        """The namespace at ``path``: ``/proc/PID/ns/net``, a bind mount such as
        ``/run/netns/blue``, ``/proc/self/fd/N``.

        ``kind`` is the single kind the file must be; omitted, it is read from
        the file. :class:`KindMismatchError` if the file is a namespace of
        another kind, :class:`NotANamespaceError` if it is no namespace.
        """
        return cls(_open.from_path(path, kind))

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str], kinds: KindsArg) -> NamespaceSet:
        """The namespaces of ``kinds`` in a directory laid out like
        ``/proc/PID/ns`` (one file per kind, named as in ``/proc``), such as
        one written by :meth:`mount`."""
        return cls(_open.from_dir(directory, kinds))

    @classmethod
    def from_name(cls, name: str) -> NamespaceSet:
        """The network namespace that ``ip netns`` calls ``name``."""
        return cls(_open.from_name(name))

    # -- use ----------------------------------------------------------------

    @property
    def kinds(self) -> Kind:
        """The kinds this set holds."""
        return self._handle.kinds

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._handle.closed

    @property
    def pid_namespace_ended(self) -> bool:
        """Whether the set's pid namespace can take no new process: its init
        (see :attr:`init_pid`) has exited or was killed, or a fork into it
        already failed with ``ENOMEM``. Then ``run_process`` and
        ``open_process`` raise :class:`PidNamespaceEndedError`; make a new
        set. ``False`` for a set without a pid namespace."""
        return self._handle.pid_namespace_ended

    @property
    def init_pid(self) -> int | None:
        """The pid (as this process sees it) of the init this set keeps in its
        pid namespace, or ``None`` if it keeps none."""
        init = self._handle.init
        return None if init is None else init.pid

    def id(self, kind: KindsArg) -> int:
        """The inode number of the namespace of ``kind``, as in
        ``readlink /proc/PID/ns/KIND`` (``net:[4026531840]``).

        Only meaningful while the namespace lives: the kernel reuses the
        number once it is freed.
        """
        single = Kind.require(kind, what="id")
        h = self._handle
        with h.borrow():
            ids = h.ids_of_acquired()
        if single not in ids:
            raise KindError(
                errno.EINVAL, syscall="id", kind=single, detail=f"the set holds {h.kinds}"
            )
        return ids[single]

    def ids(self) -> dict[Kind, int]:
        """:meth:`id` of every kind in the set."""
        with self._handle.borrow():
            return dict(self._handle.ids_of_acquired())

    def fds(self, kinds: KindsArg | None = None) -> dict[Kind, int]:
        """The set's own fds of ``kinds`` (default: all), valid until
        :meth:`close`. Do not close them; :meth:`dup` gives fds to keep."""
        wanted = None if kinds is None else Kind.require(kinds, what="fds")
        with self._handle.borrow(wanted) as fds:
            return dict(fds)

    def dup(self, kinds: KindsArg | None = None) -> NamespaceSet:
        """A new, independent set holding the same namespaces of ``kinds``
        (default: all). Closing either set leaves the other usable."""
        wanted = None if kinds is None else Kind.require(kinds, what="dup")
        return type(self)(self._handle.dup(wanted))

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
            outside = self._handle.kinds & ~INLINE_KINDS
            raise UnsupportedKindError(
                errno.EINVAL,
                syscall="call_inline",
                kind=outside,
                detail=f"only {INLINE_KINDS} can be entered and left on the calling "
                "thread; use run_sync",
            )
        return call_inline(self, None, fn, *args, **kwargs)

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
        return default_workers().run_sync(self, fn, *args, **kwargs)

    async def run(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Await ``fn(*args, **kwargs)`` run on a worker thread inside this
        set (the default ``Workers``), from asyncio or Trio, without blocking
        the event loop; see :func:`nspool._wait.run_in`.

        Cancellation: the awaiting task is cancelled at once; a call still
        queued never runs; a running one finishes in the background and its
        result is dropped.
        """
        return await run_in(None, self, fn, *args, **kwargs)

    async def socket(self, family: int = 2, type: int = 1, proto: int = 0) -> _socket.socket:
        """A non-blocking socket that lives in this set's netns (default
        ``AF_INET``, ``SOCK_STREAM``); see :func:`nspool._sockets.socket_in`."""
        return await socket_in(self, family, type, proto)

    async def connect_tcp(self, host: str, port: int) -> anyio.abc.SocketStream:
        """An anyio stream connected from this set's netns, the name resolved
        inside the set; see :func:`nspool._sockets.connect_tcp_in`.

        Cancellation: as for any anyio connect; nothing is left open."""
        return await connect_tcp_in(self, host, port)

    async def create_tcp_listener(
        self, local_host: str | None = None, local_port: int = 0
    ) -> anyio.abc.SocketListener:
        """An anyio listener bound in this set's netns; see
        :func:`nspool._sockets.create_tcp_listener_in`."""
        return await create_tcp_listener_in(self, local_host, local_port)

    async def run_process(
        self, command: Command, **options: Unpack[RunOptions]
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``command`` inside this set (forked from a worker that entered
        it) and return its output, as ``anyio.run_process`` does, with its
        options (:class:`~nspool._process.RunOptions`: ``input``,
        ``stdin``, ``stdout``, ``stderr``, ``check``, ``cwd``, ``env``, ...);
        see :func:`nspool._process.run_process_in`.

        Cancellation: the process is killed and reaped.

        Raises :class:`PidNamespaceEndedError` if the set's pid namespace
        has ended (its init was killed)."""
        return await run_process_in(self, command, **options)

    async def open_process(
        self, command: Command, **options: Unpack[OpenOptions]
    ) -> NamespaceProcess:
        """Start ``command`` inside this set, as ``anyio.open_process`` does
        (the standard streams are pipes unless given), and return the
        process (use it with ``async with``); see
        :func:`nspool._process.open_process_in`.

        Cancellation: a process started by a cancelled call is killed and
        reaped.

        Raises :class:`PidNamespaceEndedError` if the set's pid namespace
        has ended (its init was killed)."""
        return await open_process_in(self, command, **options)

    # -- persistence -----------------------------------------------------------

    def persist(self, name: str) -> str:
        """Give the set's network namespace the ``ip netns`` name ``name``
        (a bind mount at ``/run/netns/NAME``); returns that path.

        ``/run/netns`` is set up as iproute2 sets it up (a shared mount), so
        ``ip netns`` sees the name and ``ip netns del`` removes it. Raises
        :class:`NamespaceExistsError` if the name is taken. Undo with
        :meth:`unpersist`.
        """
        return _persist.persist(self._handle, name)

    @staticmethod
    def unpersist(name: str) -> None:
        """Remove the ``ip netns`` name ``name`` (as ``ip netns del`` does:
        a lazy unmount, then the file). The namespace itself lives on while
        anything else holds it."""
        _persist.unpersist(name)

    def mount_ns(self, kind: KindsArg, path: str | os.PathLike[str]) -> None:
        """Bind-mount the namespace of single kind ``kind`` at ``path`` (an
        empty file is created if ``path`` does not exist), so that it outlives
        this set and this process. Undo with :meth:`unmount`.

        A mount namespace can only be mounted in an older mount namespace
        than itself (the kernel refuses loops with ``EINVAL``).
        """
        _persist.mount_ns(self._handle, Kind.require(kind, what="mount_ns"), path)

    def mount(self, directory: str | os.PathLike[str]) -> None:
        """Bind-mount every namespace of the set in ``directory`` (created if
        missing), one file per kind named as in ``/proc/PID/ns``; read it back
        with :meth:`from_dir`, undo it with :meth:`unmount`."""
        _persist.mount(self._handle, directory)

    @staticmethod
    def unmount(path: str | os.PathLike[str]) -> None:
        """Undo :meth:`mount_ns` (a file) or :meth:`mount` (a directory):
        lazily unmount each namespace file, remove it, and for a directory
        remove the directory."""
        _persist.unmount(path)

    # -- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Close the set's fds (once no other thread is still using them),
        and end its pid-namespace init if it is the last set sharing it.
        Idempotent; safe from any thread."""
        self._handle.close()

    def __enter__(self) -> NamespaceSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is None or handle.closed:
            return
        warnings.warn(f"unclosed {self!r}", ResourceWarning, stacklevel=2, source=self)
        with contextlib.suppress(Exception):
            self.close()

    def __repr__(self) -> str:
        if self._handle.closed:
            return f"<NamespaceSet {self._handle.kinds} closed>"
        try:
            ids = " ".join(f"{k.proc_name}:[{i}]" for k, i in self.ids().items())
        except (OSError, NamespaceError):
            ids = str(self._handle.kinds)
        return f"<NamespaceSet {ids}>"


def _unshare_new(
    cls: type[NamespaceSet],
    kinds: KindsArg,
    *,
    loopback: bool = False,
    **options: Unpack[UnshareOptions],
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
    return create_set(cls, kinds, None, _loopback_hook(kinds, loopback), options=set_options)


def _unshare_nested(
    base: NamespaceSet,
    kinds: KindsArg,
    *,
    loopback: bool = False,
    **options: Unpack[UnshareOptions],
) -> NamespaceSet:
    """Create new namespaces of ``kinds`` nested in this set
    (``s.unshare(kinds)``); see :meth:`_unshare_new`."""
    kinds = Kind.require(kinds, what="unshare")
    set_options = SetOptions.make(kinds, **options)
    return create_set(type(base), kinds, base, _loopback_hook(kinds, loopback), options=set_options)


def create_set(
    cls: type[_S],
    kinds: Kind,
    base: NamespaceSet | None,
    hook: Callable[[_S], object] | None = None,
    *,
    options: SetOptions = NO_OPTIONS,
) -> _S:
    """Make the set on a throwaway helper thread (or in a helper process
    if it holds a user namespace); ``hook(set)`` runs on that thread
    while it is still inside the new namespaces (the pool's after-create
    hook, with no extra thread hop); for a user set, after that thread
    has entered all but its user and time namespaces. If the hook
    raises, the set is closed and the error propagates."""
    made: list[_S] = []

    def on_thread(h: SetHandle) -> None:
        # The user's hook sees the set it will get, as nspool.current().
        made.append(cls(h))
        if hook is not None:
            run_as_current(made[0], hook, made[0])

    handle = create(
        kinds,
        None if base is None else base.handle,
        None if hook is None else on_thread,
        options=options,
    )
    return made[0] if made else cls(handle)
