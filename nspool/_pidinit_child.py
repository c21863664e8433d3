"""The init of a pid namespace (its PID 1), as nspool starts it.

It reaps every child reparented to it, and exits when its stdin closes, i.e.
when the set releases it or the parent dies. Its exit makes the kernel kill
everything else in the namespace.

Started by :mod:`nspool._pidinit` as a fresh interpreter (``python -I -S
FILE PROC_FLAGS``, never an ``os.fork()`` of the threaded parent), from a
thread whose ``pid_for_children`` is the new namespace. It imports only the
standard library (``ctypes`` only to mount ``/proc``), so that it starts in
milliseconds. The user-namespace helper (:mod:`nspool._userns_child`)
imports it and runs :func:`be_init` in the init it forks.

Usage: ``_pidinit_child.py PROC_FLAGS|-``.

* ``PROC_FLAGS``: first mount a ``/proc`` of the namespace on ``/proc`` with
  these mount flags (a private ``/proc`` must be mounted from inside the pid
  namespace) and answer on stdout: ``ok``, or the errno of the mount, and
  then exit 1. ``-``: mount nothing, answer nothing.

``SIGINT`` is ignored. Wrong arguments: a usage line on stderr, status 2.
"""

import os
import signal
import sys

_USAGE = (
    "usage: _pidinit_child.py PROC_FLAGS|-\n"
    "(a child program of nspool, started by it; not for direct use)"
)


def reap(_signum: int, _frame: object) -> None:
    """SIGCHLD: reap every finished child."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def be_init(life: int, ready: int | None, proc_flags: int | None) -> int:
    """Be PID 1 until ``life`` reads end of file; the exit status.

    ``proc_flags``: first mount ``/proc`` with them. ``ready``: an fd to
    answer on, ``ok`` or the mount's errno, then closed."""
    signal.signal(signal.SIGCHLD, reap)
    answer = b"ok"
    if proc_flags is not None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.mount.argtypes = (ctypes.c_char_p,) * 3 + (ctypes.c_ulong, ctypes.c_void_p)
        if libc.mount(b"proc", b"/proc", b"proc", proc_flags, None) == -1:
            answer = str(ctypes.get_errno()).encode()
    if ready is not None:
        os.write(ready, answer)
        os.close(ready)
    if answer != b"ok":
        return 1
    while os.read(life, 64):
        pass
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not (argv[0] == "-" or argv[0].isdecimal()):
        print(_USAGE, file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if argv[0] == "-":
        return be_init(0, None, None)
    return be_init(0, 1, int(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
