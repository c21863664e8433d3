"""An executor's idle workers, by where each waits: the lists the scheduler
picks from.

Owns :class:`IdleWorkers` and the worker side it sees, :class:`Taker`
(``nspool._worker.Worker`` is one). An idle worker waits

* at home, ready for any call;
* in the set it stayed in after its last call (``Taker.parked``): the next
  call in that set enters nothing, a call elsewhere sends it home first;
* rootless mode only: in limbo in some kinds (``Taker.strayed``), so that
  it may serve only sets that hold all of them.

Guarantees and the reasons for them:

* A call takes, in this order, a worker in limbo that may serve it, the
  worker that stayed in its set most recently, the most recently idle
  worker at home, then one that stayed in another set: LIFO keeps caches
  warm, and a worker at home needs one ``setns`` less than one elsewhere.
* Not thread-safe: the scheduler changes it under its lock, the only one.
"""

from __future__ import annotations

import threading
from typing import Protocol, TypeVar

from ._handle import SetHandle
from ._handoff import Item
from ._native import BatonLike

__all__ = ["IdleWorkers", "Taker"]

_K = TypeVar("_K")


class Taker(Protocol):
    """The worker side of the hand-off (``nspool._worker.Worker``): a slot
    for its next item and the baton it waits on. ``item`` set to ``None``
    with ``wake`` posted means: exit."""

    item: Item | None
    wake: BatonLike
    #: Whether its exit should let a fresh thread take queued calls.
    spent: bool
    thread: threading.Thread

    @property
    def strayed(self) -> int:
        """Rootless mode: the kinds in which it waits in limbo, not at home."""

    @property
    def parked(self) -> SetHandle | None:
        """The set whose namespaces it stayed in after its last call, if any
        (written by the worker before it reports idle)."""

    def move_to(self, cpu: int) -> None: ...


class IdleWorkers:
    """The idle workers of one executor: at home (:attr:`home`), in a set
    (:attr:`parked`, by set) and in limbo (:attr:`strayed`, by the kinds
    they left)."""

    __slots__ = ("home", "n_parked", "parked", "strayed")

    def __init__(self) -> None:
        self.home: list[Taker] = []
        self.parked: dict[SetHandle, list[Taker]] = {}
        self.n_parked = 0
        self.strayed: dict[int, list[Taker]] = {}

    def count(self) -> int:
        """Idle workers at home or in a set (not those in limbo)."""
        return len(self.home) + self.n_parked

    def take(self, item: Item) -> Taker | None:
        """The worker that should run ``item``, taken off its list, or
        ``None`` if none is idle (or, in limbo, none may serve it)."""
        h = item.nsset.handle if item.nsset is not None else None
        if self.strayed and h is not None:
            worker = self.take_strayed(h.bits)
            if worker is not None:
                return worker
        if self.parked and h is not None:
            worker = self._take_parked(h)
            if worker is not None:
                return worker
        if self.home:
            return self.home.pop()
        if self.parked:
            return self._take_parked(next(iter(self.parked)))
        return None

    def _take_parked(self, h: SetHandle) -> Taker | None:
        parked = self.parked.get(h)
        if parked is None:
            return None
        worker = parked.pop()
        if not parked:
            del self.parked[h]
        self.n_parked -= 1
        return worker

    def take_strayed(self, set_bits: int) -> Taker | None:
        """A worker in limbo that may serve a set of ``set_bits`` (it left
        home only in kinds the set holds; -1: any)."""
        for strayed, parked in self.strayed.items():
            if strayed & ~set_bits == 0:
                worker = parked.pop()
                if not parked:
                    del self.strayed[strayed]
                return worker
        return None

    def put_parked(self, worker: Taker, h: SetHandle) -> None:
        """``worker`` waits in ``h``."""
        self.parked.setdefault(h, []).append(worker)
        self.n_parked += 1

    def put_strayed(self, worker: Taker) -> None:
        """``worker`` waits in limbo in ``worker.strayed``."""
        self.strayed.setdefault(worker.strayed, []).append(worker)

    def take_all_in(self, h: SetHandle) -> list[Taker]:
        """Every worker waiting in ``h``, taken off the list."""
        parked = self.parked.pop(h, [])
        self.n_parked -= len(parked)
        return parked

    def remove(self, worker: Taker) -> bool:
        """Take ``worker`` off whichever list holds it; whether one did."""
        if worker.strayed:
            return _remove(self.strayed, worker.strayed, worker)
        if worker.parked is not None:
            if not _remove(self.parked, worker.parked, worker):
                return False
            self.n_parked -= 1
            return True
        try:
            self.home.remove(worker)
        except ValueError:
            return False
        return True

    def clear(self) -> list[Taker]:
        """Every idle worker, the lists emptied."""
        every = [
            *self.home,
            *(w for parked in self.strayed.values() for w in parked),
            *(w for parked in self.parked.values() for w in parked),
        ]
        self.home.clear()
        self.strayed.clear()
        self.parked.clear()
        self.n_parked = 0
        return every


def _remove(lists: dict[_K, list[Taker]], key: _K, worker: Taker) -> bool:
    """Take ``worker`` off ``lists[key]`` (dropping the list once empty);
    whether it was there."""
    parked = lists.get(key)
    if parked is None or worker not in parked:
        return False
    parked.remove(worker)
    if not parked:
        del lists[key]
    return True
