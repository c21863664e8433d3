"""Making sets for a pool: its creator threads, their creator processes, and
where they run.

A :class:`Creators` keeps ``n`` threads making sets while the pool is short
of them, either each with a creator process (net, uts, ipc and cgroup sets
with no options: made in a fresh interpreter on other CPUs and passed back
by fd, :mod:`nspool._creator_proc`) or on the thread itself (a
:class:`_Creator`: unshare, open, run the hook, ``setns`` back home).

It works on the pool only through a :class:`PoolSide`: what the pool lacks,
what was made, what failed. The pool's counts and its lock stay the pool's;
the creators' own state (their threads, live processes, losses) is under
their own lock.

Guarantees:

* A set is counted as being created (``PoolSide.claim``) before it is made,
  and ends in exactly one of ``offer_made`` (made) or ``failed_creating``
  / ``gave_up`` (not made), so that the pool's counts stay true.
* A creation failure backs the creators off (the pool doubles its back-off)
  instead of spinning; a lost creator process is counted in
  :attr:`Creators.losses` and replaced; a creator thread that could not go
  home after a set (the hook moved it) is replaced by a fresh one that
  makes sets on throwaway helper threads from then on.
* :meth:`Creators.stop` ends every creator process at once (a creator
  blocked on its socket wakes) and waits for every creator thread,
  replacements included.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from . import _sys
from ._creator_proc import PROCESS_KINDS, CreatorLostError, CreatorProcess
from ._handle import close_fds
from ._home import Home, Stranded
from ._options import SetOptions
from ._pool_state import compose_hook
from ._thread_ns import THREAD_NS_DIR, ThreadLinks, run_as_current
from .kinds import Kind
from .nsset import NamespaceSet, create_set
from .workers import Workers

__all__ = [
    "PROCESS_BATCH",
    "Creators",
    "PoolSide",
    "cpu_set",
    "default_creator_cpus",
    "pin_here",
]

logger = logging.getLogger("nspool")

#: Most sets asked of a creator process at once.
PROCESS_BATCH = 8


@dataclass(frozen=True)
class PoolSide:
    """What the creators may ask and tell their pool; each call takes the
    pool's lock itself, none is made with the creators' lock held."""

    #: Wait out the back-off, then until the pool is short of sets; count
    #: up to ``most`` sets as being created and return how many (0: the
    #: pool stops).
    claim: Callable[[int], int]
    #: Wait as :attr:`claim` does, counting nothing; ``False``: the pool stops.
    wait_for_need: Callable[[], bool]
    #: A claimed set ``s``, made and recorded by :attr:`made`: offer it.
    offer_made: Callable[[NamespaceSet], None]
    #: ``count`` claimed sets were not made because of ``exc``: back off.
    failed_creating: Callable[[BaseException, int], None]
    #: ``count`` claimed sets will not be made: the pool stops.
    gave_up: Callable[[int], None]
    #: Count a failure (``stats().failures``) and tell whoever waits.
    record_failure: Callable[[BaseException], None]
    #: Record a set made since ``started`` (``perf_counter``); returns it.
    made: Callable[[NamespaceSet, float], NamespaceSet]
    #: A creator thread was replaced: back off.
    creator_replaced: Callable[[], None]
    #: The executor that runs a hook inside a set made elsewhere.
    workers: Callable[[], Workers]


def cpu_set(value: Iterable[int] | None) -> frozenset[int] | None:
    """``creator_cpus`` checked: ``None`` (the default rule, decided at
    start), or CPUs this process may run on."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"creator_cpus must be CPU numbers or None, not {value!r}")
    cpus = frozenset(value)
    allowed = os.sched_getaffinity(0)
    if not cpus or any(not isinstance(c, int) or isinstance(c, bool) for c in cpus):
        raise TypeError(f"creator_cpus must be CPU numbers, not {value!r}")
    if not cpus <= allowed:
        raise ValueError(f"creator_cpus {sorted(cpus - allowed)} are not among {sorted(allowed)}")
    return cpus


def default_creator_cpus() -> frozenset[int]:
    """Every CPU this process may use except the calling thread's (the one
    that starts the pool, most often the event loop's), when there are two
    or more; on one CPU, that one."""
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        return frozenset(allowed)
    return frozenset(allowed - {_sys.current_cpu()}) or frozenset(allowed)


def pin_here(cpus: frozenset[int] | None) -> None:
    """Move the calling thread to ``cpus`` (none: leave it)."""
    if cpus:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, cpus)


#: Kinds a creator thread can make on itself and leave again by ``setns``.
_IN_PLACE = Kind.NET | Kind.UTS | Kind.IPC | Kind.CGROUP


