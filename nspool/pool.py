"""``Pool``: namespace sets created ahead of demand.

A new network namespace costs the kernel about half a millisecond to make
and as much again to free. A pool keeps ``warm`` fresh sets ready, made by
background creator threads, so that taking one is a list pop. Sets handed
out are thrown away after use by default (gonso's advice); a ``recycle``
hook may instead reset them, and the pool checks the reset held before it
offers the set again.

Guarantees:

* Pool state (ready list, counts) changes under one lock; creating and
  closing sets (syscalls, milliseconds) happen outside it, so a taker never
  waits behind a creation.
* No set is handed to two takers: a set is in exactly one of the ready list,
  a taker's hands, the recycler, or the closer.
* Discarded sets go to a background closer that frees them in small
  batches (at most :data:`CLOSE_RATE` a second, :data:`CLOSE_TICK` apart)
  while it keeps up, and at once when its backlog passes half its bound:
  freeing hundreds of netns at once stalls new creations in the kernel, but
  every pending set is an open fd. At the bound (:data:`CLOSE_BACKLOG`, or an
  eighth of the soft ``RLIMIT_NOFILE``) a discarded set is closed at once.
* Sets of net, uts, ipc and cgroup kinds are made by creator processes on
  other CPUs than the pool's starter and passed back by fd (see
  :class:`Pool`); others by creator threads in this process.
* A creation failure (``EPERM``, ``ENOSPC`` at the namespace limit,
  ``EMFILE``, a hook that raises, a lost creator process) is counted in
  :meth:`Pool.stats`; the creators back off (doubling from
  :data:`BACKOFF_MIN` to :data:`BACKOFF_MAX`) instead of spinning. A taker
  that finds no ready set waits a little for one being made, then creates
  one itself (a *miss*) and so sees such an error directly.
* Closing the pool closes every set it holds and waits for its threads and
  processes; sets leased out at that moment are closed when they come back.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import resource
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar, Unpack

import anyio
import anyio.to_thread

from . import _sys
from ._creator_proc import PROCESS_KINDS, CreatorLostError, CreatorProcess
from ._handle import close_fds
from ._options import SetOptions, UnshareOptions
from ._thread_ns import CHECKED, THREAD_NS_DIR, ThreadLinks, run_as_current
from ._wait import make_job, unwrap, wait_job
from .errors import NamespaceError, PoolClosedError
from .kinds import Kind
from .net import loopback_up
from .nsset import KindsArg, NamespaceSet
from .workers import Workers, _Home, default_workers

__all__ = [
    "BACKOFF_MAX",
    "BACKOFF_MIN",
    "CLOSE_BACKLOG",
    "CLOSE_RATE",
    "CLOSE_TICK",
    "MAX_CREATORS",
    "MAX_MISSES_AT_ONCE",
    "TAKE_WAIT",
    "Lease",
    "Pool",
    "PoolStats",
]

logger = logging.getLogger("nspool")

#: The closer's pace while it keeps up: at most this many closes a second,
#: above what creators make, yet a burst of hundreds is spread out.
CLOSE_RATE = 4000
#: Seconds between two batches of closes.
CLOSE_TICK = 0.002
#: The most discarded sets waiting to be closed (each holds fds).
CLOSE_BACKLOG = 256
#: Creator back-off after a failure, doubling up to the maximum (seconds).
BACKOFF_MIN = 0.01
BACKOFF_MAX = 1.0
#: Creation latencies kept for the percentiles in ``stats()``.
LATENCY_WINDOW = 1024
#: Seconds a taker waits for a set being made before making its own.
TAKE_WAIT = 0.03
#: Misses made at once by takers, at most: more than the CPUs can do only
#: slows every one of them.
MAX_MISSES_AT_ONCE = max(1, len(os.sched_getaffinity(0)))
#: The most creators a pool may have.
MAX_CREATORS = 16
#: Most sets asked of a creator process at once.
PROCESS_BATCH = 8
#: Seconds between two looks at the pool in ``await_ready``.
READY_POLL = 0.005

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool. Latencies are of set creation (including the
    after-create hook), in seconds, over the last :data:`LATENCY_WINDOW`."""

    ready: int
    leased: int
    creating: int
    created: int
    discarded: int
    recycled: int
    hits: int
    misses: int
    failures: int
    last_failure: str | None
    create_p50: float | None
    create_p99: float | None
    #: Discarded sets waiting for the closer.
    closing: int = 0
    #: Creator processes lost (died, hung) and replaced.
    creator_losses: int = 0


