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
* Discarded sets go to a background closer that frees them one at a time
  (:data:`CLOSE_INTERVAL` apart): closing hundreds at once stalls new
  creations in the kernel for up to ~150 ms.
* A creation failure (``EPERM``, ``ENOSPC`` at the namespace limit,
  ``EMFILE``, a hook that raises) is counted in :meth:`Pool.stats`; the
  creators back off (doubling from :data:`BACKOFF_MIN` to
  :data:`BACKOFF_MAX`) instead of spinning. A taker that finds no ready set
  creates one itself (a *miss*) and so sees such an error directly.
* Closing the pool closes every set it holds and waits for its threads; sets
  leased out at that moment are closed when they come back.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar, Unpack

from . import _sys
from ._options import SetOptions, UnshareOptions
from .kinds import Kind
from .net import loopback_up
from .nsset import _THREAD_NS_DIR, KindsArg, NamespaceSet, _close_fds, _run_hook
from .workers import _CHECKED, Workers, _Home, _ThreadLinks, default_workers

__all__ = ["BACKOFF_MAX", "BACKOFF_MIN", "CLOSE_INTERVAL", "Lease", "Pool", "PoolStats"]

logger = logging.getLogger("nspool")

#: Seconds between two closes by the background closer: at most 5,000 a
#: second, above what the kernel can create, yet a burst of hundreds is
#: spread over tens of milliseconds.
CLOSE_INTERVAL = 0.0002
#: Creator back-off after a failure, doubling up to the maximum (seconds).
BACKOFF_MIN = 0.01
BACKOFF_MAX = 1.0
#: Creation latencies kept for the percentiles in ``stats()``.
LATENCY_WINDOW = 1024

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
        self.links: _ThreadLinks | None = None
        if not self.in_place:
            return
        self.home = _Home(use_anchor=False, spawner=False)
        self.links = _ThreadLinks()

    def make(
        self, kinds: Kind, hook: Callable[[NamespaceSet], object] | None, options: SetOptions
    ) -> NamespaceSet:
        fds: dict[Kind, int] = {}
        s: NamespaceSet | None = None
        try:
            _sys.unshare(kinds)
            options.apply_on_thread(kinds)
            for kind in kinds.singles():
                path = os.path.join(_THREAD_NS_DIR, kind.proc_name)
                fds[kind] = _sys.open_ns(path, kind)
            s = NamespaceSet(fds)
            if hook is not None:
                _run_hook(s, hook)
        except BaseException:
            if s is not None:
                s.close()
            else:
                _close_fds(fds.values())
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
            for kind, ino in self.links.read(_CHECKED).items():
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
        from .aio import pool_take

        if self._set is not None:
            raise RuntimeError("a Lease is entered once")
        self._set = await pool_take(self._pool)
        return self._set

    async def __aexit__(self, *exc_info: object) -> None:
        from .aio import pool_give_back

        s, self._set = self._set, None
        if s is not None:
            await pool_give_back(self._pool, s)


def _default_hook(kinds: Kind) -> Callable[[NamespaceSet], object] | None:
    return (lambda _s: loopback_up()) if kinds & Kind.NET else None


def net_state() -> tuple[object, ...]:
    """What a tenant may leave behind in the calling thread's netns: links
    (from the netns's own ``/proc/thread-self/net/dev``; ``/sys/class/net``
    shows the mounter's), addresses, routes, and firewall state (iptables
    tables in use; the nftables ruleset where ``nft`` is installed). Compared
    by the pool before it reuses a recycled set."""
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
    return (*files, ruleset)