class _Creator:
    """A creator thread's means to make sets on itself, saving a thread
    start (about 0.1 ms, a fifth of a netns) per set: unshare, open the new
    namespaces, run the hook still inside, then ``setns`` back home by fd and
    check every namespace link against home (the hook may have moved the
    thread anywhere). Only for kinds in :data:`_IN_PLACE`."""

    def __init__(self, kinds: Kind, *, in_place: bool) -> None:
        self.in_place = in_place and not kinds & ~_IN_PLACE
        self.kinds = kinds
        #: Why this thread could not go home after a set, if it could not.
        self.stranded: str | None = None
        # The same means a worker has: its home's fds and ids, and a reader
        # of its own links.
        self.home: Home | None = None
        self.links: ThreadLinks | None = None
        if not self.in_place:
            return
        self.home = Home(use_anchor=False, spawner=False)
        self.links = ThreadLinks()

    def make(
        self, kinds: Kind, hook: Callable[[NamespaceSet], object] | None, options: SetOptions
    ) -> NamespaceSet:
        fds: dict[Kind, int] = {}
        s: NamespaceSet | None = None
        try:
            _sys.unshare(kinds)
            options.apply_on_thread(kinds)
            for kind in kinds.singles():
                path = os.path.join(THREAD_NS_DIR, kind.proc_name)
                fds[kind] = _sys.open_ns(path, kind)
            s = NamespaceSet(fds)
            if hook is not None:
                run_as_current(s, hook, s)
        except BaseException:
            if s is not None:
                s.close()
            else:
                close_fds(fds.values())
            self._try_home(kinds)
            raise
        self._try_home(kinds)
        return s

    def _try_home(self, kinds: Kind) -> None:
        """Go home; if that fails, the set just made is still good, but this
        thread is not: say so in :attr:`stranded` for the creator loop."""
        try:
            self._go_home(kinds)
        except Stranded as exc:
            self.stranded = str(exc)

    def _go_home(self, kinds: Kind) -> None:
        """Back home in ``kinds`` by fd (to limbo in rootless mode, so that it
        keeps no set alive), then check every link: the hook may have moved
        the thread in other kinds too."""
        assert self.home is not None
        assert self.links is not None
        try:
            self.home.go_back(self.links, kinds.singles())
        except OSError as exc:
            raise Stranded(f"cannot go home: {exc}") from exc

    def close(self) -> None:
        if self.links is not None:
            self.links.close()
        if self.home is not None:
            self.home.close()