class _Stranded(Exception):
    """A creator thread could not get back home after making a set."""


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
        self.home: _Home | None = None
        self.links: ThreadLinks | None = None
        if not self.in_place:
            return
        self.home = _Home(use_anchor=False, spawner=False)
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
        except _Stranded as exc:
            self.stranded = str(exc)

    def _go_home(self, kinds: Kind) -> None:
        """Back home in ``kinds`` by fd, then check every link: the hook may
        have moved the thread in other kinds too."""
        home = self.home
        assert home is not None
        assert self.links is not None
        # In rootless mode home cannot be reached again: the creator waits
        # in limbo instead, so that it keeps no set alive (see workers).
        back = home.fds if home.returnable else home.limbo_fds
        back_ids = home.ids if home.returnable else home.limbo_ids
        try:
            for kind in kinds.singles():
                _sys.setns(back[kind], kind)
            for kind, ino in self.links.read(CHECKED).items():
                if ino != (back_ids[kind] if kind in kinds else home.ids[kind]):
                    raise _Stranded(f"still in another {kind} namespace after going home")
        except OSError as exc:
            raise _Stranded(f"cannot go home: {exc}") from exc

    def close(self) -> None:
        if self.links is not None:
            self.links.close()
        if self.home is not None:
            self.home.close()


class Lease:
    """A set taken from a pool for the length of a ``with`` block."""

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._set: NamespaceSet | None = None

    def __enter__(self) -> NamespaceSet:
        if self._set is not None:
            raise RuntimeError("a Lease is entered once")
        self._set = self._pool.get(self._timeout)
        return self._set

    def __exit__(self, *exc_info: object) -> None:
        s, self._set = self._set, None
        if s is not None:
            self._pool.put(s)

    async def __aenter__(self) -> NamespaceSet:
        """Take a set without blocking the event loop (a miss is made on a
        thread)."""
        if self._set is not None:
            raise RuntimeError("a Lease is entered once")
        self._set = await self._pool._take_async()
        return self._set

    async def __aexit__(self, *exc_info: object) -> None:
        s, self._set = self._set, None
        if s is not None:
            await self._pool._give_back_async(s)


def net_state() -> tuple[object, ...]:
    """What a tenant may leave behind in the calling thread's netns: links
    (from the netns's own ``/proc/thread-self/net/dev``; ``/sys/class/net``
    shows the mounter's), addresses, routes, and firewall state (iptables
    tables in use; the nftables ruleset where ``nft`` is installed). Compared
    by the pool before it reuses a recycled set. Also every readable
    sysctl under ``/proc/sys/net`` (which shows the reader's netns), so that a
    tenant's ``ip_forward=1`` is not handed to the next."""
    files = []
    for name in ("dev", "if_inet6", "route", "ipv6_route", "fib_trie", "ip_tables_names"):
        # Through the host's /proc: a set's private /proc would not show
        # this thread at thread-self.
        try:
            fd = os.open(
                f"thread-self/net/{name}", os.O_RDONLY | os.O_CLOEXEC, dir_fd=_sys.HOST_PROC
            )
        except FileNotFoundError:
            text = ""
        else:
            with open(fd) as f:
                text = f.read()
        if name == "dev":  # drop the counters, keep the interface names
            text = " ".join(line.split(":")[0].strip() for line in text.splitlines()[2:])
        files.append(text)
    ruleset = ""
    with contextlib.suppress(OSError):
        ruleset = subprocess.run(
            ["nft", "list", "ruleset"], capture_output=True, text=True, timeout=10
        ).stdout
    return (*files, ruleset, _net_sysctls())


def _net_sysctls() -> tuple[tuple[str, str], ...]:
    """``(path, value)`` of every readable file under ``/proc/sys/net``, as
    the calling thread's netns has them (through the host's ``/proc``)."""
    values: list[tuple[str, str]] = []
    top = os.open("sys/net", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=_sys.HOST_PROC)
    try:
        for root, _dirs, names, root_fd in os.fwalk(".", dir_fd=top):
            for name in names:
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=root_fd)
                except OSError:
                    continue  # write-only (flush) or not ours to read
                try:
                    values.append((f"{root}/{name}", os.read(fd, 4096).decode(errors="replace")))
                except OSError:
                    pass
                finally:
                    os.close(fd)
    finally:
        os.close(top)
    return tuple(sorted(values))


def _cpu_set(value: Iterable[int] | None) -> frozenset[int] | None:
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


