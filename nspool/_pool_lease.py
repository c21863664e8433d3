"""What a pool hands out and reports: :class:`Lease` (a set for a ``with``
or ``async with`` block), :class:`PoolStats` (a snapshot), and the checks
of the pool's arguments. Nothing here knows the pool's insides: a lease
gets the pool's take and give-back as callables."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .nsset import NamespaceSet

__all__ = ["Lease", "PoolStats", "check_callable", "check_int"]


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool. Latencies are of set creation (including the
    after-create hook), in seconds, over the last ``nspool.pool.LATENCY_WINDOW``."""

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


class Lease:
    """A set taken from a pool for the length of a ``with`` or ``async
    with`` block (``Pool.lease``): ``take``/``give_back`` are the
    pool's ``get``/``put``, ``take_async`` and
    ``give_back_async`` their versions that do not block an event loop."""

    def __init__(
        self,
        timeout: float | None,
        *,
        take: Callable[[float | None], NamespaceSet],
        give_back: Callable[[NamespaceSet], None],
        take_async: Callable[[], Awaitable[NamespaceSet]],
        give_back_async: Callable[[NamespaceSet], Awaitable[None]],
    ) -> None:
        self._timeout = timeout
        self._take = take
        self._give_back = give_back
        self._take_async = take_async
        self._give_back_async = give_back_async
        self._set: NamespaceSet | None = None

    def __enter__(self) -> NamespaceSet:
        if self._set is not None:
            raise RuntimeError("a Lease is entered once")
        self._set = self._take(self._timeout)
        return self._set

    def __exit__(self, *exc_info: object) -> None:
        s, self._set = self._set, None
        if s is not None:
            self._give_back(s)

    async def __aenter__(self) -> NamespaceSet:
        """Take a set without blocking the event loop (a miss is made on a
        thread)."""
        if self._set is not None:
            raise RuntimeError("a Lease is entered once")
        self._set = await self._take_async()
        return self._set

    async def __aexit__(self, *exc_info: object) -> None:
        s, self._set = self._set, None
        if s is not None:
            await self._give_back_async(s)


def check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {value!r}")
    if value < low or (high is not None and value > high):
        top = "" if high is None else f" and <= {high}"
        raise ValueError(f"{name} must be >= {low}{top}, not {value}")
    return value


def check_callable(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable or None, not {value!r}")
