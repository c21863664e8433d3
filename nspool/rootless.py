"""Rootless mode: the whole process moves into a user namespace of its own,
where it is root, so that sets, workers and pools work without privileges.

The kernel lets a process create a user namespace only while it has a
single thread, so :func:`enter_user_namespace` must be called first thing,
before anything (nspool, an event loop's executor, a library) starts a
thread. Afterwards the process holds every capability inside its new user
namespace, and any namespace it creates is owned by it.

The process's other namespaces (its "home" network, mount, ... namespaces)
still belong to the initial user namespace, where it has no capabilities: a
thread that leaves them can never ``setns`` back (``EPERM``). nspool designs
for that: a worker runs one call in a set and then exits instead of going
home, and a home thread that never leaves starts its successors (the cost,
a thread start per call, is measured in ``bench/rootless.py``); pool creators
make each set on a throwaway thread; ``call_inline``, which returns the
calling thread itself, is refused.
"""

from __future__ import annotations

import errno
import os

from . import _sys
from .errors import NamespaceError, UnsupportedKindError
from .kinds import Kind

__all__ = ["enter_user_namespace"]


def enter_user_namespace(*, uid: int = 0, gid: int = 0) -> None:
    """Move this process into a new user namespace in which it is ``uid``
    and ``gid`` (default root), mapped to its current effective ids.

    Runs on the calling thread, which must be the process's only one.
    Raises :class:`UnsupportedKindError` if the process has other threads
    (nothing is changed then), or :class:`NamespaceError` naming the file
    and syscall if the kernel refuses (for instance where unprivileged user
    namespaces are disabled).
    """
    threads = len(os.listdir(f"/proc/{os.getpid()}/task"))
    if threads > 1:
        raise UnsupportedKindError(
            errno.EINVAL,
            syscall="unshare",
            kind=Kind.USER,
            pid=os.getpid(),
            detail=f"the process already has {threads} threads; call "
            "enter_user_namespace() first thing, before anything starts a thread",
        )
    outside_uid, outside_gid = os.geteuid(), os.getegid()
    _sys.unshare(Kind.USER)
    pid = os.getpid()
    _sys.write_proc(f"/proc/{pid}/uid_map", f"{uid} {outside_uid} 1\n", kind=Kind.USER, pid=pid)
    gid_map = f"{gid} {outside_gid} 1\n"
    try:
        _sys.write_proc(f"/proc/{pid}/gid_map", gid_map, kind=Kind.USER, pid=pid)
    except NamespaceError as exc:
        # Without CAP_SETGID in the parent namespace the kernel takes a gid
        # map only once setgroups is denied.
        if exc.errno != errno.EPERM:
            raise
        _sys.write_proc(f"/proc/{pid}/setgroups", "deny", kind=Kind.USER, pid=pid)
        _sys.write_proc(f"/proc/{pid}/gid_map", gid_map, kind=Kind.USER, pid=pid)
