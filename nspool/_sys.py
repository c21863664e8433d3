"""The syscalls nspool makes, each wrapped once.

Every wrapper retries ``EINTR`` and turns any other failure into the matching
:class:`~nspool.errors.NamespaceError`, naming the syscall, the kind and the
path or pid. Nothing above this module calls ``os.setns``, ``libc.mount`` or
the like directly.

Two backends provide ``setns`` and ``unshare``:

* ``"os"``: :func:`os.setns` and :func:`os.unshare` (Python 3.12 and later);
* ``"ctypes"``: the C library through :mod:`ctypes` (any Python; the only
  choice on 3.11).

``"os"`` is used where it exists. :func:`use_backend` forces one (the tests run
the suite on both); so does the environment variable ``NSPOOL_SYSCALLS`` read
at import. ``mount``/``umount2`` always go through ctypes (Python has no
wrapper), and ``pidfd_open``/``ioctl`` through :mod:`os` and :mod:`fcntl`.

All functions act on the calling thread only, as the kernel does: namespaces
are per thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import signal
import stat
import sys
from collections.abc import Callable
from typing import TypeVar

from .errors import KindMismatchError, NamespaceError, NotANamespaceError, from_errno
from .kinds import Kind

__all__ = [
    "MNT_DETACH",
    "MS_BIND",
    "MS_PRIVATE",
    "MS_REC",
    "MS_SHARED",
    "NS_GET_NSTYPE",
    "PIDFD_THREAD",
    "backend",
    "child_program",
    "current_cpu",
    "mount",
    "ns_inode_at",
    "nstype",
    "open_ns",
    "pidfd_is_alive",
    "pidfd_open",
    "setns",
    "setns_holding_gil",
    "umount2",
    "unshare",
    "use_backend",
]

# <linux/nsfs.h>: _IO(0xb7, 0x3)
NS_GET_NSTYPE = 0xB703
# <linux/nsfs.h>: _IO(0xb7, 0x1), an fd for the user namespace owning a namespace.
NS_GET_USERNS = 0xB701
# <sys/mount.h>
MS_REC = 0x4000
MS_BIND = 0x1000
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 0x2
#: umount2: do not follow a symlink at the target (<sys/mount.h>).
UMOUNT_NOFOLLOW = 0x8
CLONE_FS = 0x00000200
# <linux/pidfd.h>: a pidfd for one thread rather than a thread group (6.9+).
PIDFD_THREAD = os.O_EXCL

_T = TypeVar("_T")

_LIBC_NAME = ctypes.util.find_library("c") or "libc.so.6"
_libc = ctypes.CDLL(_LIBC_NAME, use_errno=True)
# setns takes microseconds: called through PyDLL it keeps the GIL, which
# saves the release/re-acquire and, on a busy interpreter, a wait of up to a
# switch interval to get the GIL back. unshare and mount can take
# milliseconds (a new netns, kernel locks), so they release it.
_libc_gil = ctypes.PyDLL(_LIBC_NAME, use_errno=True)
_c_setns = _libc_gil.setns
# readlinkat of a /proc/.../ns link takes a few microseconds too; the worker
# threads read a few after every call.
_c_readlinkat = _libc_gil.readlinkat
_c_readlinkat.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t)
_c_readlinkat.restype = ctypes.c_ssize_t
_c_sched_getcpu = _libc_gil.sched_getcpu
_c_sched_getcpu.argtypes = ()
_c_sched_getcpu.restype = ctypes.c_int
_c_setns.argtypes = (ctypes.c_int, ctypes.c_int)
_c_setns.restype = ctypes.c_int
_c_unshare = _libc.unshare
_c_unshare.argtypes = (ctypes.c_int,)
_c_unshare.restype = ctypes.c_int
_c_mount = _libc.mount
_c_mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
)
_c_mount.restype = ctypes.c_int
_c_setdomainname = _libc.setdomainname
_c_setdomainname.argtypes = (ctypes.c_char_p, ctypes.c_size_t)
_c_setdomainname.restype = ctypes.c_int
_c_umount2 = _libc.umount2
_c_umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
_c_umount2.restype = ctypes.c_int


def _retry(call: Callable[[], _T]) -> _T:
    """Call ``call`` until it does not fail with ``EINTR``."""
    while True:
        try:
            return call()
        except InterruptedError:
            continue


def _ctypes_call(fn: Callable[..., int], *args: object) -> None:
    """Call a libc function returning -1/errno, raising ``OSError`` on failure
    (retried by :func:`_retry` on ``EINTR``)."""
    if fn(*args) == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class _Backend:
    name = "ctypes"

    def setns(self, fd: int, nstype: int) -> None:
        if _c_setns(fd, nstype) == -1:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def unshare(self, flags: int) -> None:
        _ctypes_call(_c_unshare, flags)


class _OsBackend(_Backend):
    name = "os"

    def setns(self, fd: int, nstype: int) -> None:
        os.setns(fd, nstype)  # type: ignore[attr-defined,unused-ignore]

    def unshare(self, flags: int) -> None:
        os.unshare(flags)  # type: ignore[attr-defined,unused-ignore]


_BACKENDS: dict[str, _Backend] = {"ctypes": _Backend()}
if hasattr(os, "setns") and hasattr(os, "unshare"):
    _BACKENDS["os"] = _OsBackend()

_backend: _Backend = _BACKENDS.get(
    os.environ.get("NSPOOL_SYSCALLS", ""), _BACKENDS.get("os", _BACKENDS["ctypes"])
)


def backend() -> str:
    """The name of the backend in use: ``"os"`` or ``"ctypes"``."""
    return _backend.name


def available_backends() -> tuple[str, ...]:
    """The backends this Python offers (``("ctypes",)`` on 3.11)."""
    return tuple(_BACKENDS)


def use_backend(name: str) -> str:
    """Switch every later ``setns``/``unshare`` to backend ``name`` and return
    the previous one's name. For tests and benchmarks; not thread-safe against
    calls in flight."""
    global _backend
    try:
        new = _BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"syscall backend {name!r} is not available here (have: {', '.join(_BACKENDS)})"
        ) from None
    old, _backend = _backend.name, new
    return old


def setns(fd: int, kind: Kind | int, *, path: str | None = None) -> None:
    """Move the calling thread into the namespace(s) ``fd`` refers to.

    ``kind`` is the expected kind (the kernel checks it), or for a pidfd the
    kinds to join at once. ``path`` only names the namespace in errors.
    This is the hot path of every call: no closure, one attribute lookup.
    """
    while True:
        try:
            _backend.setns(fd, kind)
            return
        except InterruptedError:
            continue
        except OSError as exc:
            err = exc.errno or errno.EIO
            raise from_errno(err, syscall="setns", kind=Kind(kind), path=path) from exc


def setns_holding_gil(fd: int, kind: Kind | int) -> None:
    """:func:`setns` through ctypes without releasing the GIL, whatever the
    backend. For the workers' hot path: on a busy interpreter every GIL
    release can cost a wait of up to a switch interval (5 ms) to get it back,
    and ``setns`` itself takes microseconds."""
    while True:
        if _c_setns(fd, kind) != -1:
            return
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise from_errno(err, syscall="setns", kind=Kind(kind))


def ns_inode_at(dir_fd: int, name: bytes, buf: ctypes.Array[ctypes.c_char]) -> int:
    """The inode number in the namespace link ``name`` (``b"net"``) of the
    ``/proc/.../ns`` directory ``dir_fd``, read without releasing the GIL.
    ``buf`` is a scratch buffer of at least 64 bytes. Raises ``OSError``."""
    while True:
        n = _c_readlinkat(dir_fd, name, buf, len(buf))
        if n != -1:
            break
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, os.strerror(err), name.decode())
    link = buf.raw[:n]  # b"net:[4026531840]"
    return int(link[link.index(b"[") + 1 : -1])


def current_cpu() -> int:
    """The CPU the calling thread runs on now (``sched_getcpu``; a vDSO call,
    nanoseconds)."""
    return int(_c_sched_getcpu())


def unshare(flags: Kind | int) -> None:
    """Give the calling thread new namespaces of the kinds in ``flags``
    (other ``CLONE_*`` bits such as ``CLONE_FS`` pass through)."""
    try:
        _retry(lambda: _backend.unshare(int(flags)))
    except OSError as exc:
        kinds = Kind(int(flags) & int(Kind.all()))
        raise from_errno(exc.errno or errno.EIO, syscall="unshare", kind=kinds or None) from exc


def unshare_fs() -> None:
    """Stop sharing cwd, root and umask with the process's other threads
    (``unshare(CLONE_FS)``). Required before ``setns`` into a mount namespace.
    """
    try:
        _retry(lambda: _backend.unshare(CLONE_FS))
    except OSError as exc:
        raise from_errno(
            exc.errno or errno.EIO, syscall="unshare", detail="CLONE_FS", kind=Kind.MNT
        ) from exc


def pidfd_open(pid: int, flags: int = 0) -> int:
    """A pidfd (close-on-exec) for ``pid``; :class:`ProcessNotFoundError` if
    there is no such process. ``flags`` may be :data:`PIDFD_THREAD`."""
    if pid <= 0:
        raise from_errno(errno.ESRCH, syscall="pidfd_open", pid=pid, detail="not a process id")
    try:
        return _retry(lambda: os.pidfd_open(pid, flags))
    except OSError as exc:
        raise from_errno(exc.errno or errno.EIO, syscall="pidfd_open", pid=pid) from exc


def pidfd_is_alive(pidfd: int) -> bool:
    """Whether the process behind ``pidfd`` still runs (signal 0)."""
    try:
        _retry(lambda: signal.pidfd_send_signal(pidfd, 0))
    except ProcessLookupError:
        return False
    return True


def nstype(fd: int, *, path: str | None = None) -> Kind:
    """The kind of namespace ``fd`` refers to (``ioctl(NS_GET_NSTYPE)``);
    :class:`NotANamespaceError` for any other file."""
    try:
        value = _retry(lambda: fcntl.ioctl(fd, NS_GET_NSTYPE))
    except OSError as exc:
        err = exc.errno or errno.EIO
        if err in (errno.ENOTTY, errno.EINVAL):
            err = errno.ENOTTY
        raise from_errno(
            err, syscall="ioctl(NS_GET_NSTYPE)", path=path, detail="not a namespace file"
        ) from exc
    return Kind.from_nstype(value)


def open_ns(path: str, kind: Kind, *, dir_fd: int | None = None, pid: int | None = None) -> int:
    """Open the namespace file ``path`` close-on-exec, and check that it is a
    namespace of ``kind``. Returns the fd; on any failure nothing stays open.
    The open never blocks (see :func:`open_ns_nonblocking`, which does it).

    Raises :class:`NamespaceNotFoundError` (no such file),
    :class:`NotANamespaceError` (a file, but no namespace) or
    :class:`KindMismatchError` (a namespace of another kind).
    """
    return open_ns_nonblocking(path, kind, dir_fd=dir_fd, pid=pid)[0]


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd {fd}"


def mount(
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int,
    data: str | None = None,
    *,
    kind: Kind | None = None,
) -> None:
    """``mount(2)`` on the calling thread's mount namespace."""

    def enc(s: str | None) -> bytes | None:
        return None if s is None else os.fsencode(s)

    try:
        _retry(
            lambda: _ctypes_call(
                _c_mount,
                enc(source),
                enc(target),
                enc(fstype),
                flags,
                enc(data),
            )
        )
    except OSError as exc:
        raise from_errno(
            exc.errno or errno.EIO,
            syscall="mount",
            kind=kind,
            path=target,
            detail=None if source is None else f"source {source}",
        ) from exc


