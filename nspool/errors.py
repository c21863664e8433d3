"""The nspool exception tree.

Every error nspool raises is a :class:`NamespaceError`, itself an
:class:`OSError`, so code that already handles ``OSError`` keeps working.
Subclasses also derive from the matching builtin (``FileNotFoundError``,
``PermissionError``, ...), so ``except FileNotFoundError`` catches a missing
namespace file whether or not the caller knows about nspool.

Each message names the namespace kind, the path or pid involved, and the
syscall that failed, e.g.::

    setns(net, /run/netns/blue): [Errno 1] Operation not permitted

This module depends on nothing else in nspool; the lower layers raise through
:func:`from_errno`, which picks the subclass from the errno.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import TypeVar

_T = TypeVar("_T")

__all__ = [
    "InvalidArgumentError",
    "InvalidArgumentTypeError",
    "InvalidNetnsNameError",
    "KindError",
    "KindMismatchError",
    "KindTypeError",
    "NamespaceError",
    "NamespaceExistsError",
    "NamespaceNotFoundError",
    "NamespacePermissionError",
    "NotANamespaceError",
    "PidNamespaceEndedError",
    "PoolClosedError",
    "ProcessNotFoundError",
    "SetClosedError",
    "UnsupportedKindError",
    "from_errno",
    "outcome",
]


class NamespaceError(OSError):
    """Base of every nspool error.

    Raised directly for failures without a more specific subclass (for
    example ``EINVAL`` from ``setns``). ``errno`` and ``strerror`` are those of
    the failed syscall; ``kind``, ``path``, ``pid`` and ``syscall`` say where.
    """

    kind: str | None
    path: str | None
    pid: int | None
    syscall: str | None

    def __init__(
        self,
        errno: int,
        strerror: str | None = None,
        *,
        syscall: str | None = None,
        kind: object = None,
        path: str | os.PathLike[str] | None = None,
        pid: int | None = None,
        detail: str | None = None,
    ) -> None:
        strerror = strerror if strerror is not None else os.strerror(errno)
        if detail:
            strerror = f"{strerror}: {detail}"
        super().__init__(errno, strerror)
        self.kind = None if kind is None else str(kind)
        self.path = None if path is None else os.fspath(path)
        self.pid = pid
        self.syscall = syscall
        # OSError.filename drives its own formatting; we format ourselves, so
        # keep the path here for callers that read .filename.
        self.filename = self.path

    def __str__(self) -> str:
        where = [w for w in (self.kind, self.path) if w]
        if self.pid is not None:
            where.append(f"pid {self.pid}")
        head = f"{self.syscall or 'nspool'}({', '.join(where)})"
        return f"{head}: [Errno {self.errno}] {self.strerror}"

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the keyword-only context across pickling (e.g. to a subprocess).
        return (
            _rebuild,
            (type(self), self.errno, self.strerror, self.syscall, self.kind, self.path, self.pid),
        )


def _rebuild(
    cls: type[NamespaceError],
    err: int,
    strerror: str | None,
    syscall: str | None,
    kind: str | None,
    path: str | None,
    pid: int | None,
) -> NamespaceError:
    return cls(err, strerror, syscall=syscall, kind=kind, path=path, pid=pid)


class NamespaceNotFoundError(NamespaceError, FileNotFoundError):
    """The namespace file, directory or ``ip netns`` name does not exist."""


class NamespaceExistsError(NamespaceError, FileExistsError):
    """A name or mount point that nspool was asked to create already exists."""


class NamespacePermissionError(NamespaceError, PermissionError):
    """The kernel refused the operation (``EPERM``/``EACCES``): usually missing
    ``CAP_SYS_ADMIN`` over the namespace's owning user namespace."""


class ProcessNotFoundError(NamespaceError, ProcessLookupError):
    """The pid does not exist, or exited before its namespaces were opened.

    Raised by ``NamespaceSet.from_pid``: a pid is pinned with a pidfd before
    anything is read, so a process that exits (and whose pid may be reused)
    yields this error, never another process's namespaces.
    """


