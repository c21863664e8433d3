"""Which path nspool takes: its optional compiled helper, or pure Python.

Decided once, at import, and nowhere else. The helper is built at install
time when the machine has a C compiler (``hatch_build.py``) and has two
parts, each used when it is there:

* :data:`PIDINIT`: the path of a small C init for a set's new pid namespace
  (``_native_src/pidinit.c``), with the same protocol as the Python init
  (:mod:`nspool._pidinit_child`), at a fraction of its memory and start-up
  time; None when not built, and :mod:`nspool._pidinit` starts the Python one;
* the hop primitives (:func:`read_inodes`, :func:`setns`,
  :func:`check_and_return`), from the extension module ``_native_ext``
  (``_native_src/hop.c``), else the pure-Python fallbacks below on
  :mod:`nspool._sys`. Both take the same arguments and give the same results;
  neither releases the GIL (each call takes microseconds, and on a busy
  interpreter getting the GIL back can cost a switch interval);
* the hand-off (:data:`Baton`, :func:`pass_baton`): a binary semaphore, and
  posting one then waiting on another with the GIL let go of *before* the
  post, so that the woken thread can take the GIL at once; the fallback,
  :class:`PyBaton`, is a lock, posted with the GIL held.

``NSPOOL_NATIVE=0`` in the environment makes nspool ignore whatever was
built, so one install can test both paths. :data:`AVAILABLE` says whether
both parts are native, :data:`REASON` why not (``nspool doctor`` prints it).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

from . import _sys

__all__ = [
    "AVAILABLE",
    "CHECK_FILES_DIFFER",
    "CHECK_FS_DIFFERS",
    "CHECK_LINK_MOVED",
    "CHECK_OK",
    "EXT",
    "PIDINIT",
    "REASON",
    "Baton",
    "BatonLike",
    "PyBaton",
    "check_and_return",
    "pass_baton",
    "py_check_and_return",
    "py_pass_baton",
    "py_read_inodes",
    "py_setns",
    "read_inodes",
    "setns",
]

#: :func:`check_and_return`'s results: all is well (the thread is back).
CHECK_OK = 0
#: The thread no longer shares its fd table with the process (``kcmp``).
CHECK_FILES_DIFFER = 1
#: The thread no longer shares its fs (cwd, root, umask) with the process.
CHECK_FS_DIFFERS = 2
#: ``CHECK_LINK_MOVED + i``: link ``names[i]`` is not ``expected[i]``. A
#: negative result is ``-errno`` of a syscall that failed.
CHECK_LINK_MOVED = 3

_HERE = os.path.dirname(os.path.abspath(__file__))
#: The build hook's record of what it built, and why not.
_BUILD_REPORT = os.path.join(_HERE, "_native_build.txt")


def _built_why_not(name: str) -> str:
    """Why the build hook did not build ``name`` (from its report)."""
    try:
        with open(_BUILD_REPORT) as report:
            for line in report:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "not built (no build record: installed without the build hook?)"


def _find() -> tuple[Any, str | None, list[str]]:
    """The extension module (or None), the init's path (or None), and why
    each missing part is missing."""
    if os.environ.get("NSPOOL_NATIVE", "1") == "0":
        return None, None, ["disabled by NSPOOL_NATIVE=0"]
    why: list[str] = []
    try:
        # Imported by name: a compiled module, not a layer of the package.
        ext: Any = importlib.import_module("._native_ext", __package__)
    except ImportError as exc:
        ext = None
        built = _built_why_not("_native_ext")
        why.append(f"hop primitives: {built if 'not built' in built else exc}")
    init: str | None = os.path.join(_HERE, "_native_pidinit")
    assert init is not None
    if not os.access(init, os.X_OK):
        why.append(f"pid init: {_built_why_not('_native_pidinit')}")
        init = None
    return ext, init, why


_ext, PIDINIT, _why = _find()
#: Whether the hop primitives are the compiled ones.
EXT: bool = _ext is not None
#: Whether every part of the compiled helper is in use.
AVAILABLE: bool = EXT and PIDINIT is not None
#: Why not (empty when :data:`AVAILABLE`): each missing part and its reason.
REASON: str = "; ".join(_why)


class BatonLike(Protocol):
    """A binary semaphore: ``post()`` wakes the one thread in (or next in)
    ``wait(timeout)``; posts before a wait do not add up."""

    def post(self) -> None: ...

    def wait(self, timeout: float = -1.0, /) -> bool: ...


class PyBaton:
    """The fallback of :data:`Baton`: a lock, held while not posted."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def post(self) -> None:
        with contextlib.suppress(RuntimeError):  # posted already
            self._lock.release()

    def wait(self, timeout: float = -1.0, /) -> bool:
        """Take the post; ``False`` if none came within ``timeout`` seconds
        (-1: no limit). A signal handler's exception is raised."""
        return self._lock.acquire(timeout=timeout)