def umount2(target: str, flags: int, *, kind: Kind | None = None) -> None:
    """``umount2(2)`` on the calling thread's mount namespace."""
    try:
        _retry(lambda: _ctypes_call(_c_umount2, os.fsencode(target), flags))
    except OSError as exc:
        raise from_errno(exc.errno or errno.EIO, syscall="umount2", kind=kind, path=target) from exc


def setdomainname(name: str) -> None:
    """``setdomainname(2)``: the NIS domain name of the calling thread's uts
    namespace."""
    raw = os.fsencode(name)
    try:
        _retry(lambda: _ctypes_call(_c_setdomainname, raw, len(raw)))
    except OSError as exc:
        raise from_errno(exc.errno or errno.EIO, syscall="setdomainname", kind=Kind.UTS) from exc


def write_proc(
    path: str,
    text: str,
    *,
    kind: Kind | None = None,
    pid: int | None = None,
    dir_fd: int | None = None,
) -> None:
    """Write ``text`` to the ``/proc`` file ``path`` (relative to
    ``dir_fd`` if given) in one ``write``: id maps and clock offsets must
    arrive whole. Raises :class:`NamespaceError` naming the path."""
    shown = path if dir_fd is None else f"{_fd_path(dir_fd)}/{path}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        raise from_errno(
            exc.errno or errno.EIO, syscall="open", kind=kind, path=shown, pid=pid
        ) from exc
    try:
        data = text.encode()
        written = _retry(lambda: os.write(fd, data))
        if written != len(data):
            raise OSError(errno.EIO, f"short write: {written} of {len(data)} bytes")
    except OSError as exc:
        raise from_errno(
            exc.errno or errno.EIO, syscall="write", kind=kind, path=shown, pid=pid
        ) from exc
    finally:
        os.close(fd)