def _default_creator_cpus() -> frozenset[int]:
    """Every CPU this process may use except the calling thread's (the one
    that starts the pool, most often the event loop's), when there are two
    or more; on one CPU, that one."""
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        return frozenset(allowed)
    return frozenset(allowed - {_sys.current_cpu()}) or frozenset(allowed)


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < low or (high is not None and value > high):
        top = "" if high is None else f" and <= {high}"
        raise ValueError(f"{name} must be >= {low}{top}, not {value}")
    return value


def _check_callable(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, not {value!r}")


class Pool:
    """Fresh namespace sets of ``kinds``, ``warm`` of them made ahead.

    ``lo`` is brought up in each new netns (``loopback=False`` leaves it
    down); then ``after_create(s)``, if given, runs inside the set before it
    is offered. ``recycle(s)``, if given, runs inside a returned set (on a
    worker) to reset it; the set is reused only if ``verify(s)`` (default for
    a netns: :func:`net_state`, on a worker) equals what it was when the set
    was first offered, else it is thrown away.
    ``max_sets`` bounds ready + leased + being created; ``get`` waits at the
    bound. ``creators`` make sets in parallel (at most :data:`MAX_CREATORS`).

    Where sets are made, chosen per kind:

    * net, uts, ipc and cgroup sets with no other option are made by
      ``creators`` *creator processes* (``creator_processes=True``, the
      default for them): fresh interpreters pinned to ``creator_cpus`` that
      unshare, bring ``lo`` up and pass the fds back (``SCM_RIGHTS``), so the
      half millisecond of kernel work a netns costs takes none of this
      process's GIL and, on two or more CPUs, none of the caller's CPU. An
      ``after_create`` hook then runs in this process on a worker inside the
      set (a thread hop, tens of microseconds a set, under our GIL).
    * Sets with a user, pid, mnt or time namespace, or with options
      (``hostname``, maps, ``private_tmp``, ...), are made in this process by
      ``creators`` threads, as :meth:`NamespaceSet.unshare` makes them;
      ``creator_processes=False`` chooses this for the others too.

    ``creator_cpus``: the CPUs creators run on. By default every CPU but the
    one of the thread that starts the pool (the event loop's, in an async
    program), or the only CPU there is.

    A taker that finds no set ready waits up to :data:`TAKE_WAIT` seconds for
    one being made, then makes its own (a *miss*); at most
    :data:`MAX_MISSES_AT_ONCE` misses are made at once, further takers wait
    for one of them or for a creator.

    Sizing ``warm``: it must cover the demand while creation catches up.
    A creator process makes about 1,000-1,500 netns a second on these
    machines; each live netns costs about 230 KiB of kernel memory
    (``bench/``). :meth:`wait_ready` (or ``await pool.await_ready()``) waits
    until ``warm`` sets are ready.

    The keyword options of :meth:`NamespaceSet.unshare` (``uid_map``,
    ``private_tmp``, ``hostname``, ...) apply to every set. Sets holding a
    user namespace are made in a helper process each, tens of times slower
    than a netns alone.

    Use ``with Pool(...) as pool:`` (or :meth:`start`/:meth:`close`). All
    methods may be called from any thread. Bad arguments raise ``TypeError``
    or ``ValueError`` here, before anything is made.
    """

    def __init__(
        self,
        kinds: KindsArg,
        *,
        warm: int = 16,
        max_sets: int | None = None,
        after_create: Callable[[NamespaceSet], object] | None = None,
        loopback: bool = True,
        recycle: Callable[[NamespaceSet], object] | None = None,
        verify: Callable[[], object] | None = None,
        workers: Workers | None = None,
        creators: int = 2,
        creator_processes: bool | None = None,
        creator_cpus: Iterable[int] | None = None,
        **options: Unpack[UnshareOptions],
    ) -> None:
        self.kinds = Kind.require(kinds, what="Pool")
        self._options = SetOptions.make(self.kinds, **options)
        self.warm = _check_int("warm", warm, 0)
        self._n_creators = _check_int("creators", creators, 1, MAX_CREATORS)
        if max_sets is not None:
            _check_int("max_sets", max_sets, 0)
            if max_sets < max(1, warm):
                raise ValueError("max_sets must be at least warm (and at least 1)")
        self.max_sets = max_sets
        for name, fn in (("after_create", after_create), ("recycle", recycle), ("verify", verify)):
            _check_callable(name, fn)
        if not isinstance(loopback, bool):
            raise TypeError(f"loopback must be a bool, not {loopback!r}")
        if creator_processes is not None and not isinstance(creator_processes, bool):
            raise TypeError(f"creator_processes must be a bool or None, not {creator_processes!r}")
        if workers is not None and not isinstance(workers, Workers):
            raise TypeError(f"workers must be a Workers or None, not {workers!r}")
        self._creator_cpus = _cpu_set(creator_cpus)
        can_process = not self.kinds & ~PROCESS_KINDS and self._options == SetOptions()
        if creator_processes and not can_process:
            raise ValueError(
                f"creator processes make only {PROCESS_KINDS} sets without options, "
                f"not {self.kinds} sets with {self._options}"
            )
        self._use_processes = can_process if creator_processes is None else creator_processes
        self._loopback = loopback and bool(self.kinds & Kind.NET)
        self._user_hook = after_create
        self._after_create = _compose_hook(self._loopback, after_create)
        self._recycle = recycle
        self._verify = (
            verify if verify is not None else (net_state if self.kinds & Kind.NET else None)
        )
        self._workers = workers

        self._lock = threading.Lock()
        # Conditions on the one lock, so that each event wakes only the
        # threads it concerns: a wake-up of a creator on the request path
        # costs a request hundreds of microseconds on 2 CPUs.
        self._refill = threading.Condition(self._lock)  # creators
        self._takers = threading.Condition(self._lock)  # get(): a set, room or a miss slot
        self._warmth = threading.Condition(self._lock)  # wait_ready()
        self._to_close_added = threading.Condition(self._lock)  # the closer
        self._ready: collections.deque[NamespaceSet] = collections.deque()
        self._leased: set[NamespaceSet] = set()
        self._baseline: dict[NamespaceSet, object] = {}
        self._creating = 0
        self._missing = 0  # of _creating: misses made by takers
        self._recycling = 0
        self._in_place = True
        self._running = False
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._processes: set[CreatorProcess] = set()
        self._to_close: collections.deque[NamespaceSet] = collections.deque()
        self._close_bound = _close_bound()
        self._backoff = 0.0
        self._created = self._discarded = self._recycled = 0
        self._hits = self._misses = self._failures = self._losses = 0
        self._last_failure: str | None = None
        self._last_error: BaseException | None = None
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

    # -- lifetime -----------------------------------------------------------------

    def start(self) -> Pool:
        """Start the creators and the closer; returns the pool. Creator
        processes are started by their threads, so this does not wait for
        them."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._running:
                return self
            self._running = True
            if self._creator_cpus is None:
                self._creator_cpus = _default_creator_cpus()
            loop = self._process_loop if self._use_processes else self._create_loop
            self._threads = [
                threading.Thread(target=loop, name=f"nspool-creator-{i}", daemon=True)
                for i in range(self._n_creators)
            ]
            self._threads.append(
                threading.Thread(target=self._close_loop, name="nspool-closer", daemon=True)
            )
            for thread in self._threads:
                thread.start()
        return self

    def close(self) -> None:
        """Stop the threads and creator processes, close every set the pool
        holds (ready ones and those waiting to be closed), and wait for it.
        Leased sets are closed as they come back. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._running = False
            ready = list(self._ready)
            self._ready.clear()
            self._baseline.clear()
            for cond in (self._refill, self._takers, self._warmth, self._to_close_added):
                cond.notify_all()
            threads = list(self._threads)
            processes = list(self._processes)
        for process in processes:  # a creator blocked on its socket wakes at once
            process.close()
        for thread in threads:
            thread.join()
        with self._lock:
            pending = list(self._to_close)
            self._to_close.clear()
        for s in (*ready, *pending):
            s.close()

    def __enter__(self) -> Pool:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Pool:
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the pool on a thread (joining its threads blocks),
        shielded from cancellation so that nothing is left behind."""
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.close)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until ``warm`` sets are ready (or ``max_sets`` are held),
        starting the pool if it was not started, so that a daemon can start
        serving from a full pool.

        Raises the creation's error as soon as a set fails to be made while
        waiting (a pool that cannot make sets never warms), ``TimeoutError``
        after ``timeout`` seconds, :class:`PoolClosedError` if the pool is
        closed meanwhile. Any thread; nothing to cancel.
        """
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            failures = self._failures
            while not self._warm_or_raise(failures):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"the pool was not warm within {timeout} s")
                self._warmth.wait(left)

    async def await_ready(self, timeout: float | None = None) -> None:
        """:meth:`wait_ready` for asyncio or Trio, without a thread: checks
        every :data:`READY_POLL` seconds.

        Cancellation: the wait stops at once; the pool goes on warming.
        """
        self.start()
        with anyio.fail_after(timeout):
            with self._lock:
                failures = self._failures
            while True:
                with self._lock:
                    if self._warm_or_raise(failures):
                        return
                await anyio.sleep(READY_POLL)

    def _warm_or_raise(self, failures: int) -> bool:
        """Under the lock: whether the pool is warm; raises if it is closed
        or a creation failed since ``failures`` were counted."""
        if self._closed:
            raise self._closed_error()
        target = self.warm if self.max_sets is None else min(self.warm, self.max_sets)
        if len(self._ready) >= target:
            return True
        if self._failures > failures and self._last_error is not None:
            raise self._last_error
        return False

    async def run(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Await ``fn(*args, **kwargs)`` on a worker inside a fresh set,
        then give the set back (thrown away unless recycled); asyncio or
        Trio.

        Cancellation: the awaiting task is cancelled at once; a callable
        already running finishes in the background and its set is thrown
        away when it does, never reused.
        """
        s = await self._take_async()
        job = make_job(fn, *args, **kwargs)
        try:
            await wait_job(self._workers_or_default(), s, job, lambda: self._drop(s), stream=False)
        except BaseException:
            if job.cancelled:  # withdrawn before it ran: the set is untouched
                await self._give_back_async(s)
            raise  # else the abandoned call's set is dropped when it finishes
        await self._give_back_async(s)
        result: _T = unwrap(job)
        return result

    async def _take_async(self) -> NamespaceSet:
        """A set without blocking the loop: a ready one at once, else one
        made on a thread (a miss)."""
        s = self._take_ready()
        if s is not None:
            return s
        return await anyio.to_thread.run_sync(self.get)

    async def _give_back_async(self, s: NamespaceSet) -> None:
        """:meth:`put` without blocking the loop (a recycle runs on a
        thread), shielded: the set is given back even if the task is
        cancelled."""
        with anyio.CancelScope(shield=True):
            if self._recycle is None:
                self.put(s)
            else:
                await anyio.to_thread.run_sync(self.put, s)

    # -- taking sets ------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> NamespaceSet:
        """A fresh set, owned by the caller until :meth:`put`.

        Takes a ready one at once (a hit). If none is ready but creators are
        making some, waits up to :data:`TAKE_WAIT` seconds for one (still a
        hit); then creates one on the calling thread (a miss, about a
        millisecond), raising the creation's error if it fails. At most
        :data:`MAX_MISSES_AT_ONCE` misses are made at once; at ``max_sets``
        it waits for room. Either wait ends after ``timeout`` seconds
        (``TimeoutError``).
        """
        now = time.monotonic()
        deadline = None if timeout is None else now + timeout
        take_until = now + TAKE_WAIT
        with self._lock:
            while True:
                if self._closed:
                    raise self._closed_error()
                if self._ready:
                    return self._hand_out_ready()
                now = time.monotonic()
                room = self.max_sets is None or self._total() < self.max_sets
                # Creators are making a set, or will be as soon as one wakes.
                coming = self._running and (self._creating > self._missing or self.warm > 0)
                if coming and now < take_until:
                    wait: float | None = take_until - now
                elif room and self._missing < MAX_MISSES_AT_ONCE:
                    self._misses += 1
                    self._creating += 1
                    self._missing += 1
                    break
                else:
                    wait = None
                if deadline is not None:
                    if now >= deadline:
                        raise TimeoutError(f"no namespace set free within {timeout} s")
                    wait = deadline - now if wait is None else min(wait, deadline - now)
                self._takers.wait(wait)
        try:
            s = self._make()
        except BaseException:
            with self._lock:
                self._creating -= 1
                self._missing -= 1
                self._refill.notify()
                self._takers.notify()
                self._made_room()
            raise
        with self._lock:
            self._creating -= 1
            self._missing -= 1
            self._refill.notify()  # it counted as being created: refill now
            self._takers.notify()  # a miss slot is free
            if self._is_closed():
                closed = True
            else:
                self._leased.add(s)
                closed = False
        if closed:
            s.close()
            raise self._closed_error()
        return s

    def put(self, s: NamespaceSet) -> None:
        """Give back a set from :meth:`get`. Without ``recycle`` it is thrown
        away (closed in the background). With ``recycle`` it is reset on a
        worker and, if its state matches its first offer, made ready again.

        Blocks while ``recycle`` and the check run, if any.
        """
        with self._lock:
            if s not in self._leased:
                raise ValueError(f"{s!r} was not taken from this pool")
            self._leased.discard(s)
            baseline = self._baseline.pop(s, None)
            reuse = self._recycle is not None and not self._closed and not s.closed
            if reuse:
                self._recycling += 1
        if not reuse:
            self._discard(s)
            return
        held = self._reset_holds(s, baseline)
        with self._lock:
            self._recycling -= 1
            self._made_room()
            if held and not self._closed:
                self._baseline[s] = baseline
                self._offer_locked(s)
                self._recycled += 1
                return
        self._discard(s)

    def _take_ready(self) -> NamespaceSet | None:
        """A ready set (a hit) if there is one, else ``None``; never blocks."""
        with self._lock:
            if self._closed:
                raise self._closed_error()
            return self._hand_out_ready() if self._ready else None

    def _hand_out_ready(self) -> NamespaceSet:
        """Lease the oldest ready set (a hit). Call with the lock held."""
        s = self._ready.popleft()
        self._leased.add(s)
        self._hits += 1
        self._refill.notify()  # one set gone: one creator refills
        return s

    def _offer_locked(self, s: NamespaceSet) -> None:
        """Under the lock: ``s`` is ready; wake one taker, and whoever waits
        for the pool to be warm once it is."""
        self._ready.append(s)
        self._takers.notify()
        if len(self._ready) >= self.warm:
            self._warmth.notify_all()

    def _made_room(self) -> None:
        """Under the lock: the pool holds one set fewer. Only a pool bounded
        by ``max_sets`` has threads waiting for that."""
        if self.max_sets is not None:
            self._refill.notify()
            self._takers.notify()

    def _drop(self, s: NamespaceSet) -> None:
        """Take back a leased set that must not be reused (its call was
        abandoned): thrown away, never recycled. Any thread."""
        with self._lock:
            self._leased.discard(s)
            self._baseline.pop(s, None)
        self._discard(s)

    def lease(self, timeout: float | None = None) -> Lease:
        """``with pool.lease() as s:`` or ``async with pool.lease() as s:``:
        :meth:`get` on entry, :meth:`put` on exit."""
        return Lease(self, timeout)

    def run_sync(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Run ``fn`` on a worker inside a fresh set, then give the set back
        (thrown away unless recycled). Blocks the calling thread.

        Cancellation: as ``Workers.run_sync``; the set is given back only
        when the call is done.
        """
        with self.lease() as s:
            return self._workers_or_default().run_sync(s, fn, *args, **kwargs)

    def stats(self) -> PoolStats:
        """Counts and creation latency percentiles, for monitoring."""
        with self._lock:
            lat = sorted(self._latencies)
            return PoolStats(
                ready=len(self._ready),
                leased=len(self._leased),
                creating=self._creating,
                created=self._created,
                discarded=self._discarded,
                recycled=self._recycled,
                hits=self._hits,
                misses=self._misses,
                failures=self._failures,
                last_failure=self._last_failure,
                create_p50=lat[len(lat) // 2] if lat else None,
                create_p99=lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
                closing=len(self._to_close),
                creator_losses=self._losses,
            )

    def __repr__(self) -> str:
        st = self.stats()
        return (
            f"<Pool {self.kinds} warm={self.warm} ready={st.ready} leased={st.leased} "
            f"created={st.created} misses={st.misses} failures={st.failures}>"
        )

    # -- inside -------------------------------------------------------------------------

    def _is_closed(self) -> bool:
        # A method, not the attribute: another thread changes it while we
        # wait, which a type checker's narrowing cannot know.
        return self._closed

    def _is_stopping(self) -> bool:
        return not self._running

    def _closed_error(self) -> PoolClosedError:
        return PoolClosedError(
            errno.EBADF, syscall="Pool", kind=self.kinds, detail="the pool is closed"
        )

    def _total(self) -> int:
        return len(self._ready) + len(self._leased) + self._creating + self._recycling

    def _workers_or_default(self) -> Workers:
        return self._workers if self._workers is not None else default_workers()

    def _make(self, creator: _Creator | None = None) -> NamespaceSet:
        """Create one set in this process and run the hooks inside it;
        record the outcome. Runs outside the lock: on a creator thread,
        which makes the set on itself when it can go home again, or on a
        taker's thread (a miss), which hands the work to a throwaway helper
        thread."""
        started = time.perf_counter()
        try:
            if creator is not None and creator.in_place:
                s = creator.make(self.kinds, self._after_create, self._options)
            else:
                s = NamespaceSet._create(
                    self.kinds, None, self._after_create, options=self._options
                )
        except BaseException as exc:
            self._record_failure(exc)
            raise
        return self._made(s, started)

    def _made(self, s: NamespaceSet, started: float) -> NamespaceSet:
        """Record a set made since ``started``, with its recycle baseline."""
        try:
            baseline = self._state_of(s) if self._recycle is not None else None
        except BaseException as exc:
            s.close()
            self._record_failure(exc)
            raise
        with self._lock:
            self._created += 1
            self._latencies.append(time.perf_counter() - started)
            if baseline is not None:
                self._baseline[s] = baseline
        return s

    def _record_failure(self, exc: BaseException, *, what: str = "") -> None:
        with self._lock:
            self._failures += 1
            self._last_failure = f"{what}{type(exc).__name__}: {exc}"
            self._last_error = exc
            self._warmth.notify_all()

    def _state_of(self, s: NamespaceSet) -> object:
        if self._verify is None:
            return None
        return self._workers_or_default().run_sync(s, self._verify)

    def _reset_holds(self, s: NamespaceSet, baseline: object) -> bool:
        """Run the recycle hook inside ``s`` and check its state against the
        one it was first offered with. A hook that fails or a state that
        differs is counted as a failure."""
        assert self._recycle is not None
        workers = self._workers_or_default()
        try:
            workers.run_sync(s, self._recycle, s)
            if self._verify is None or workers.run_sync(s, self._verify) == baseline:
                return True
            raise NamespaceError(
                errno.EBUSY,
                syscall="recycle",
                kind=self.kinds,
                detail="the set's state after recycle differs from its first offer; thrown away",
            )
        except Exception as exc:
            logger.warning("nspool pool: recycling %r failed: %s", s, exc)
            self._record_failure(exc, what="recycle: ")
            return False

    def _discard(self, s: NamespaceSet) -> None:
        """Throw ``s`` away: to the closer, or closed here at once when the
        closer's backlog is at its bound (each pending set holds fds)."""
        with self._lock:
            self._discarded += 1
            self._made_room()
            if not self._closed and len(self._to_close) < self._close_bound:
                self._to_close.append(s)
                if len(self._to_close) == 1:
                    self._to_close_added.notify()
                return
        s.close()

    # -- creators -----------------------------------------------------------------------

    def _wait_for_need(self) -> int:
        """Under the lock, on a creator: wait out the back-off, then until the
        pool is short of ``warm``; returns how many sets to make (0: stop)."""
        # After a failure, wait out the back-off first, uncounted, so that a
        # taker at max_sets can try (and see the error) itself; close() ends
        # the wait.
        until = time.monotonic() + self._backoff
        while self._running and (left := until - time.monotonic()) > 0:
            self._refill.wait(left)
        while self._running and self._short() <= 0:
            self._refill.wait()
        return self._short() if self._running else 0

    def _short(self) -> int:
        short = self.warm - len(self._ready) - (self._creating - self._missing)
        if self.max_sets is not None:
            short = min(short, self.max_sets - self._total())
        return short

    def _failed_creating(self, exc: BaseException, count: int) -> None:
        logger.warning("nspool pool: creating a %s set failed: %s", self.kinds, exc)
        with self._lock:
            self._creating -= count
            self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
            # Takers waiting for room try themselves (and see the error).
            self._takers.notify_all()

    def _offer_made(self, s: NamespaceSet) -> None:
        with self._lock:
            self._creating -= 1
            self._backoff = 0.0
            keep = not self._is_closed()
            if keep:
                self._offer_locked(s)
        if not keep:
            s.close()

    def _pin_here(self) -> None:
        """Move the calling creator thread to the creator CPUs."""
        if self._creator_cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, self._creator_cpus)

    def _process_loop(self) -> None:
        """A creator thread with a creator process: ask it for what the pool
        lacks (at most :data:`PROCESS_BATCH` at once), offer each set as it
        arrives. A lost process is counted and replaced, after a back-off."""
        self._pin_here()
        process: CreatorProcess | None = None
        try:
            while True:
                with self._lock:
                    count = min(self._wait_for_need(), PROCESS_BATCH)
                    if count <= 0:
                        return
                    self._creating += count
                started = time.perf_counter()
                try:
                    if process is None:
                        process = self._start_process()
                    process.request(count)
                except Exception as exc:
                    if process is None:  # could not be started (EMFILE, say)
                        self._record_failure(exc)
                    self._lose(process, exc)
                    process = None
                    self._failed_creating(exc, count)
                    continue
                for left in range(count, 0, -1):
                    try:
                        s = self._receive(process, started)
                    except CreatorLostError as exc:
                        if self._is_stopping():
                            with self._lock:
                                self._creating -= left
                            return
                        self._lose(process, exc)
                        process = None
                        self._failed_creating(exc, left)
                        break
                    except Exception as exc:
                        self._failed_creating(exc, 1)
                    else:
                        self._offer_made(s)
                    started = time.perf_counter()
        finally:
            self._lose(process, None)

    def _start_process(self) -> CreatorProcess:
        process = CreatorProcess(self.kinds, cpus=self._creator_cpus or (), loopback=self._loopback)
        with self._lock:
            self._processes.add(process)
            if not self._running:  # close() may have missed it
                self._processes.discard(process)
                process.close()
        return process

    def _lose(self, process: CreatorProcess | None, exc: BaseException | None) -> None:
        """End ``process``; with ``exc``, count its loss (a closing pool's
        processes are not lost)."""
        if process is None:
            return
        with self._lock:
            self._processes.discard(process)
            lost = exc is not None and self._running
            if lost:
                self._losses += 1
        process.close()
        if lost:
            assert exc is not None
            logger.warning("nspool pool: creator process replaced: %s", exc)
            self._record_failure(exc)

    def _receive(self, process: CreatorProcess, started: float) -> NamespaceSet:
        """The next set from ``process``, its user hook run on a worker."""
        try:
            fds = process.receive()
        except CreatorLostError:
            raise
        except BaseException as exc:
            self._record_failure(exc)
            raise
        s = NamespaceSet(fds)
        if self._user_hook is not None:
            try:
                self._workers_or_default().run_sync(s, self._user_hook, s)
            except BaseException as exc:
                s.close()
                self._record_failure(exc)
                raise
        return self._made(s, started)

    def _create_loop(self) -> None:
        """A creator thread making sets in this process: keep ``warm`` sets
        ready, backing off after failures. A creator whose thread cannot be
        trusted any more (the hook moved it and it could not go home) starts
        a fresh one and ends."""
        self._pin_here()
        creator: _Creator | None = None
        try:
            creator = self._new_creator()
            if creator is not None:
                self._create_until_stopped(creator)
        except _Stranded as exc:
            # The thread is not trusted any more; its replacement makes sets
            # on throwaway helper threads from now on (a process in its own
            # user namespace, for one, can never setns back home).
            logger.warning("nspool pool: creator thread replaced: %s", exc)
            with self._lock:
                self._in_place = False
                self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
                self._refill.notify_all()
                self._takers.notify_all()
                if not self._running:
                    return
                fresh = threading.Thread(
                    target=self._create_loop, name=threading.current_thread().name, daemon=True
                )
                self._threads.append(fresh)
                # Started under the lock, so start() and close() never see
                # it unstarted.
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
                self._record_failure(exc)
                self._failed_creating(exc, 0)
            with self._lock:
                if self._wait_for_need() <= 0:
                    return None

    def _create_until_stopped(self, creator: _Creator) -> None:
        while True:
            with self._lock:
                if self._wait_for_need() <= 0:
                    return
                self._creating += 1
            try:
                s = self._make(creator)
            except Exception as exc:
                self._failed_creating(exc, 1)
            else:
                self._offer_made(s)
            if creator.stranded:
                raise _Stranded(creator.stranded)

    # -- closer -------------------------------------------------------------------------

    def _close_loop(self) -> None:
        """The closer thread: close discarded sets in small batches, at most
        :data:`CLOSE_RATE` a second while the backlog is small, so that the
        kernel's cleanup does not stall creations; at once down to half its
        bound when it is behind. It runs on the creator CPUs, away from the
        requests."""
        self._pin_here()
        while True:
            with self._lock:
                while self._running and not self._to_close:
                    self._to_close_added.wait()
                if not self._to_close:
                    return
                behind = len(self._to_close) - self._close_bound // 2
                count = max(1, int(CLOSE_RATE * CLOSE_TICK), behind)
                batch = [self._to_close.popleft() for _ in range(min(count, len(self._to_close)))]
                more = bool(self._to_close)
            for s in batch:
                s.close()
            if more and CLOSE_TICK:
                time.sleep(CLOSE_TICK)


def _compose_hook(
    loopback: bool, hook: Callable[[NamespaceSet], object] | None
) -> Callable[[NamespaceSet], object] | None:
    """The hook a set made in this process gets: ``lo`` up first (when
    ``loopback``), then the user's."""
    if not loopback:
        return hook
    if hook is None:
        return lambda _s: loopback_up()

    def both(s: NamespaceSet) -> object:
        loopback_up()
        return hook(s)

    return both


def _close_bound() -> int:
    """The most discarded sets waiting for the closer: :data:`CLOSE_BACKLOG`,
    or an eighth of the soft ``RLIMIT_NOFILE`` if that is less."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return CLOSE_BACKLOG
    return max(8, min(CLOSE_BACKLOG, soft // 8))