class Creators:
    """``n`` creator threads making sets of ``kinds`` (with ``options``) for
    the pool behind ``pool``; with creator processes when ``use_processes``
    (which must then make sense: see :meth:`can_use_processes`), on
    ``cpus`` (``None``: :func:`default_creator_cpus` at :meth:`start`).

    A set made in this process gets ``lo`` up (``loopback``) then
    ``after_create`` inside it before it is offered; one made by a creator
    process has ``lo`` up already and gets ``after_create`` on a worker.
    """

    def __init__(
        self,
        pool: PoolSide,
        kinds: Kind,
        options: SetOptions,
        *,
        n: int,
        use_processes: bool,
        cpus: frozenset[int] | None,
        loopback: bool,
        after_create: Callable[[NamespaceSet], object] | None,
    ) -> None:
        self.kinds = kinds
        self._pool = pool
        self._options = options
        self._n = n
        self._use_processes = use_processes
        self._cpus = cpus
        self._loopback = loopback
        self._user_hook = after_create
        self._after_create = compose_hook(loopback, after_create)
        self._lock = threading.Lock()
        self._stopping = False
        self._in_place = True
        self._threads: list[threading.Thread] = []
        self._processes: set[CreatorProcess] = set()
        self._losses = 0

    @staticmethod
    def can_use_processes(kinds: Kind, options: SetOptions) -> bool:
        """Whether creator processes can make ``kinds`` sets with ``options``."""
        return not kinds & ~PROCESS_KINDS and options == SetOptions()

    @property
    def cpus(self) -> frozenset[int] | None:
        """The CPUs the creators run on (decided at :meth:`start` if not given)."""
        return self._cpus

    @property
    def losses(self) -> int:
        """Creator processes lost (died, hung) and replaced."""
        return self._losses

    def processes(self) -> list[CreatorProcess]:
        """The live creator processes."""
        with self._lock:
            return list(self._processes)

    def start(self) -> None:
        """Start the creator threads (they start their processes)."""
        if self._cpus is None:
            self._cpus = default_creator_cpus()
        loop = self._process_loop if self._use_processes else self._create_loop
        with self._lock:
            if self._stopping or self._threads:
                return
            self._threads = [
                threading.Thread(target=loop, name=f"nspool-creator-{i}", daemon=True)
                for i in range(self._n)
            ]
            for thread in self._threads:
                thread.start()

    def stop(self) -> None:
        """End the creator processes and wait for the threads. The pool must
        have stopped first (so that :attr:`PoolSide.claim` returns 0)."""
        with self._lock:
            self._stopping = True
            threads = list(self._threads)
            processes = list(self._processes)
        for process in processes:  # a creator blocked on its socket wakes at once
            process.close()
        for thread in threads:
            thread.join()

    def _is_stopping(self) -> bool:
        # A method, not the attribute: another thread changes it while we
        # wait, which a type checker's narrowing cannot know.
        with self._lock:
            return self._stopping

    def make(self, creator: _Creator | None = None) -> NamespaceSet:
        """Create one set in this process and run the hooks inside it;
        record the outcome. Runs outside the pool's lock: on a creator thread,
        which makes the set on itself when it can go home again, or on a
        taker's thread (a miss), which hands the work to a throwaway helper
        thread."""
        started = time.perf_counter()
        try:
            if creator is not None and creator.in_place:
                s = creator.make(self.kinds, self._after_create, self._options)
            else:
                s = create_set(
                    NamespaceSet, self.kinds, None, self._after_create, options=self._options
                )
        except BaseException as exc:
            self._pool.record_failure(exc)
            raise
        return self._pool.made(s, started)

    # -- with creator processes -------------------------------------------------------

    def _process_loop(self) -> None:
        """A creator thread with a creator process: ask it for what the pool
        lacks (at most :data:`PROCESS_BATCH` at once), offer each set as it
        arrives. A lost process is counted and replaced, after a back-off."""
        pin_here(self._cpus)
        pool = self._pool
        process: CreatorProcess | None = None
        try:
            while True:
                count = pool.claim(PROCESS_BATCH)
                if count <= 0:
                    return
                started = time.perf_counter()
                try:
                    if process is None:
                        process = self._start_process()
                    process.request(count)
                except Exception as exc:
                    if process is None:  # could not be started (EMFILE, say)
                        pool.record_failure(exc)
                    self._lose(process, exc)
                    process = None
                    pool.failed_creating(exc, count)
                    continue
                for left in range(count, 0, -1):
                    try:
                        s = self._receive(process, started)
                    except CreatorLostError as exc:
                        if self._is_stopping():
                            pool.gave_up(left)
                            return
                        self._lose(process, exc)
                        process = None
                        pool.failed_creating(exc, left)
                        break
                    except Exception as exc:
                        pool.failed_creating(exc, 1)
                    else:
                        pool.offer_made(s)
                    started = time.perf_counter()
        finally:
            self._lose(process, None)

    def _start_process(self) -> CreatorProcess:
        process = CreatorProcess(self.kinds, cpus=self._cpus or (), loopback=self._loopback)
        with self._lock:
            self._processes.add(process)
            if self._stopping:  # stop() may have missed it
                self._processes.discard(process)
                process.close()
        return process

    def _lose(self, process: CreatorProcess | None, exc: BaseException | None) -> None:
        """End ``process``; with ``exc``, count its loss (a stopping pool's
        processes are not lost)."""
        if process is None:
            return
        with self._lock:
            self._processes.discard(process)
            lost = exc is not None and not self._stopping
            if lost:
                self._losses += 1
        process.close()
        if lost:
            assert exc is not None
            logger.warning("nspool pool: creator process replaced: %s", exc)
            self._pool.record_failure(exc)

    def _receive(self, process: CreatorProcess, started: float) -> NamespaceSet:
        """The next set from ``process``, its user hook run on a worker."""
        try:
            fds = process.receive()
        except CreatorLostError:
            raise
        except BaseException as exc:
            self._pool.record_failure(exc)
            raise
        s = NamespaceSet(fds)
        if self._user_hook is not None:
            try:
                self._pool.workers().run_sync(s, self._user_hook, s)
            except BaseException as exc:
                s.close()
                self._pool.record_failure(exc)
                raise
        return self._pool.made(s, started)

    # -- in this process ----------------------------------------------------------------

    def _create_loop(self) -> None:
        """A creator thread making sets in this process: keep the pool's sets
        ready, backing off after failures. A creator whose thread cannot be
        trusted any more (the hook moved it and it could not go home) starts
        a fresh one and ends."""
        pin_here(self._cpus)
        creator: _Creator | None = None
        try:
            creator = self._new_creator()
            if creator is not None:
                self._create_until_stopped(creator)
        except Stranded as exc:
            # The thread is not trusted any more; its replacement makes sets
            # on throwaway helper threads from now on (a process in its own
            # user namespace, for one, can never setns back home).
            logger.warning("nspool pool: creator thread replaced: %s", exc)
            with self._lock:
                self._in_place = False
            self._pool.creator_replaced()
            with self._lock:
                if self._stopping:
                    return
                fresh = threading.Thread(
                    target=self._create_loop, name=threading.current_thread().name, daemon=True
                )
                self._threads.append(fresh)
                # Started under the lock, so start() and stop() never see it
                # unstarted.
                fresh.start()
        finally:
            if creator is not None:
                creator.close()

    def _new_creator(self) -> _Creator | None:
        """The creator's means (fds of home), retried with back-off while it
        cannot be had (``EMFILE``): ``None`` once the pool stops."""
        while True:
            with self._lock:
                in_place = self._in_place
            try:
                return _Creator(self.kinds, in_place=in_place)
            except OSError as exc:
                self._pool.record_failure(exc)
                self._pool.failed_creating(exc, 0)
            if not self._pool.wait_for_need():
                return None

    def _create_until_stopped(self, creator: _Creator) -> None:
        while True:
            if self._pool.claim(1) <= 0:
                return
            try:
                s = self.make(creator)
            except Exception as exc:
                self._pool.failed_creating(exc, 1)
            else:
                self._pool.offer_made(s)
            if creator.stranded:
                raise Stranded(creator.stranded)