def owner_id(fd: int) -> int:
    """The inode number of the user namespace that owns the namespace ``fd``
    (``ioctl(NS_GET_USERNS)``); ``EPERM`` if it lies outside the caller's
    own user namespace."""
    try:
        owner = _retry(lambda: fcntl.ioctl(fd, NS_GET_USERNS))
    except OSError as exc:
        raise from_errno(exc.errno or errno.EIO, syscall="ioctl(NS_GET_USERNS)") from exc
    try:
        return os.fstat(owner).st_ino
    finally:
        os.close(owner)


def python() -> str:
    """The interpreter to start nspool's small helper processes with (an
    init, a user-namespace helper): ``sys.executable``, or, where this
    process may not reach that path (an unprivileged user whose interpreter
    lives under a private home), ``/proc/self/exe``, which names the running
    binary without walking its path."""
    if os.access(sys.executable, os.X_OK):
        return sys.executable
    return "/proc/self/exe"


#: The directory of this package, where its child programs are.
_HERE = os.path.dirname(os.path.abspath(__file__))


def child_program(name: str) -> str:
    """The path of one of nspool's child programs (``_*_child.py`` in this
    package): stdlib-only scripts that import nothing of nspool, started as
    ``python -I -S PATH ARG...`` with :func:`python`."""
    return os.path.join(_HERE, name)