class NotANamespaceError(NamespaceError):
    """The path or fd is not a namespace file (``NS_GET_NSTYPE`` gave
    ``ENOTTY``): a regular file, a directory, a device."""


class KindMismatchError(NamespaceError):
    """The file is a namespace, but of another kind than the one claimed, e.g.
    a network namespace file passed as ``Kind.UTS``."""


class KindError(NamespaceError, ValueError):
    """A kind name or flag value is not a namespace kind, or a kind set that
    must not be empty is empty. Raised by ``Kind.parse`` and every function
    taking kinds, before anything is opened."""


class UnsupportedKindError(NamespaceError):
    """The operation is not supported for this kind here, e.g. a user
    namespace (created by a helper process, see the user-namespace support) or
    an inline call into a kind that cannot be restored on the spot."""


class SetClosedError(NamespaceError):
    """The ``NamespaceSet`` was used after ``close()`` (errno ``EBADF``)."""


class PoolClosedError(NamespaceError, RuntimeError):
    """A ``Pool`` was used after ``close()`` (errno ``EBADF``). Also a
    ``RuntimeError``, which the pool raised for this before."""


class InvalidArgumentError(NamespaceError, ValueError):
    """An argument has a value nspool refuses (errno ``EINVAL``), checked
    before anything is opened, created or mounted."""


class InvalidArgumentTypeError(NamespaceError, TypeError):
    """An argument has a type nspool refuses (errno ``EINVAL``), e.g. a
    string where a bool is needed; checked before anything is made."""


class KindTypeError(KindError, TypeError):
    """A kind argument is of a type that names no kind (``None``, a float).
    Also a :class:`KindError` and a ``TypeError``."""


class InvalidNetnsNameError(InvalidArgumentError, NamespaceNotFoundError):
    """An ``ip netns`` name that cannot be one: empty, ``.``/``..``, with a
    ``/`` or NUL, or longer than ``NAME_MAX``. Also a
    :class:`NamespaceNotFoundError`, which nspool raised for it before."""


class PidNamespaceEndedError(NamespaceError):
    """The set's pid namespace has ended: its init (PID 1) exited or was
    killed, so the kernel refuses every new process there (``fork`` fails
    with ``ENOMEM``). The set can still be closed; make a new one."""


_BY_ERRNO: dict[int, type[NamespaceError]] = {
    _errno.ENOENT: NamespaceNotFoundError,
    _errno.EEXIST: NamespaceExistsError,
    _errno.EPERM: NamespacePermissionError,
    _errno.EACCES: NamespacePermissionError,
    _errno.ESRCH: ProcessNotFoundError,
    _errno.ENOTTY: NotANamespaceError,
}


def from_errno(
    err: int,
    *,
    syscall: str,
    kind: object = None,
    path: str | os.PathLike[str] | None = None,
    pid: int | None = None,
    detail: str | None = None,
) -> NamespaceError:
    """Build the nspool error for a failed syscall, choosing the subclass from
    ``err``. The caller raises it (``raise from_errno(...) from exc``)."""
    cls = _BY_ERRNO.get(err, NamespaceError)
    if err == _errno.EPERM and syscall.startswith(_PRIVILEGED):
        detail = f"{detail}; {PRIVILEGE_HINT}" if detail else PRIVILEGE_HINT
    return cls(err, syscall=syscall, kind=kind, path=path, pid=pid, detail=detail)


#: What an ``EPERM`` from making or joining namespaces says to do.
PRIVILEGE_HINT = (
    "hint: making and joining namespaces needs root (CAP_SYS_ADMIN); without it, call "
    "nspool.enter_user_namespace() first thing to work in rootless mode"
)
_PRIVILEGED = ("unshare", "setns", "mount", "umount")


def outcome(result: _T, error: BaseException | None) -> _T:
    """``result``, or raise ``error`` (with its traceback). The frame drops
    its reference to the error as it raises, so no cycle (error, traceback,
    frame) keeps the error's frames alive; the caller drops its own first
    (``nspool._handoff.Task.take``)."""
    if error is None:
        return result
    try:
        raise error
    finally:
        del error