def py_pass_baton(to: BatonLike, mine: BatonLike, timeout: float = -1.0, /) -> bool:
    """The fallback of :func:`pass_baton` (with the GIL held throughout)."""
    to.post()
    return mine.wait(timeout)


def py_read_inodes(dirfd: int, names: tuple[bytes, ...]) -> tuple[int, ...]:
    """The fallback of :func:`read_inodes`."""
    buf = ctypes.create_string_buffer(64)
    try:
        return tuple([_sys.ns_inode_at(dirfd, name, buf) for name in names])
    except ValueError:
        raise OSError(errno.EINVAL, "not a namespace link") from None


def py_setns(fd: int, nstype: int) -> None:
    """The fallback of :func:`setns`."""
    _sys.setns_holding_gil(fd, nstype)


def py_check_and_return(
    pid: int,
    tid: int,
    check_fs: bool,
    dirfd: int,
    names: tuple[bytes, ...],
    expected: tuple[int, ...],
    anchor_fd: int,
    flags: int,
) -> int:
    """The fallback of :func:`check_and_return`."""
    try:
        if _sys.kcmp(pid, tid, _sys.KCMP_FILES):
            return CHECK_FILES_DIFFER
        if check_fs and _sys.kcmp(pid, tid, _sys.KCMP_FS):
            return CHECK_FS_DIFFERS
        buf = ctypes.create_string_buffer(64)
        for i, name in enumerate(names):
            if _sys.ns_inode_at(dirfd, name, buf) != expected[i]:
                return CHECK_LINK_MOVED + i
        if anchor_fd >= 0:
            _sys.setns_holding_gil(anchor_fd, flags)
    except OSError as exc:
        return -(exc.errno or errno.EIO)
    except ValueError:
        return -errno.EINVAL
    return CHECK_OK


#: ``read_inodes(dirfd, names)``: the inode of each namespace link ``name``
#: (``b"net"``) in the ``/proc/.../ns`` directory ``dirfd``, as
#: ``readlinkat`` gives ``kind:[INODE]``. ``OSError`` on failure.
read_inodes: Callable[[int, tuple[bytes, ...]], tuple[int, ...]] = (
    _ext.read_inodes if EXT else py_read_inodes
)
#: ``setns(fd, nstype)``: the calling thread joins ``fd``'s namespace(s).
#: ``OSError`` on failure (``EINTR`` retried).
setns: Callable[[int, int], None] = _ext.setns if EXT else py_setns
#: ``check_and_return(pid, tid, check_fs, dirfd, names, expected, anchor_fd,
#: flags)``: a worker's checks after a call, in one call: thread ``tid``
#: shares its fd table (and, if ``check_fs``, its fs) with process ``pid``
#: (``kcmp``), the links ``names`` in ``dirfd`` are ``expected``; then, if
#: ``anchor_fd >= 0``, ``setns(anchor_fd, flags)``. :data:`CHECK_OK`, or the
#: step that failed (``CHECK_*``, or ``-errno``).
check_and_return: Callable[
    [int, int, bool, int, tuple[bytes, ...], tuple[int, ...], int, int], int
] = _ext.check_and_return if EXT else py_check_and_return

#: ``Baton()``: a new, unposted :class:`BatonLike` (compiled: on a futex,
#: waiting with the GIL released; else :class:`PyBaton`).
Baton: Callable[[], BatonLike] = _ext.Baton if EXT else PyBaton
#: ``pass_baton(to, mine, timeout=-1)``: post ``to``, then wait on ``mine``
#: as ``mine.wait(timeout)`` does; compiled, the GIL is let go of before the
#: post, so the thread woken does not wake only to wait for the GIL.
pass_baton: Callable[[BatonLike, BatonLike, float], bool] = (
    _ext.pass_baton if EXT else py_pass_baton
)
