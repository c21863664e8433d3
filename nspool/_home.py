"""Home: where nspool's own threads live between calls, and how they get back.

Owns :class:`Home` (the namespaces a ``Workers``'s threads, or a pool's
creator thread, return to: an fd and inode per kind, the root directory,
the *anchor* and the *spawner* threads), the process's *limbo* set for
rootless mode (:func:`acquire_limbo`), the one routine that takes a thread
back by fd and checks every link (:meth:`Home.go_back`), and two pieces of
process state that outlive any one thread: the "tainted thread" marker and
the closes left by threads that lost the process's fd table.

Guarantees and the reasons for them:

* Every worker thread begins at home: a new thread inherits its creator's
  namespaces, fs and fd table, and the creator may be inside a set (a
  callable that submits more work) or tainted (``unshare(CLONE_FS)``);
  such a thread, and every thread in rootless mode, is started by a home
  thread instead (:meth:`Home.start`).
* Going home is all or nothing where the kernel allows it: one ``setns``
  on the anchor's pidfd (``PIDFD_THREAD``, Linux 6.9+) for every
  restorable kind, whatever the callable did to them.
* A thread that leaves home is checked against home by reading its links
  (:func:`check_links`); a mismatch raises :class:`Stranded`: the thread
  must never take another call.
* In rootless mode no thread can come home (home belongs to an ancestor
  user namespace); one limbo set of empty namespaces per process is where
  they wait, so that an idle thread keeps no set alive and a process with
  a small netns quota spends one netns on it, not one per executor.
* After ``os.fork()`` the child gets fresh locks and no limbo: a parent's
  thread may have held them at the fork.
"""

from __future__ import annotations

import errno
import os
import queue
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future

from . import _sys
from ._create import create
from ._handle import SetHandle, close_fds
from ._thread_ns import (
    CHECKED,
    MNT_BITS,
    THREAD_NS_DIR,
    ThreadLinks,
    open_thread_ns,
    same_file,
    setns_for,
)
from .errors import NamespaceError
from .kinds import Kind

__all__ = [
    "LIMBO_BITS",
    "LIMBO_KINDS",
    "PROCESS_HOME",
    "FilesLost",
    "Home",
    "Spent",
    "Stranded",
    "acquire_limbo",
    "check_links",
    "close_orphans",
    "follow_process_cwd",
    "is_tainted",
    "leave_to_orphans",
    "mark_tainted",
    "release_limbo",
]

#: Kinds a worker that cannot go home (rootless mode) parks in the process's
#: *limbo* set between calls instead: empty namespaces of nspool's own, so
#: that an idle thread keeps no set alive. A worker that has left home in
#: another kind (mnt, pid) exits after its call instead.
LIMBO_KINDS = Kind.NET | Kind.UTS | Kind.IPC | Kind.CGROUP
LIMBO_BITS = int(LIMBO_KINDS)

#: The process's home namespaces, opened once at import (normally on the
#: main thread, before any set is entered): the default executor's home.
PROCESS_HOME: dict[Kind, int] = {k: open_thread_ns(k) for k in CHECKED}


class Stranded(Exception):
    """The calling thread is not where it must be, or cannot get there, or
    cannot tell: it must not be reused (a worker is discarded, a creator
    thread stops making sets)."""


class FilesLost(Stranded):
    """The thread no longer shares the process's fd table: its closes must
    be done by another thread (:func:`leave_to_orphans`)."""


class Spent(Exception):
    """A thread that cannot go home (rootless mode) has left it in a kind
    its limbo does not cover: it exits, healthy, and a fresh thread takes
    over."""


# -- the tainted-thread marker ------------------------------------------------------

#: ``on`` in a thread found with its own fs or fd table.
_tainted = threading.local()


def mark_tainted() -> None:
    """The calling thread no longer shares the process's fs or fd table:
    threads it starts would inherit them, so home threads start them."""
    _tainted.on = True


def is_tainted() -> bool:
    """Whether :func:`mark_tainted` was called on the calling thread."""
    return bool(getattr(_tainted, "on", False))


# -- closes left by threads that lost the process's fd table ------------------------

_orphans: list[Callable[[], None]] = []
_orphans_lock = threading.Lock()


def leave_to_orphans(*closes: Callable[[], None]) -> None:
    """For a thread with a private fd table (``unshare(CLONE_FILES)``): its
    closes would reach only that table, so the next thread that shares the
    process's does them (:func:`close_orphans`)."""
    with _orphans_lock:
        _orphans.extend(closes)


