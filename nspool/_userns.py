"""Namespaces made in a helper process: sets that hold a user namespace.

The kernel refuses ``unshare(CLONE_NEWUSER)`` and ``setns`` into a user
namespace to a multi-threaded process, and namespaces nested in a user
namespace must be created by a task inside it. So such sets are made by a
small helper process, started with ``subprocess`` (an exec of a fresh
interpreter, never ``os.fork()`` of this threaded one), that joins the base
set, creates the namespaces, and waits while this process writes the id maps
from outside and opens the namespaces through ``/proc/HELPER/ns``. The
helper is the child program :mod:`nspool._userns_child`, started as
``python -I -S FILE CONFIG_JSON``.

The helper talks on its stdout, one line per step, each within
:data:`HELPER_WAIT` seconds (else it is killed and a :class:`NamespaceError`
names the step)::

    U            user namespace made: write the maps, then send one byte
    R INIT_PID   done (INIT_PID 0 without a pid namespace)
    E ERRNO SYSCALL KINDS [PATH]   a step failed; the helper exits

Without a pid namespace the helper exits when its stdin closes and is
reaped. With one, it stays for the set's life as the parent of the pid
namespace's init (PID 1 there, forked by the helper, which is
single-threaded); the init exits when the helper does (it watches a pipe
only the helper holds), which ends every process in that namespace.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import subprocess
import time
from collections.abc import Mapping, Sequence

from . import _native, _sys
from ._options import PROC_FLAGS, TMP_DATA, TMP_FLAGS, IdMap, SetOptions, map_text
from .errors import NamespaceError, from_errno
from .kinds import SETNS_ORDER, Kind

__all__ = ["HELPER_WAIT", "Helper", "make_in_helper", "write_id_maps"]

#: Seconds to wait for the helper at each step before giving up on it.
HELPER_WAIT = 10.0

#: The helper's program.
_CHILD = _sys.child_program("_userns_child.py")


class Helper:
    """A running helper process and the namespaces it made. ``pid`` is the
    helper's; ``init_pid`` that of the pid namespace's init, or 0."""

    def __init__(self, process: subprocess.Popen[bytes], init_pid: int) -> None:
        self.process = process
        self.init_pid = init_pid


def end_helper(process: subprocess.Popen[bytes]) -> None:
    """Close the helper's stdin, kill it and reap it. Never blocks for
    long: the helper is not a pid namespace's init, so its exit completes
    at once."""
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


def make_in_helper(
    kinds: Kind, base_fds: Mapping[Kind, int], options: SetOptions
) -> tuple[dict[Kind, int], Helper | None]:
    """Make namespaces of ``kinds``, nested in ``base_fds``, in a helper
    process; returns their fds and, for a pid namespace, the helper that
    keeps its init (else the helper has been reaped).

    Runs on the calling thread, which does not move. On failure the helper
    is killed and reaped and nothing stays open; the error names the
    syscall that failed and the helper's pid.
    """
    join = [(fd, int(kind)) for kind in SETNS_ORDER if (fd := base_fds.get(kind)) is not None]
    config = {
        "join": join,
        "user": int(kinds & Kind.USER),
        "first": int(kinds & ~(Kind.USER | Kind.PID | Kind.TIME)),
        "mnt": int(kinds & Kind.MNT),
        "uts": int(kinds & Kind.UTS),
        "propagation": _sys.MS_REC | _sys.MS_PRIVATE,
        "tmp_flags": TMP_FLAGS,
        "tmp_data": TMP_DATA,
        "time": int(kinds & Kind.TIME),
        "pid": int(kinds & Kind.PID),
        **options.for_helper(),
    }
    config["proc"] = PROC_FLAGS if options.private_proc else 0
    # The compiled pid init where it was built (else the helper's own code).
    config["init"] = _native.PIDINIT or ""
    try:
        process = subprocess.Popen(
            [_sys.python(), "-I", "-S", _CHILD, json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            pass_fds=[fd for fd, _ in join],
            start_new_session=True,
        )
    except OSError as exc:
        raise from_errno(
            exc.errno or errno.EIO, syscall="fork", kind=kinds, detail="starting the helper"
        ) from exc
    fds: dict[Kind, int] = {}
    try:
        if kinds & Kind.USER:
            _expect(process, kinds, "U", "making the user namespace")
            write_id_maps(process.pid, options.uid_map, options.gid_map)
            assert process.stdin is not None
            process.stdin.write(b"m")
            process.stdin.flush()
        init_pid = int(_expect(process, kinds, "R", "making the namespaces"))
        ns_dir = f"/proc/{process.pid}/ns"
        for kind in kinds.singles():
            fds[kind] = _sys.open_ns(f"{ns_dir}/{kind.for_children_name}", kind, pid=process.pid)
    except BaseException:
        _close(fds)
        end_helper(process)
        raise
    if init_pid:
        return fds, Helper(process, init_pid)
    end_helper(process)
    return fds, None


def _expect(process: subprocess.Popen[bytes], kinds: Kind, tag: str, step: str) -> str:
    """Read the helper's next line; its text after ``tag``. A failure
    line becomes the matching :class:`NamespaceError`, and so does no line
    within :data:`HELPER_WAIT` seconds (naming ``step``)."""
    assert process.stdout is not None
    raw = _read_line(process.stdout.fileno(), HELPER_WAIT)
    if raw is None:
        raise NamespaceError(
            errno.ETIMEDOUT,
            syscall="unshare",
            kind=kinds,
            pid=process.pid,
            detail=f"the helper process gave no answer within {HELPER_WAIT} s ({step})",
        )
    line = raw.decode().strip()
    if line.startswith(tag):
        return line[len(tag) :].strip()
    if line.startswith("E "):
        # "E ERRNO SYSCALL KINDS [PATH]"
        code, syscall, bits, path = [*line[2:].split(" ", 3), "", "", ""][:4]
        kind = Kind(int(bits) & int(Kind.all())) if bits.isdigit() else None
        raise from_errno(
            int(code) if code.isdigit() else errno.EIO,
            syscall=syscall,
            kind=kind or kinds,
            pid=process.pid,
            path=path or None,
        )
    raise NamespaceError(
        errno.EIO,
        syscall="unshare",
        kind=kinds,
        pid=process.pid,
        detail=f"the helper process ended early ({line or 'no answer'})",
    )


def _read_line(fd: int, timeout: float) -> bytes | None:
    """One line from the pipe ``fd`` (or what came before end of file), or
    None if it is not complete within ``timeout`` seconds. Reads a byte at
    a time, so that nothing after the line is taken from the pipe."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    line = b""
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not poller.poll(left * 1000):
            return None
        byte = os.read(fd, 1)
        if not byte:
            break
        line += byte
    return line


def write_id_maps(pid: int, uid_map: Sequence[IdMap], gid_map: Sequence[IdMap]) -> None:
    """Write the uid and gid maps of ``pid``'s user namespace (an empty map
    is left unwritten). The gid map needs ``setgroups`` denied first unless
    the writer may set groups in the parent user namespace: deny it then,
    and only then."""
    proc = f"/proc/{pid}"
    if uid_map:
        _sys.write_proc(f"{proc}/uid_map", map_text(uid_map), kind=Kind.USER, pid=pid)
    if not gid_map:
        return
    gid_text = map_text(gid_map)
    try:
        _sys.write_proc(f"{proc}/gid_map", gid_text, kind=Kind.USER, pid=pid)
    except NamespaceError as exc:
        if exc.errno != errno.EPERM:
            raise
        _sys.write_proc(f"{proc}/setgroups", "deny", kind=Kind.USER, pid=pid)
        _sys.write_proc(f"{proc}/gid_map", gid_text, kind=Kind.USER, pid=pid)


def _close(fds: Mapping[Kind, int]) -> None:
    for fd in fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
