"""Opening namespaces that exist: a thread's, a process's, a file, a directory, a name.

Each function returns fresh close-on-exec fds (one per kind) that the
caller owns, or raises with nothing left open; ``NamespaceSet``'s named
constructors (``current``, ``from_pid``, ``from_path``, ``from_dir``,
``from_name``) wrap them. A pid is pinned with a pidfd before anything is
read (containernetworking/plugins#714).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

from . import _sys
from ._handle import close_fds
from ._persist import NETNS_RUN_DIR, fs_path, validate_name
from ._thread_ns import THREAD_NS_DIR
from .errors import (
    KindError,
    NamespaceError,
    NamespaceNotFoundError,
    ProcessNotFoundError,
    from_errno,
)
from .kinds import ALL_KINDS, Kind, KindsArg

__all__ = ["current", "from_dir", "from_name", "from_path", "from_pid"]


def current(kinds: KindsArg = ALL_KINDS) -> dict[Kind, int]:
    """The fds of ``NamespaceSet.current`` (see there)."""
    kinds = Kind.require(kinds, what="current")
    return _open_each(kinds, THREAD_NS_DIR, name_of=lambda k: k.for_children_name, pid=None)


def from_pid(pid: int, kinds: KindsArg = ALL_KINDS) -> dict[Kind, int]:
    """The fds of ``NamespaceSet.from_pid`` (see there)."""
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
                return _open_each(
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


def from_path(path: str | os.PathLike[str], kind: KindsArg | None = None) -> dict[Kind, int]:
    """The fds of ``NamespaceSet.from_path`` (see there)."""
    path = fs_path(path, what="from_path")
    if kind is None:
        fd, actual = _sys.open_ns_nonblocking(path, None)
        return {actual: fd}
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
    return {single: _sys.open_ns_nonblocking(path, single)[0]}


def from_dir(directory: str | os.PathLike[str], kinds: KindsArg) -> dict[Kind, int]:
    """The fds of ``NamespaceSet.from_dir`` (see there)."""
    directory = fs_path(directory, what="from_dir")
    kinds = Kind.require(kinds, what="from_dir")
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise from_errno(
            exc.errno or errno.EIO, syscall="open", kind=kinds, path=directory
        ) from exc
    try:
        return _open_each(kinds, directory, name_of=lambda k: k.proc_name, pid=None, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def from_name(name: str) -> dict[Kind, int]:
    """The fds of ``NamespaceSet.from_name`` (see there)."""
    path = os.path.join(NETNS_RUN_DIR, validate_name(name))
    try:
        return {Kind.NET: _sys.open_ns_nonblocking(path, Kind.NET)[0]}
    except NamespaceNotFoundError as exc:
        raise NamespaceNotFoundError(
            errno.ENOENT,
            syscall="open",
            kind=Kind.NET,
            path=path,
            detail=f"no netns named {name!r}; hint: create it with `ip netns add {name}`",
        ) from exc


def _open_each(
    kinds: Kind,
    directory: str,
    *,
    name_of: Callable[[Kind], str],
    pid: int | None,
    dir_fd: int | None = None,
) -> dict[Kind, int]:
    fds: dict[Kind, int] = {}
    try:
        for kind in kinds.singles():
            name = name_of(kind)
            path = name if dir_fd is not None else os.path.join(directory, name)
            fds[kind] = _sys.open_ns_nonblocking(path, kind, dir_fd=dir_fd, pid=pid)[0]
    except BaseException as exc:
        close_fds(fds.values())
        if isinstance(exc, NamespaceError) and dir_fd is not None:
            exc.path = os.path.join(directory, os.path.basename(exc.path or ""))
            exc.filename = exc.path
        raise
    return fds