def close_orphans() -> None:
    """Do the closes :func:`leave_to_orphans` left; call on a thread that
    shares the process's fd table."""
    if not _orphans:  # read without the lock: a hint
        return
    with _orphans_lock:
        todo = list(_orphans)
        _orphans.clear()
    for close in todo:
        close()


# -- the process's limbo ----------------------------------------------------------

_limbo_lock = threading.Lock()
_limbo: SetHandle | None = None
_limbo_users = 0


def acquire_limbo() -> SetHandle:
    """The process's one limbo set (made on first use, while anything
    uses it): one netns and friends, not one per executor or creator, since
    a process in its own user namespace may have a small netns quota."""
    global _limbo, _limbo_users
    with _limbo_lock:
        if _limbo is None:
            _limbo = create(LIMBO_KINDS)
        _limbo_users += 1
        return _limbo


def release_limbo(limbo: SetHandle) -> None:
    """Drop one use of ``limbo``, which :func:`acquire_limbo` returned; the
    last closes it. A limbo of the parent, released in a forked child, is
    left alone: its users stayed in the parent."""
    global _limbo, _limbo_users
    with _limbo_lock:
        if limbo is not _limbo:
            return
        _limbo_users -= 1
        last = _limbo_users == 0
        if last:
            _limbo = None
    if last:
        limbo.close()


def _after_fork_in_child() -> None:
    """A parent's thread may have held these locks at the fork, and the
    limbo's users are threads that stayed in the parent."""
    global _limbo, _limbo_users, _limbo_lock, _orphans_lock
    _limbo_lock, _orphans_lock = threading.Lock(), threading.Lock()
    _limbo, _limbo_users = None, 0


os.register_at_fork(after_in_child=_after_fork_in_child)


def check_links(
    links: ThreadLinks, kinds: Iterable[Kind], expected: Mapping[Kind, int], when: str
) -> None:
    """Read the calling thread's links of ``kinds`` and compare them with
    ``expected``. Raises :class:`Stranded` if one differs or cannot be read."""
    try:
        actual = links.read(kinds)
    except OSError as exc:
        raise Stranded(f"cannot read its namespaces {when}: {exc}") from exc
    moved = [str(k) for k, ino in actual.items() if ino != expected[k]]
    if moved:
        raise Stranded(f"in unexpected {', '.join(moved)} namespaces {when}")


