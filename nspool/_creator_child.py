"""The creator process: makes namespace sets for a pool and passes their fds
back over a unix socket (``SCM_RIGHTS``), so that the kernel work of making
them (about half a millisecond a netns, not preempted on this kind of
kernel) holds none of the pool's GIL and runs on a CPU of its own.

It is started by :mod:`nspool._creator_proc` as a fresh interpreter
(``python -I -S FILE``, never ``os.fork()`` of the threaded parent) and
imports nothing of nspool: only the standard library, so that it starts in
milliseconds and reads top to bottom.

Usage: ``_creator_child.py SOCK_FD FLAGS NAMES LOOPBACK [CPU,...]``.

* ``SOCK_FD``: a ``SOCK_SEQPACKET`` socket; each message from the parent is
  a little-endian unsigned int, how many sets to make; end of file ends the
  process.
* ``FLAGS``: the ``CLONE_NEW*`` bits to unshare; ``NAMES``: the matching
  ``/proc/thread-self/ns`` names, comma separated, in the order their fds
  are sent.
* ``LOOPBACK``: ``1`` to bring ``lo`` up in each new netns.
* ``CPU,...``: the CPUs to run on (none: wherever the scheduler likes).

Each set is answered by one message: ``ok`` with the fds, or
``err ERRNO SYSCALL TEXT`` with none. Wrong arguments: a usage line on
stderr, status 2. Between sets the process waits in a
"limbo" set of its own, made once at start, so that it keeps no set it
handed out alive.
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import sys

_USAGE = (
    "usage: _creator_child.py SOCK_FD FLAGS NAMES LOOPBACK [CPU,...]\n"
    "(a child program of nspool, started by it; not for direct use)"
)
_REQUEST = struct.Struct("<I")
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ = struct.Struct("16sH22x")
_CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _Failed(Exception):
    def __init__(self, err: int, syscall: str) -> None:
        super().__init__(err, syscall)
        self.errno = err
        self.syscall = syscall


def _check(result: int, syscall: str) -> None:
    if result == -1:
        raise _Failed(ctypes.get_errno(), syscall)


def _loopback_up() -> None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            raw = fcntl.ioctl(sock, _SIOCGIFFLAGS, _IFREQ.pack(b"lo", 0))
            flags = _IFREQ.unpack(raw)[1]
            if not flags & _IFF_UP:
                fcntl.ioctl(sock, _SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | _IFF_UP))
    except OSError as exc:
        raise _Failed(exc.errno or 5, "ioctl(SIOCSIFFLAGS)") from exc


def _open_own(names: list[str]) -> list[int]:
    fds: list[int] = []
    try:
        for name in names:
            fds.append(os.open(f"/proc/thread-self/ns/{name}", os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        raise _Failed(exc.errno or 5, "open(/proc/thread-self/ns)") from exc
    return fds


def _back(limbo: list[int]) -> None:
    for fd in limbo:
        _check(_libc.setns(fd, 0), "setns")


def _make(flags: int, names: list[str], loopback: bool, limbo: list[int]) -> list[int]:
    """One set: unshare, open its namespaces, bring ``lo`` up, go back to
    limbo. Returns the fds; on failure closes what it opened."""
    _check(_libc.unshare(flags), "unshare")
    fds: list[int] = []
    try:
        fds = _open_own(names)
        if loopback and flags & _CLONE_NEWNET:
            _loopback_up()
    except BaseException:
        for fd in fds:
            os.close(fd)
        _back(limbo)
        raise
    _back(limbo)
    return fds


def _serve(sock: socket.socket, flags: int, names: list[str], loopback: bool) -> None:
    # Limbo: a set of our own, so that between sets we hold none of the pool's.
    _check(_libc.unshare(flags), "unshare")
    limbo = _open_own(names)
    while True:
        request = sock.recv(_REQUEST.size)
        if len(request) != _REQUEST.size:
            return
        (count,) = _REQUEST.unpack(request)
        for _ in range(count):
            try:
                fds = _make(flags, names, loopback, limbo)
            except _Failed as exc:
                text = os.strerror(exc.errno)
                sock.send(f"err {exc.errno} {exc.syscall} {text}".encode())
                continue
            try:
                sock.sendmsg(
                    [b"ok"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                )
            finally:
                for fd in fds:
                    os.close(fd)


def _arguments(argv: list[str]) -> tuple[socket.socket, int, list[str], bool, set[int]] | None:
    """The socket, flags, names, loopback and CPUs, or None if ``argv`` is
    not a valid command line (the fd must be a ``SOCK_SEQPACKET`` socket)."""
    if len(argv) not in (4, 5) or argv[3] not in ("0", "1") or not argv[0].isdecimal():
        return None
    try:
        flags = int(argv[1], 0)
        cpus = {int(cpu) for cpu in argv[4].split(",")} if len(argv) == 5 and argv[4] else set()
    except ValueError:
        return None
    names = argv[2].split(",")
    if flags <= 0 or not all(names):
        return None
    try:
        sock = socket.socket(fileno=int(argv[0]))
    except OSError:
        return None
    if sock.type != socket.SOCK_SEQPACKET:
        sock.detach()
        return None
    return sock, flags, names, argv[3] == "1", cpus


def main(argv: list[str]) -> int:
    args = _arguments(argv)
    if args is None:
        print(_USAGE, file=sys.stderr)
        return 2
    sock, flags, names, loopback, cpus = args
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        _serve(sock, flags, names, loopback)
    except _Failed as exc:
        # The limbo could not be made: say why once, then end.
        sock.send(f"err {exc.errno} {exc.syscall} {os.strerror(exc.errno)}".encode())
        return 1
    except (BrokenPipeError, ConnectionResetError):
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