class Pool:
    """Fresh namespace sets of ``kinds``, ``warm`` of them made ahead.

    ``after_create(s)`` runs inside each new set before it is offered (on the
    creating thread, still inside); the default brings ``lo`` up when the
    sets have a netns. ``recycle(s)``, if given, runs inside a returned set
    (on a worker) to reset it; the set is reused only if ``verify(s)``
    (default for a netns: :func:`net_state`, on a worker) equals what it was
    when the set was first offered, else it is thrown away.
    ``max_sets`` bounds ready + leased + being created; ``get`` waits at the
    bound. ``creators`` background threads create in parallel.

    Sizing ``warm``: it must cover the demand during a stall of creation.
    On these machines two creators refill about 1,700 netns a second (with
    ``lo`` up) and a burst of hundreds of discarded sets delays a creation by
    up to ~15-30 ms, so ``warm`` of about demand-per-second / 50 (and at
    least 16) rides one out; each live netns costs about 200 KiB of kernel
    memory (``bench/``).

    The keyword options of :meth:`NamespaceSet.unshare` (``uid_map``,
    ``private_tmp``, ``hostname``, ...) apply to every set. Sets holding a
    user namespace are made in a helper process each, tens of times slower
    than a netns alone.

    Use ``with Pool(...) as pool:`` (or :meth:`start`/:meth:`close`). All
    methods may be called from any thread.
    """

    def __init__(
        self,
        kinds: KindsArg,
        *,
        warm: int = 16,
        max_sets: int | None = None,
        after_create: Callable[[NamespaceSet], object] | None = None,
        recycle: Callable[[NamespaceSet], object] | None = None,
        verify: Callable[[], object] | None = None,
        workers: Workers | None = None,
        creators: int = 2,
        **options: Unpack[UnshareOptions],
    ) -> None:
        self.kinds = Kind.require(kinds, what="Pool")
        self._options = SetOptions.make(self.kinds, **options)
        if warm < 0 or creators < 1:
            raise ValueError("warm must be >= 0 and creators >= 1")
        if max_sets is not None and max_sets < max(1, warm):
            raise ValueError("max_sets must be at least warm (and at least 1)")
        self.warm = warm
        self.max_sets = max_sets
        self._after_create = after_create if after_create is not None else _default_hook(self.kinds)
        self._recycle = recycle
        self._verify = (
            verify if verify is not None else (net_state if self.kinds & Kind.NET else None)
        )
        self._workers = workers
        self._n_creators = creators

        self._lock = threading.Lock()
        # Three conditions on the one lock, so that each event wakes only
        # the threads it concerns: a wake-up of a creator on the request
        # path costs a request hundreds of microseconds on 2 CPUs.
        self._refill = threading.Condition(self._lock)  # creators
        self._room = threading.Condition(self._lock)  # get() waiting at max_sets
        self._to_close_added = threading.Condition(self._lock)  # the closer
        self._ready: collections.deque[NamespaceSet] = collections.deque()
        self._leased: set[NamespaceSet] = set()
        self._baseline: dict[NamespaceSet, object] = {}
        self._creating = 0
        self._recycling = 0
        self._in_place = True
        self._running = False
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._to_close: collections.deque[NamespaceSet] = collections.deque()
        self._backoff = 0.0
        self._created = self._discarded = self._recycled = 0
        self._hits = self._misses = self._failures = 0
        self._last_failure: str | None = None
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)

    # -- lifetime -----------------------------------------------------------------

    def start(self) -> Pool:
        """Start the creator and closer threads; returns the pool."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is closed")
            if self._running:
                return self
            self._running = True
            self._threads = [
                threading.Thread(target=self._create_loop, name=f"nspool-creator-{i}", daemon=True)
                for i in range(self._n_creators)
            ]
            self._threads.append(
                threading.Thread(target=self._close_loop, name="nspool-closer", daemon=True)
            )
            for thread in self._threads:
                thread.start()
        return self

    def close(self) -> None:
        """Stop the threads, close every set the pool holds (ready ones and
        those waiting to be closed), and wait for it. Leased sets are closed
        as they come back. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._running = False
            ready = list(self._ready)
            self._ready.clear()
            self._baseline.clear()
            for cond in (self._refill, self._room, self._to_close_added):
                cond.notify_all()
            threads = list(self._threads)
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
        import anyio
        import anyio.to_thread

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.close)

    async def run(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """Await ``fn(*args, **kwargs)`` on a worker inside a fresh set,
        then give the set back; asyncio or Trio. See
        :func:`nspool.aio.pool_run`.

        Cancellation: the awaiting task is cancelled at once; a callable
        already running finishes in the background and its set is thrown
        away, never reused.
        """
        # The async front end is the next layer down; looked up at call time.
        from .aio import pool_run

        return await pool_run(self, fn, *args, **kwargs)

    # -- taking sets ------------------------------------------------------------------

    def get(self, timeout: float | None = None) -> NamespaceSet:
        """A fresh set, owned by the caller until :meth:`put`.

        Takes a ready one at once (a hit). If none is ready it creates one
        on the calling thread (a miss, about a millisecond), raising the
        creation's error if it fails. At ``max_sets`` it waits up to
        ``timeout`` seconds for room (``TimeoutError``).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                if self._closed:
                    raise RuntimeError("the pool is closed")
                if self._ready:
                    return self._hand_out_ready()
                if self.max_sets is None or self._total() < self.max_sets:
                    self._misses += 1
                    self._creating += 1
                    break
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"no namespace set free within {timeout} s")
                self._room.wait(left)
        try:
            s = self._make()
        except BaseException:
            with self._lock:
                self._creating -= 1
                self._refill.notify()
                self._made_room()
            raise
        with self._lock:
            self._creating -= 1
            self._refill.notify()  # it counted as being created: refill now
            if self._is_closed():
                closed = True
            else:
                self._leased.add(s)
                closed = False
        if closed:
            s.close()
            raise RuntimeError("the pool is closed")
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
                self._ready.append(s)
                self._recycled += 1
                return
        self._discard(s)

    def _take_ready(self) -> NamespaceSet | None:
        """A ready set (a hit) if there is one, else ``None``; never blocks."""
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is closed")
            return self._hand_out_ready() if self._ready else None

    def _hand_out_ready(self) -> NamespaceSet:
        """Lease the oldest ready set (a hit). Call with the lock held."""
        s = self._ready.popleft()
        self._leased.add(s)
        self._hits += 1
        self._refill.notify()  # one set gone: one creator refills
        return s

    def _made_room(self) -> None:
        """Under the lock: the pool holds one set fewer. Only a pool bounded
        by ``max_sets`` has threads waiting for that."""
        if self.max_sets is not None:
            self._refill.notify()
            self._room.notify()

    def _drop(self, s: NamespaceSet) -> None:
        """Take back a leased set that must not be reused (its call was
        abandoned): thrown away, never recycled. Any thread."""
        with self._lock:
            self._leased.discard(s)
            self._baseline.pop(s, None)
        self._discard(s)

    def lease(self, timeout: float | None = None) -> Lease:
        """``with pool.lease() as s:``: :meth:`get` on entry, :meth:`put` on
        exit. The same object will serve ``async with`` in the async front
        end."""
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

    def _total(self) -> int:
        return len(self._ready) + len(self._leased) + self._creating + self._recycling

    def _workers_or_default(self) -> Workers:
        return self._workers if self._workers is not None else default_workers()

    def _make(self, creator: _Creator | None = None) -> NamespaceSet:
        """Create one set and run the hook inside it; record the outcome.
        Runs outside the lock: on a creator thread, which makes the set on
        itself when it can go home again, or on a taker's thread (a miss),
        which hands the work to a throwaway helper thread."""
        started = time.perf_counter()
        try:
            if creator is not None and creator.in_place:
                s = creator.make(self.kinds, self._after_create, self._options)
            else:
                s = NamespaceSet._create(
                    self.kinds, None, self._after_create, options=self._options
                )
        except BaseException as exc:
            with self._lock:
                self._failures += 1
                self._last_failure = f"{type(exc).__name__}: {exc}"
            raise
        try:
            baseline = self._state_of(s) if self._recycle is not None else None
        except BaseException:
            s.close()
            raise
        with self._lock:
            self._created += 1
            self._latencies.append(time.perf_counter() - started)
            if baseline is not None:
                self._baseline[s] = baseline
        return s

    def _state_of(self, s: NamespaceSet) -> object:
        if self._verify is None:
            return None
        return self._workers_or_default().run_sync(s, self._verify)

    def _reset_holds(self, s: NamespaceSet, baseline: object) -> bool:
        """Run the recycle hook inside ``s`` and check its state against the
        one it was first offered with."""
        assert self._recycle is not None
        workers = self._workers_or_default()
        try:
            workers.run_sync(s, self._recycle, s)
            return self._verify is None or workers.run_sync(s, self._verify) == baseline
        except Exception as exc:
            logger.warning("nspool pool: recycling %r failed: %s", s, exc)
            return False

    def _discard(self, s: NamespaceSet) -> None:
        with self._lock:
            self._discarded += 1
            self._made_room()
            if not self._closed:
                self._to_close.append(s)
                self._to_close_added.notify()
                return
        s.close()

    def _create_loop(self) -> None:
        """A creator thread: keep ``warm`` sets ready, backing off after
        failures. A creator whose thread cannot be trusted any more (the
        hook moved it and it could not go home) starts a fresh one and ends."""
        creator = _Creator(self.kinds, in_place=self._in_place)
        try:
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
                self._room.notify_all()
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
            creator.close()

    def _create_until_stopped(self, creator: _Creator) -> None:
        while True:
            with self._lock:
                # After a failure, wait out the back-off first, uncounted, so
                # that a taker at max_sets can try (and see the error) itself;
                # close() ends the wait.
                until = time.monotonic() + self._backoff
                while self._running and (left := until - time.monotonic()) > 0:
                    self._refill.wait(left)
                while self._running and (
                    len(self._ready) + self._creating >= self.warm
                    or (self.max_sets is not None and self._total() >= self.max_sets)
                ):
                    self._refill.wait()
                if not self._running:
                    return
                self._creating += 1
            try:
                s = self._make(creator)
            except Exception as exc:
                logger.warning("nspool pool: creating a %s set failed: %s", self.kinds, exc)
                with self._lock:
                    self._creating -= 1
                    self._backoff = min(BACKOFF_MAX, max(BACKOFF_MIN, self._backoff * 2))
                    # Takers waiting for room try themselves (and see the error).
                    self._room.notify_all()
            else:
                with self._lock:
                    self._creating -= 1
                    self._backoff = 0.0
                    keep = not self._is_closed()
                    if keep:
                        self._ready.append(s)
                        self._room.notify()
                if not keep:
                    s.close()
            if creator.stranded:
                raise _Stranded(creator.stranded)

    def _close_loop(self) -> None:
        """The closer thread: close discarded sets one at a time, spaced so
        that the kernel's cleanup does not stall creations."""
        while True:
            with self._lock:
                while self._running and not self._to_close:
                    self._to_close_added.wait()
                if not self._to_close:
                    return
                s = self._to_close.popleft()
            s.close()
            if CLOSE_INTERVAL:
                time.sleep(CLOSE_INTERVAL)
