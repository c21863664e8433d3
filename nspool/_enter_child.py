"""The exec wrapper: run a command in a set whose user or time namespace
differs from the workers'.

A thread cannot join a user or time namespace other than its own, but a
single-threaded process may: so :func:`nspool._process.open_process_in` starts
this as a fresh interpreter (``python -I -S FILE ...``, from a worker that
has entered the set's pid namespace), and it joins the set, changes to the
working directory, and execs the command. It imports only the standard
library.

Usage: ``_enter_child.py FD:NSTYPE,... CWD COMMAND [ARG...]``.

* ``FD:NSTYPE,...``: the set's fds (inherited) and their ``CLONE_NEW*``
  types, in ``setns`` order; each is closed once joined.
* ``CWD``: the directory to change to after joining (a ``setns`` into a
  mount namespace moves the process to its root), or ``""`` for none.

Exit status: the command's; 126 if a ``setns`` fails, 127 if the directory
or the command cannot be used (each with a line on stderr), 2 for wrong
arguments.
"""

import ctypes
import os
import sys

_USAGE = (
    "usage: _enter_child.py FD:NSTYPE,... CWD COMMAND [ARG...]\n"
    "(a child program of nspool, started by it; not for direct use)"
)


def _specs(text: str) -> list[tuple[int, int]] | None:
    """``FD:NSTYPE,...`` as pairs, or None if malformed."""
    pairs: list[tuple[int, int]] = []
    for spec in filter(None, text.split(",")):
        fd, sep, nstype = spec.partition(":")
        try:
            pairs.append((int(fd), int(nstype)))
        except ValueError:
            return None
        if not sep:
            return None
    return pairs


def main(argv: list[str]) -> int:
    specs = _specs(argv[0]) if len(argv) >= 3 else None
    if specs is None:
        print(_USAGE, file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    for fd, nstype in specs:
        if libc.setns(fd, nstype) == -1:
            err = ctypes.get_errno()
            os.write(2, f"nspool: setns({nstype}): {os.strerror(err)}\n".encode())
            os._exit(126)
        os.close(fd)
    cwd, command = argv[1], argv[2:]
    try:
        if cwd:
            os.chdir(cwd)
        os.execvp(command[0], command)
    except OSError as exc:
        os.write(2, f"nspool: {exc.filename or command[0]}: {exc.strerror}\n".encode())
        os._exit(127)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
