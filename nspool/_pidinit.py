"""The parent's side of a pid namespace's init: :class:`PidInit`.

The init is the compiled helper's small init (:data:`nspool._native.PIDINIT`,
a few hundred kilobytes of memory) when it was built, else the child program
:mod:`nspool._pidinit_child`, a fresh interpreter started as ``python -I -S
FILE PROC_FLAGS|-``. Both take the same argument and behave alike: it reaps orphans
reparented to it, and exits when its stdin closes, i.e. when the set
releases it or this process dies. Its exit makes the kernel kill everything
else in the namespace. With ``PROC_FLAGS`` it first mounts ``/proc`` for its
namespace (a private ``/proc`` must be mounted from inside the pid
namespace) and reports on stdout: ``ok``, or the errno of the mount.

For a set made in a helper process (:mod:`nspool._userns`) the init is the
helper's child, and a :class:`PidInit` holds the helper instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import subprocess
import threading
import time

from . import _native, _sys
from ._options import PROC_FLAGS
from .errors import from_errno
from .kinds import Kind

__all__ = ["INIT_ANSWER_TIMEOUT", "INIT_REAP_WAIT", "PidInit", "reap_finished_inits"]

#: The init's program.
_CHILD = _sys.child_program("_pidinit_child.py")

#: Seconds :meth:`PidInit.start` waits for an init that mounts ``/proc`` to
#: answer (it takes milliseconds; the bound is for an init that hangs).
INIT_ANSWER_TIMEOUT = 10.0
#: Seconds ``close()`` waits for a pid namespace's init to be reaped before
#: leaving it to be reaped later (see :meth:`PidInit.release`).
INIT_REAP_WAIT = 0.2
_unreaped: list[subprocess.Popen[bytes]] = []
_unreaped_lock = threading.Lock()


def reap_finished_inits() -> None:
    """Reap inits whose exit has completed since they were left pending."""
    with _unreaped_lock:
        _unreaped[:] = [p for p in _unreaped if p.poll() is None]


class PidInit:
    """The minimal init process that keeps a fresh pid namespace usable.

    A new pid namespace has no id until its first process exists, and once
    that process (its PID 1) exits every later fork into it fails with
    ``ENOMEM``. So a set that creates a pid namespace starts this init in it
    and keeps it for the set's life; sets that share the namespace (``dup``,
    nested sets) share the init by reference count. Releasing the last
    reference ends the init, and with it every process in the namespace.
    """

    def __init__(self, process: subprocess.Popen[bytes], *, pid: int | None = None) -> None:
        """``process`` is the init, or (for a set made in a helper process,
        ``pid`` given) the helper that is the init's parent: the init ends
        when the helper does."""
        self._process = process
        self._pid = process.pid if pid is None else pid
        self._refs = 1
        self._lock = threading.Lock()

    @property
    def pid(self) -> int:
        """The init's pid as this process sees it."""
        return self._pid

    def alive(self) -> bool:
        """Whether the init still runs (a zombie counts as gone: its pid
        namespace takes no new process once PID 1 has exited)."""
        if self._pid == self._process.pid:
            return self._process.poll() is None
        try:
            with open(f"/proc/{self._pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in (b"Z", b"X", b"x")

    @classmethod
    def start(cls, *, mount_proc: bool = False) -> PidInit:
        """Start the init from the calling thread, whose ``pid_for_children``
        must be the new pid namespace. Not ``os.fork()``: ``subprocess``
        execs at once, so no lock of this threaded interpreter is inherited.

        ``mount_proc``: the init mounts a ``/proc`` of its pid namespace on
        ``/proc`` (the calling thread must be in a new mount namespace),
        and this waits until it has, :data:`INIT_ANSWER_TIMEOUT` seconds at
        most: an init that does not answer by then is ended, and the error
        is ``ETIMEDOUT``.

        The init is the compiled one if :mod:`nspool._native` found it
        (read at each start, so tests can force either), else the Python one.
        """
        arg = str(PROC_FLAGS) if mount_proc else "-"
        argv = (
            [_native.PIDINIT, arg] if _native.PIDINIT else [_sys.python(), "-I", "-S", _CHILD, arg]
        )
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE if mount_proc else subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise from_errno(
                exc.errno or errno.EIO, syscall="fork", kind=Kind.PID, detail="starting init"
            ) from exc
        init = cls(process)
        if mount_proc:
            assert process.stdout is not None
            with process.stdout:
                answer = _read_answer(process.stdout.fileno(), INIT_ANSWER_TIMEOUT)
            if answer != b"ok":
                init.release()
                code, detail = errno.EIO, "private /proc"
                if answer is None:
                    code = errno.ETIMEDOUT
                    detail = (
                        f"the init (pid {process.pid}) did not answer within "
                        f"{INIT_ANSWER_TIMEOUT} s; it was ended"
                    )
                elif answer.isdigit():
                    code = int(answer)
                raise from_errno(code, syscall="mount", kind=Kind.PID, path="/proc", detail=detail)
        return init

    def acquire(self) -> PidInit:
        with self._lock:
            self._refs += 1
        return self

    def release(self) -> None:
        """Drop one reference; the last one ends the init and reaps it."""
        with self._lock:
            self._refs -= 1
            if self._refs:
                return
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()
        # An init's exit completes only once every process of its namespace
        # is reaped, and those may be our own children that the caller has
        # yet to wait for: do not block on it, reap it later instead.
        try:
            self._process.wait(timeout=INIT_REAP_WAIT)
        except subprocess.TimeoutExpired:
            with _unreaped_lock:
                _unreaped.append(self._process)
        reap_finished_inits()


def _read_answer(fd: int, timeout: float) -> bytes | None:
    """What the init writes on ``fd`` until it closes it, or ``None`` if
    that takes longer than ``timeout`` seconds."""
    chunks: list[bytes] = []
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            return None
        chunk = os.read(fd, 64)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
