"""A pool's book: its sets and counts, under one lock.

:class:`PoolBook` is the base of :class:`~nspool.pool.Pool`: the ready
list, the leased sets, how many are being created (by creators, or by
takers as misses) and recycled, the failure record, the creators' back-off,
and the conditions that wake each kind of waiter. The pool's front
(:mod:`nspool.pool`: taking, giving back, running) and its creators
(:mod:`nspool._pool_creators`, through a ``PoolSide`` of these methods)
change them only here, under :attr:`PoolBook._lock`.

Guarantees:

* Every count changes under the one lock, never while a set is made or
  closed (syscalls, milliseconds), so that a taker never waits behind a
  creation.
* Each event wakes only the threads it concerns (one condition each:
  creators, takers, whoever waits for the pool to be warm): a needless
  wake-up of a creator on the request path costs hundreds of microseconds
  on 2 CPUs.
* A set counted as being created ends in exactly one of offered
  (:meth:`PoolBook._offer_made`) or not made (``_failed_creating``,
  ``_gave_up``).
"""

from __future__ import annotations

import collections
import errno
import logging
import threading
import time
from collections.abc import Callable

from .errors import PoolClosedError
from .kinds import Kind
from .nsset import NamespaceSet

__all__ = ["PoolBook"]

logger = logging.getLogger("nspool")


class PoolBook:
    """The counts of a pool of ``kinds`` sets keeping ``warm`` ready and at
    most ``max_sets`` held; ``backoff()`` gives the creators' back-off
    bounds (seconds, least and most) when they fail, ``latency_window`` how
    many creation latencies are kept."""

    def __init__(
        self,
        kinds: Kind,
        *,
        warm: int,
        max_sets: int | None,
        backoff: Callable[[], tuple[float, float]],
        latency_window: int,
    ) -> None:
        self.kinds = kinds
        self.warm = warm
        self.max_sets = max_sets
        self._backoff_bounds = backoff
        self._lock = threading.Lock()
        # Conditions on the one lock, so that each event wakes only the
        # threads it concerns: a wake-up of a creator on the request path
        # costs a request hundreds of microseconds on 2 CPUs.
        self._refill = threading.Condition(self._lock)  # creators
        self._takers = threading.Condition(self._lock)  # get(): a set, room or a miss slot
        self._warmth = threading.Condition(self._lock)  # wait_ready()
        self._ready: collections.deque[NamespaceSet] = collections.deque()
        self._leased: set[NamespaceSet] = set()
        self._baseline: dict[NamespaceSet, object] = {}
        self._creating = 0
        self._missing = 0  # of _creating: misses made by takers
        self._recycling = 0
        self._running = False
        self._closed = False
        self._backoff = 0.0
        self._created = self._discarded = self._recycled = 0
        self._hits = self._misses = self._failures = 0
        self._last_failure: str | None = None
        self._last_error: BaseException | None = None
        self._latencies: collections.deque[float] = collections.deque(maxlen=latency_window)

    # -- under the lock ------------------------------------------------------------------

    def _is_closed(self) -> bool:
        # A method, not the attribute: another thread changes it while we
        # wait, which a type checker's narrowing cannot know.
        return self._closed

    def _closed_error(self) -> PoolClosedError:
        return PoolClosedError(
            errno.EBADF, syscall="Pool", kind=self.kinds, detail="the pool is closed"
        )

    def _total(self) -> int:
        return len(self._ready) + len(self._leased) + self._creating + self._recycling

    def _short(self) -> int:
        short = self.warm - len(self._ready) - (self._creating - self._missing)
        if self.max_sets is not None:
            short = min(short, self.max_sets - self._total())
        return short

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

    def _back_off(self) -> None:
        """Under the lock: double the creators' back-off."""
        least, most = self._backoff_bounds()
        self._backoff = min(most, max(least, self._backoff * 2))

    # -- the creators' side (PoolSide) -----------------------------------------------

    def _claim(self, most: int) -> int:
        """On a creator: wait until the pool is short, then count up to
        ``most`` sets as being created; how many (0: stop)."""
        with self._lock:
            count = min(self._wait_for_need(), most)
            if count <= 0:
                return 0
            self._creating += count
            return count

    def _await_need(self) -> bool:
        """On a creator: wait until the pool is short; ``False``: stop."""
        with self._lock:
            return self._wait_for_need() > 0

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

    def _failed_creating(self, exc: BaseException, count: int) -> None:
        logger.warning("nspool pool: creating a %s set failed: %s", self.kinds, exc)
        with self._lock:
            self._creating -= count
            self._back_off()
            # Takers waiting for room try themselves (and see the error).
            self._takers.notify_all()

    def _gave_up(self, count: int) -> None:
        with self._lock:
            self._creating -= count

    def _creator_replaced(self) -> None:
        with self._lock:
            self._back_off()
            self._refill.notify_all()
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

    def _record_failure(self, exc: BaseException, what: str = "") -> None:
        with self._lock:
            self._failures += 1
            self._last_failure = f"{what}{type(exc).__name__}: {exc}"
            self._last_error = exc
            self._warmth.notify_all()