def may_return(fd: int) -> bool:
    """Whether a thread that leaves the namespace ``fd`` may ``setns`` back
    into it: not if it belongs to a user namespace outside the caller's own
    (an ancestor's, as home does after ``enter_user_namespace``), where the
    caller has no capabilities."""
    try:
        owner_id(fd)
    except NamespaceError as exc:
        if exc.errno == errno.EPERM:
            return False
        raise
    return True


#: A directory fd of the ``/proc`` this process saw when nspool was imported
#: (its own pid namespace's), open for the life of the process. A set with a
#: private ``/proc`` mounts another one over ``/proc`` in its mount
#: namespace, where paths such as ``/proc/thread-self`` no longer describe a
#: worker; the library's own reads inside sets go through this fd instead.
HOST_PROC = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def open_ns_nonblocking(
    path: str, kind: Kind | None, *, dir_fd: int | None = None, pid: int | None = None
) -> tuple[int, Kind]:
    """Like :func:`open_ns`, but the open never blocks: ``O_NONBLOCK``, so a
    FIFO (whose blocking open waits for a writer) or a device is opened at
    once and then refused with :class:`NotANamespaceError`. ``kind`` None
    takes whatever kind the file is. Returns the fd and its kind; on any
    failure nothing stays open."""
    shown = path if dir_fd is None else f"{_fd_path(dir_fd)}/{path}"
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = _retry(lambda: os.open(path, flags, dir_fd=dir_fd))
    except OSError as exc:
        raise from_errno(
            exc.errno or errno.EIO, syscall="open", kind=kind, path=shown, pid=pid
        ) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a FIFO" if stat.S_ISFIFO(mode) else f"file type {stat.S_IFMT(mode):#o}"
            raise NotANamespaceError(
                errno.ENOTTY,
                syscall="open",
                kind=kind,
                path=shown,
                pid=pid,
                detail=f"{what}, not a namespace file",
            )
        actual = nstype(fd, path=shown)
        if kind is not None and actual != kind:
            raise KindMismatchError(
                errno.EINVAL,
                syscall="open",
                kind=kind,
                path=shown,
                pid=pid,
                detail=f"is a {actual} namespace, not {kind}",
            )
    except NamespaceError as exc:
        os.close(fd)
        if exc.pid is None and pid is not None:
            exc.pid = pid
        if exc.kind is None and kind is not None:
            exc.kind = str(kind)
        raise
    except BaseException:
        os.close(fd)
        raise
    return fd, actual


#: ``kcmp`` types: whether two tasks share their fd table or fs (cwd, root).
KCMP_FILES = 2
KCMP_FS = 3
_SYS_KCMP = {"x86_64": 312, "aarch64": 272, "armv7l": 378, "ppc64le": 354, "s390x": 343}.get(
    os.uname().machine, -1
)
# kcmp takes about a microsecond: the workers call it after every call,
# so it keeps the GIL as setns does.
_c_kcmp = ctypes.PyDLL(_LIBC_NAME, use_errno=True).syscall
_c_kcmp.argtypes = (ctypes.c_long,) * 4 + (ctypes.c_ulong,) * 2
_c_kcmp.restype = ctypes.c_long


def kcmp(pid1: int, pid2: int, kcmp_type: int) -> int:
    """``kcmp(pid1, pid2, kcmp_type, 0, 0)``: 0 if the two tasks share the
    resource (:data:`KCMP_FS`, :data:`KCMP_FILES`), else 1, 2 or 3 (an
    ordering). ``OSError`` if the kernel has no kcmp (``ENOSYS``) or a
    task is gone (``ESRCH``)."""
    if _SYS_KCMP < 0:
        raise OSError(errno.ENOSYS, f"kcmp: no syscall number for {os.uname().machine}")
    while True:
        res: int = _c_kcmp(_SYS_KCMP, pid1, pid2, kcmp_type, 0, 0)
        if res != -1:
            return res
        err = ctypes.get_errno()
        if err != errno.EINTR:
            raise OSError(err, f"kcmp({pid1}, {pid2}, {kcmp_type}): {os.strerror(err)}")
