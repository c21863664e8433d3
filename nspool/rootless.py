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
for that:

- a worker that ran a call in a set moves on into its executor's *limbo*,
  empty net, uts, ipc and cgroup namespaces made for the purpose, so that
  the idle thread keeps no set alive; from then on it serves only sets that
  hold every kind it has left home in (a pool's sets all do). A worker
  that entered a mount or pid namespace exits after its call instead;
- new worker threads are started by a *spawner* thread that never leaves
  home, since a thread begins in the namespaces of the one that starts it;
- pool creators wait in a limbo of their own between sets;
- ``call_inline``, which would strand the calling thread, is refused.

``bench/rootless.py`` measures what this costs against a process whose
workers can go home.
"""

from __future__ import annotations

import errno
import os

from . import _sys
from ._userns import write_id_maps
from .errors import UnsupportedKindError
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
    write_id_maps(os.getpid(), [(uid, outside_uid, 1)], [(gid, outside_gid, 1)])
