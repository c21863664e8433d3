"""Making new namespaces without moving the calling thread.

:func:`create` makes a set on a short-lived helper thread, which is thrown
away afterwards (so the caller's own namespaces are untouched: the bug of
vishvananda/netns#50 and #79 cannot happen), or, for a set that holds a
user namespace, in a helper process (a threaded process can neither create
nor join one). ``NamespaceSet.unshare``, the pool's creator threads and
the workers' limbo all make their sets here.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from . import _sys
from ._handle import SetHandle, close_fds, dup_fds
from ._options import SetOptions
from ._pidinit import PidInit
from ._thread_ns import THREAD_NS_DIR, enter
from ._userns import make_in_helper
from .errors import UnsupportedKindError, outcome
from .kinds import Kind

__all__ = ["NEW_MOUNT_PROPAGATION", "NO_OPTIONS", "create", "make_namespaces", "on_helper_thread"]

_T = TypeVar("_T")

#: Propagation given to a new mount namespace's mounts, as ``unshare(1)``
#: does by default: nothing mounted inside reaches the host or back.
NEW_MOUNT_PROPAGATION = _sys.MS_REC | _sys.MS_PRIVATE

#: A new set with no options.
NO_OPTIONS = SetOptions()


def create(
    kinds: Kind,
    base: SetHandle | None = None,
    hook: Callable[[SetHandle], object] | None = None,
    *,
    options: SetOptions = NO_OPTIONS,
) -> SetHandle:
    """Make new namespaces of ``kinds`` (nested in ``base`` if given: a new
    mount namespace is a copy of its, new namespaces are owned by its user
    namespace, and the result also holds its other kinds) on a throwaway
    helper thread, or in a helper process if the set holds a user namespace.

    ``hook(handle)`` runs on that thread while it is still inside the new
    namespaces (the pool's after-create hook, with no extra thread hop); for
    a user set, after the thread has entered all but its user and time
    namespaces. If the hook raises, the set is closed and the error
    propagates. Blocks the calling thread; on failure nothing is left behind.
    """
    if base is not None and kinds & Kind.PID and base.kinds & Kind.PID:
        raise UnsupportedKindError(
            errno.EINVAL,
            syscall="unshare",
            kind=Kind.PID,
            detail="a new pid namespace cannot be made from a thread that "
            "has joined another pid namespace",
        )
    borrowed: contextlib.AbstractContextManager[dict[Kind, int]] = (
        base.borrow() if base is not None else contextlib.nullcontext({})
    )
    with borrowed as base_fds:
        # What the new set shares with the base: its own copies of those fds.
        shared = dup_fds({k: fd for k, fd in base_fds.items() if not k & kinds})
        base_init = base.init if base is not None and Kind.PID in shared else None
        # A thread of a threaded process can neither create nor join a
        # user namespace: such sets are made in a helper process.
        in_helper = bool(kinds & Kind.USER) or Kind.USER in base_fds

        def work() -> SetHandle:
            init: PidInit | None
            try:
                if in_helper:
                    new_fds, helper = make_in_helper(kinds, base_fds, options)
                    init = None if helper is None else PidInit(helper.process, pid=helper.init_pid)
                else:
                    new_fds, init = make_namespaces(kinds, base_fds, options)
            except BaseException:
                close_fds(shared.values())
                raise
            made = SetHandle(
                {**shared, **new_fds},
                init=init if init is not None or base_init is None else base_init.acquire(),
            )
            if hook is not None:
                try:
                    if in_helper:
                        # This thread made nothing itself: it enters what
                        # a thread can (all but user and time).
                        with made.borrow() as fds:
                            enter(fds, skip=Kind.USER | Kind.TIME)
                    hook(made)
                except BaseException:
                    made.close()
                    raise
            return made

        return on_helper_thread(work, SetHandle.close, name="nspool-unshare")


def make_namespaces(
    kinds: Kind, base_fds: Mapping[Kind, int], options: SetOptions
) -> tuple[dict[Kind, int], PidInit | None]:
    """On a helper thread (which is thrown away afterwards): enter
    ``base_fds``, create namespaces of ``kinds``, apply ``options``, and
    open them.

    A time namespace is created last, after the pid init started, so that
    the init stays in the parent time namespace: the new one's clock offsets
    can be set only while no process is in it.
    """
    ns_dir = os.open(THREAD_NS_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fds: dict[Kind, int] = {}
    init: PidInit | None = None
    try:
        # A thread cannot setns into a time namespace once the process has
        # threads; it does not need to, only its children do.
        enter(base_fds, skip=Kind.TIME)
        first = kinds & ~Kind.TIME
        if first:
            _sys.unshare(first)
        if kinds & Kind.MNT:
            _sys.mount(None, "/", None, NEW_MOUNT_PROPAGATION, kind=Kind.MNT)
        options.apply_on_thread(kinds)
        if kinds & Kind.PID:
            init = PidInit.start(mount_proc=options.private_proc)
        if kinds & Kind.TIME:
            _sys.unshare(Kind.TIME)
            # Only /proc/TID names a thread's own offsets file (not thread-self).
            options.write_clock_offsets(threading.get_native_id())
        for kind in kinds.singles():
            fds[kind] = _sys.open_ns(kind.for_children_name, kind, dir_fd=ns_dir)
    except BaseException:
        close_fds(fds.values())
        if init is not None:
            init.release()
        raise
    finally:
        os.close(ns_dir)
    return fds, init


def on_helper_thread(work: Callable[[], _T], cleanup: Callable[[_T], None], *, name: str) -> _T:
    """Run ``work`` on a new thread that exits afterwards, and return its
    result; any namespace change ``work`` makes dies with that thread.

    Blocks the calling thread until the helper ends. If the wait is
    interrupted (``KeyboardInterrupt``), the helper finishes on its own and
    hands its result to ``cleanup`` instead, so nothing it made leaks.
    """
    lock = threading.Lock()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # delivered to the caller below
            with lock:
                box["error"] = exc
            return
        with lock:
            abandoned = box.get("abandoned", False)
            if not abandoned:
                box["result"] = result
        if abandoned:
            cleanup(result)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        thread.join()
    except BaseException:
        with lock:
            box["abandoned"] = True
            finished = "result" in box
        if finished:
            cleanup(box.pop("result"))
        raise
    result: _T = outcome(box.pop("result", None), box.pop("error", None))
    return result