class Home:
    """The namespaces a ``Workers``'s threads live in between calls: an fd
    and inode number per kind, the root directory, and the *anchor*.

    The anchor is an idle thread that never leaves home. A pidfd for that one
    thread (``PIDFD_THREAD``, Linux 6.9+) lets a worker go home in a single
    ``setns`` for every restorable kind at once, all or nothing, whatever the
    callable did to them; on older kernels workers go home kind by kind.
    Owned by the ``Workers`` and closed when its last thread is gone.
    """

    def __init__(
        self,
        use_anchor: bool,
        *,
        keep_gil: bool = True,
        spawner: bool = True,
        process_home: bool = False,
    ) -> None:
        #: Whether its workers' syscalls keep the GIL (``KEEP_GIL``, as it
        #: was when the executor was made), and the ``setns`` that says.
        self.keep_gil = keep_gil
        self.setns = setns_for(keep_gil)
        self._users = 1
        self._users_lock = threading.Lock()
        #: The task a worker's fs and fd table are compared with (``kcmp``):
        #: the process's main thread, whose fs and files every thread shares.
        self.pid = os.getpid()
        self.fds: dict[Kind, int] = {}
        self.root = -1
        self.anchor_fd = -1
        self._anchor: threading.Thread | None = None
        self._spawner: threading.Thread | None = None
        self._to_start: queue.SimpleQueue[tuple[threading.Thread, Future[None]] | None] = (
            queue.SimpleQueue()
        )
        #: Where threads that cannot come home wait between calls.
        self.limbo: SetHandle | None = None
        self.limbo_fds: dict[Kind, int] = {}
        self.limbo_ids: dict[Kind, int] = {}
        try:
            for kind in CHECKED:
                self.fds[kind] = (
                    os.dup(PROCESS_HOME[kind]) if process_home else open_thread_ns(kind)
                )
            #: Whether a thread that left home can ``setns`` back. Not in
            #: rootless mode: home then belongs to an ancestor user namespace,
            #: in which this process has no capabilities.
            self.returnable = all(_sys.may_return(fd) for fd in self.fds.values())
            if not self.returnable:
                use_anchor = False
                self.limbo = acquire_limbo()
                with self.limbo.borrow() as limbo_fds:
                    self.limbo_fds = dict(limbo_fds)
                    self.limbo_ids = dict(self.limbo.ids_of_acquired())
                if spawner:
                    self._start_spawner()
            self.root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self.root_stat = os.fstat(self.root)
            # A forced return sets pid_for_children to the anchor's own pid
            # namespace: usable only if home's pid_for_children is that one.
            own_pid = os.stat(os.path.join(THREAD_NS_DIR, "pid")).st_ino
            # The anchor starts where this thread is: only if that is home
            # (the default executor may be first reached from inside a set).
            at_home = all(
                os.stat(os.path.join(THREAD_NS_DIR, k.for_children_name)).st_ino
                == os.fstat(self.fds[k]).st_ino
                for k in CHECKED
            )
            if use_anchor and at_home and own_pid == os.fstat(self.fds[Kind.PID]).st_ino:
                self._start_anchor()
            #: Whether every thread is started by the spawner (rootless).
            self.always_spawn = self._spawner is not None
            if spawner and self._anchor is None and self._spawner is None:
                # Starts threads for workers that lost the process's fs or
                # files (the anchor does, where there is one).
                self._start_spawner()
        except BaseException:
            self.close()
            raise
        self.ids = {k: os.fstat(fd).st_ino for k, fd in self.fds.items()}
        # The user namespace is known but never checked: a thread of a
        # threaded process cannot leave it.
        self.ids[Kind.USER] = os.stat(os.path.join(THREAD_NS_DIR, "user")).st_ino

    # -- going back -----------------------------------------------------------------

    def go_back(
        self,
        links: ThreadLinks,
        kinds: Iterable[Kind],
        *,
        limbo: bool | None = None,
        own_fs: bool = False,
        check: Iterable[Kind] = CHECKED,
        when: str = "after going home",
    ) -> None:
        """Move the calling thread back by fd in ``kinds`` (in that order),
        then check every link of ``check`` (default: every kind) against
        where it must be: the kinds moved against the place they went back
        to, the others against home. ``links`` reads the calling thread.

        The place is home, or limbo where home cannot be reached (rootless
        mode); ``limbo`` forces one or the other. A mount namespace needs a
        thread with its own fs (``own_fs``, else ``unshare(CLONE_FS)`` first)
        and resets its cwd and root, which are put back (home's root, the
        process's cwd).

        The one "go home and check" of nspool's threads: a worker's (when it
        cannot go home through the anchor) and the pool's creator thread's,
        which should use it instead of its own copy. Raises ``OSError`` if
        a ``setns`` fails and :class:`Stranded` if a link is wrong or cannot
        be read: either way the thread must not be reused.
        """
        to_limbo = not self.returnable if limbo is None else limbo
        fds = self.limbo_fds if to_limbo else self.fds
        ids = self.limbo_ids if to_limbo else self.ids
        expected = dict(self.ids)
        for kind in kinds:
            if kind is Kind.MNT and not own_fs:
                _sys.unshare_fs()
                own_fs = True
            self.setns(fds[kind], kind)
            expected[kind] = ids[kind]
            if kind is Kind.MNT:
                self.restore_fs()
        check_links(links, check, expected, when)

    def to_limbo(self, here: dict[Kind, int]) -> int:
        """Rootless mode, after a call: move the calling thread, which is in
        ``here`` (updated), out of the set's namespaces into limbo, so that
        the idle thread keeps no set alive. Returns the kinds it is in limbo
        in; raises :class:`Spent` if it left home in a kind limbo does not
        cover, :class:`Stranded` if it cannot move."""
        strayed = 0
        for kind in CHECKED:
            where = here[kind]
            if where == self.ids[kind]:
                continue
            if not int(kind) & LIMBO_BITS:
                raise Spent
            if where != self.limbo_ids[kind]:
                try:
                    self.setns(self.limbo_fds[kind], kind)
                except OSError as exc:
                    raise Stranded(f"cannot leave the set: {exc}") from exc
                here[kind] = self.limbo_ids[kind]
            strayed |= int(kind)
        return strayed

    def check_shared(self, tid: int, kind_bits: int, own_fs: bool, when: str) -> None:
        """Thread ``tid`` (the caller, after a call in a set of
        ``kind_bits``) must still share the process's fd table and, unless
        it has its own for a mount namespace (``own_fs``), its fs (cwd,
        root, umask): a callable that did ``unshare(CLONE_FILES)`` or
        ``unshare(CLONE_FS)`` (and ``chroot``, ``chdir``) is caught. One
        ``kcmp`` each (about a microsecond); a thread with its own fs has
        its root compared instead, unless it is in a set's mount namespace
        (going home resets both). Raises :class:`FilesLost` or
        :class:`Stranded`, and marks the thread tainted."""
        pid = self.pid
        try:
            files = _sys.kcmp(pid, tid, _sys.KCMP_FILES)
            if kind_bits & MNT_BITS:
                fs = 0
            elif own_fs:
                fs = 0 if same_file(os.stat("/"), self.root_stat) else 1
            else:
                fs = _sys.kcmp(pid, tid, _sys.KCMP_FS)
        except OSError as exc:
            raise Stranded(f"cannot compare its fs and files with pid {pid} {when}: {exc}") from exc
        if files or fs:
            # Threads it starts would share its fs and files: a home thread
            # starts them (see start).
            mark_tainted()
        if files:
            raise FilesLost(
                f"no longer shares the fd table of pid {pid} {when} "
                "(the callable called unshare(CLONE_FILES))"
            )
        if fs:
            raise Stranded(
                f"no longer shares the cwd and root of pid {pid} {when} "
                "(the callable called unshare(CLONE_FS), chroot or chdir)"
            )

    def restore_fs(self) -> None:
        """``setns`` into a mount namespace resets root and cwd to that
        namespace's root; put back the home root and the process's cwd."""
        os.fchdir(self.root)
        os.chroot(".")
        follow_process_cwd()

    # -- starting threads at home ---------------------------------------------------

    def _start_anchor(self) -> None:
        started = threading.Event()
        tid: list[int] = []

        def stay_home() -> None:
            tid.append(threading.get_native_id())
            started.set()
            self._serve_starts()

        self._anchor = threading.Thread(target=stay_home, name="nspool-home", daemon=True)
        self._anchor.start()
        started.wait()
        try:
            self.anchor_fd = _sys.pidfd_open(tid[0], _sys.PIDFD_THREAD)
        except NamespaceError as exc:
            if exc.errno != errno.EINVAL:  # EINVAL: no PIDFD_THREAD before 6.9
                raise
            self._stop_anchor()

    def _serve_starts(self) -> None:
        """The loop of the anchor or the spawner: start the threads queued by
        :meth:`start` until ``None`` comes."""
        while (item := self._to_start.get()) is not None:
            thread, started = item
            try:
                thread.start()
            except BaseException as exc:
                started.set_exception(exc)
            else:
                started.set_result(None)

    def _start_spawner(self) -> None:
        """A home thread that starts the worker threads (see :meth:`start`)."""
        self._spawner = threading.Thread(
            target=self._serve_starts, name="nspool-spawner", daemon=True
        )
        self._spawner.start()

    def start(self, thread: threading.Thread) -> None:
        """Start ``thread`` so that it begins at home. A new thread begins in
        the namespaces of the thread that starts it; where threads cannot
        come home (rootless mode) a thread that has left home (a worker
        after its call, a submitter inside a set) cannot start one, so the
        spawner, which never leaves, starts them all."""
        if not self.always_spawn and not is_tainted():
            thread.start()
            return
        # A tainted thread (its own fs or fd table) would pass them on.
        started: Future[None] = Future()
        self._to_start.put((thread, started))
        started.result()

    def _stop_anchor(self) -> None:
        anchor, self._anchor = self._anchor, None
        if anchor is not None:
            self._to_start.put(None)
            if anchor is not threading.current_thread():
                anchor.join()

    # -- lifetime -----------------------------------------------------------------

    def acquire(self) -> Home:
        """One more user (a worker thread); each calls :meth:`release`."""
        with self._users_lock:
            self._users += 1
        return self

    def release(self) -> None:
        """Drop one user; the last closes the fds and stops the anchor."""
        with self._users_lock:
            self._users -= 1
            last = self._users == 0
        if last:
            self.close()

    def close(self) -> None:
        self._stop_anchor()
        limbo, self.limbo = self.limbo, None
        if limbo is not None:
            release_limbo(limbo)
        spawner, self._spawner = self._spawner, None
        if spawner is not None:
            self._to_start.put(None)
            if spawner is not threading.current_thread():
                spawner.join()
        fds = [*self.fds.values(), self.root, self.anchor_fd]
        self.fds, self.root, self.anchor_fd = {}, -1, -1
        close_fds(fd for fd in fds if fd >= 0)


def follow_process_cwd() -> None:
    """A thread that has joined a mount namespace has its own cwd from then
    on; before other calls it takes the process's current one, as a thread
    sharing it would see."""
    os.chdir(f"/proc/{os.getpid()}/cwd")
