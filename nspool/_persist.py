"""Persistence: ``ip netns`` names and bind mounts of a set's namespaces.

Only ever removes what looks like nspool's (or ``ip netns``'s) own work: a
namespace file that is a mount point, never a symlink, a directory with
other files, or anything else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat

from . import _sys
from ._handle import SetHandle
from .errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidNetnsNameError,
    KindError,
    NamespaceError,
    NamespaceExistsError,
    NotANamespaceError,
    from_errno,
)
from .kinds import Kind

__all__ = [
    "NETNS_NAME_MAX",
    "NETNS_RUN_DIR",
    "fs_path",
    "mount",
    "mount_ns",
    "persist",
    "unmount",
    "unpersist",
    "validate_name",
]

#: Where ``ip netns`` keeps its names (iproute2's ``NETNS_RUN_DIR``).
NETNS_RUN_DIR = "/run/netns"

#: The longest file name, so the longest ``ip netns`` name (``NAME_MAX``).
NETNS_NAME_MAX = 255


def validate_name(name: object) -> str:
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


def fs_path(path: object, *, what: str, kind: object = None) -> str:
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


def persist(h: SetHandle, name: str) -> str:
    """``NamespaceSet.persist``: bind ``h``'s netns at ``/run/netns/NAME``."""
    path = os.path.join(NETNS_RUN_DIR, validate_name(name))
    with h.borrow(Kind.NET) as fds:
        if Kind.NET not in fds:
            raise KindError(
                errno.EINVAL,
                syscall="persist",
                kind=Kind.NET,
                path=path,
                detail=f"the set holds no network namespace ({h.kinds})",
            )
        _prepare_netns_dir(NETNS_RUN_DIR)
        _bind_ns(fds[Kind.NET], Kind.NET, path, exclusive=True)
    return path


def unpersist(name: str) -> None:
    """``NamespaceSet.unpersist``: remove the ``ip netns`` name ``name``."""
    _unbind_ns(os.path.join(NETNS_RUN_DIR, validate_name(name)), Kind.NET)


def mount_ns(h: SetHandle, kind: Kind, path: str | os.PathLike[str]) -> None:
    """``NamespaceSet.mount_ns``: bind ``h``'s namespace of ``kind`` at ``path``."""
    path = fs_path(path, what="mount_ns", kind=kind)
    with h.borrow(kind) as fds:
        if kind not in fds:
            raise KindError(
                errno.EINVAL,
                syscall="mount_ns",
                kind=kind,
                path=path,
                detail=f"the set holds {h.kinds}",
            )
        _bind_ns(fds[kind], kind, path)


def mount(h: SetHandle, directory: str | os.PathLike[str]) -> None:
    """``NamespaceSet.mount``: bind every namespace of ``h`` in ``directory``."""
    directory = fs_path(directory, what="mount", kind=h.kinds)
    made_dir = not os.path.isdir(directory)
    if made_dir:
        try:
            os.makedirs(directory, mode=0o755)
        except OSError as exc:
            raise from_errno(
                exc.errno or errno.EIO, syscall="mkdir", kind=h.kinds, path=directory
            ) from exc
    done: list[str] = []
    try:
        with h.borrow() as fds:
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


def unmount(path: str | os.PathLike[str]) -> None:
    """``NamespaceSet.unmount``: undo :func:`mount_ns` or :func:`mount`."""
    path = fs_path(path, what="unmount")
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
