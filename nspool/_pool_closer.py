"""A pool's paced closer: the thread that frees discarded sets.

Freeing a namespace costs the kernel about as much as making one, and
freeing hundreds at once stalls new creations in the kernel; yet every
pending set is an open fd. So the closer frees sets in small batches while
it keeps up, and at once when it is behind:

* at most ``rate`` closes a second, ``tick`` seconds between two batches
  (the pool's ``CLOSE_RATE`` and ``CLOSE_TICK``, read before every batch so
  that they can be changed while it runs);
* when its backlog passes half its :attr:`Closer.bound`, at once down to
  half; at the bound (:func:`close_bound`) :meth:`Closer.offer` refuses and
  the caller closes the set itself.

Guarantees: a set offered and accepted is closed exactly once, by the
closer thread or by :meth:`Closer.close`; after :meth:`Closer.close` begins,
every offer is refused, so none is left behind.
"""

from __future__ import annotations

import collections
import resource
import threading
import time
from collections.abc import Callable

from ._pool_creators import pin_here
from .nsset import NamespaceSet

__all__ = ["Closer", "close_bound"]


def close_bound(backlog: int) -> int:
    """The most discarded sets waiting for the closer: ``backlog``, or an
    eighth of the soft ``RLIMIT_NOFILE`` if that is less."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return backlog
    return max(8, min(backlog, soft // 8))


class Closer:
    """Closes offered sets on its own thread, paced by ``pace()`` (``(rate,
    tick)``: closes a second and seconds between batches), holding at most
    ``bound`` of them."""

    def __init__(self, *, bound: int, pace: Callable[[], tuple[int, float]]) -> None:
        #: The most sets waiting to be closed.
        self.bound = bound
        self._pace = pace
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        self._to_close: collections.deque[NamespaceSet] = collections.deque()
        self._closing = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Sets waiting to be closed (a deque's length, read without the lock)."""
        return len(self._to_close)

    def start(self, cpus: frozenset[int] | None) -> None:
        """Start the closer thread, on ``cpus`` (the creators' CPUs, away
        from the requests)."""
        with self._lock:
            if self._closing or self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._close_loop, args=(cpus,), name="nspool-closer", daemon=True
            )
            self._thread.start()

    def offer(self, s: NamespaceSet) -> bool:
        """Take ``s`` to close it later; ``False`` (the caller closes it)
        when the backlog is at its bound or the closer is closing."""
        with self._lock:
            if self._closing or len(self._to_close) >= self.bound:
                return False
            self._to_close.append(s)
            if len(self._to_close) == 1:
                self._added.notify()
            return True

    def close(self) -> None:
        """Refuse further offers, let the thread close its backlog (paced)
        and wait for it, then close whatever is left (all of it if the
        thread never started). Idempotent."""
        with self._lock:
            self._closing = True
            self._added.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            pending = list(self._to_close)
            self._to_close.clear()
        for s in pending:
            s.close()

    def _close_loop(self, cpus: frozenset[int] | None) -> None:
        """Close offered sets in small batches, at most ``rate`` a second
        while the backlog is small, so that the kernel's cleanup does not
        stall creations; at once down to half the bound when it is behind."""
        pin_here(cpus)
        while True:
            with self._lock:
                while not self._closing and not self._to_close:
                    self._added.wait()
                if not self._to_close:
                    return
                rate, tick = self._pace()
                behind = len(self._to_close) - self.bound // 2
                count = max(1, int(rate * tick), behind)
                batch = [self._to_close.popleft() for _ in range(min(count, len(self._to_close)))]
                more = bool(self._to_close)
            for s in batch:
                s.close()
            if more and tick:
                time.sleep(tick)
