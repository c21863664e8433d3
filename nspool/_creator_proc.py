"""A pool's creator process, seen from the pool: start it, ask it for sets,
receive their fds, end it.

The process itself is :mod:`nspool._creator_child`, a fresh interpreter
started with ``subprocess`` (never ``os.fork()`` of this threaded one). Its
sets arrive as fds over a ``SOCK_SEQPACKET`` socket (``SCM_RIGHTS``, received
close-on-exec), each checked with ``NS_GET_NSTYPE`` before it is used.

Only kinds a process can make and leave again are made there
(:data:`PROCESS_KINDS`); sets with a user, pid, mnt or time namespace, or
with options that need this process's help, are made in this process.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import subprocess
from collections.abc import Iterable

from . import _sys
from .errors import NamespaceError, from_errno
from .kinds import Kind

__all__ = ["PROCESS_KINDS", "RECEIVE_TIMEOUT", "CreatorLostError", "CreatorProcess"]

#: Kinds a creator process makes: those it can unshare and leave again.
PROCESS_KINDS = Kind.NET | Kind.UTS | Kind.IPC | Kind.CGROUP
#: Seconds to wait for one set from a creator process before it is taken
#: as hung, killed and replaced (a netns takes about a millisecond).
RECEIVE_TIMEOUT = 10.0
#: Seconds a closing creator process gets to exit before it is killed.
EXIT_TIMEOUT = 2.0

_REQUEST = struct.Struct("<I")
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_creator_child.py")


class CreatorLostError(NamespaceError):
    """A pool's creator process died, hung or broke its protocol. The pool
    replaces it and counts the loss in ``stats().creator_losses``."""


class CreatorProcess:
    """One creator process for sets of ``kinds`` (within
    :data:`PROCESS_KINDS`), pinned to ``cpus`` when given, bringing ``lo``
    up in each new netns when ``loopback``.

    Used by one pool thread at a time; :meth:`close` may be called from any
    thread and makes a blocked :meth:`receive` fail at once.
    """

    def __init__(self, kinds: Kind, *, cpus: Iterable[int] = (), loopback: bool = True) -> None:
        if kinds & ~PROCESS_KINDS:
            raise ValueError(f"a creator process cannot make {kinds & ~PROCESS_KINDS}")
        self.kinds = kinds
        self._singles = list(kinds.singles())
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            names = ",".join(k.proc_name for k in self._singles)
            argv = [
                _sys.python(),
                "-I",
                "-S",
                _CHILD,
                str(theirs.fileno()),
                str(int(kinds)),
                names,
                "1" if loopback else "0",
                ",".join(str(cpu) for cpu in sorted(cpus)),
            ]
            self._process = subprocess.Popen(
                argv, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(RECEIVE_TIMEOUT)
        self._sock = ours

    @property
    def pid(self) -> int:
        return self._process.pid

    def request(self, count: int) -> None:
        """Ask for ``count`` more sets; each comes back through :meth:`receive`."""
        try:
            self._sock.send(_REQUEST.pack(count))
        except OSError as exc:
            raise self._lost(f"cannot send to it: {exc}") from exc

    def receive(self) -> dict[Kind, int]:
        """The next set's fds (caller owns them), or the error that creating
        it raised there (:class:`NamespaceError`), or
        :class:`CreatorLostError` if the process is gone."""
        size = socket.CMSG_SPACE(len(self._singles) * 4)
        try:
            data, ancdata, flags, _ = self._sock.recvmsg(256, size, socket.MSG_CMSG_CLOEXEC)
        except TimeoutError as exc:
            raise self._lost(f"no set within {RECEIVE_TIMEOUT} s") from exc
        except OSError as exc:
            raise self._lost(f"cannot receive from it: {exc}") from exc
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
        if data == b"ok" and len(fds) == len(self._singles) and not flags & socket.MSG_CTRUNC:
            return self._checked(fds)
        _close(fds)
        if data.startswith(b"err "):
            _, err, syscall, text = data.decode(errors="replace").split(" ", 3)
            raise from_errno(
                int(err),
                syscall=syscall,
                kind=self.kinds,
                pid=self.pid,
                detail=f"{text}, in the pool's creator process",
            )
        raise self._lost("it closed its socket" if not data else f"unexpected reply {data!r}")

    def _checked(self, fds: list[int]) -> dict[Kind, int]:
        try:
            for kind, fd in zip(self._singles, fds, strict=True):
                if _sys.nstype(fd) != kind:
                    raise self._lost(f"fd {fd} is not a {kind} namespace")
        except BaseException:
            _close(fds)
            raise
        return dict(zip(self._singles, fds, strict=True))

    def _lost(self, why: str) -> CreatorLostError:
        self.close()
        status = self._process.returncode
        how = "" if status is None else f" (exit status {status})"
        return CreatorLostError(
            errno.ECHILD,
            syscall="recvmsg",
            kind=self.kinds,
            pid=self.pid,
            detail=f"the pool's creator process is lost{how}: {why}",
        )

    def close(self) -> None:
        """End the process (it exits when its socket closes) and reap it;
        killed if it does not exit within :data:`EXIT_TIMEOUT`. Idempotent."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        try:
            self._process.wait(EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _close(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
