"""The async front end: await calls on worker threads from asyncio or Trio.

Built on anyio, so the same code serves both event loops. A call is handed to
a ``Workers`` executor as usual; its result comes back to the event loop
through a per-loop *inbox*: a worker thread appends the completion and wakes
the loop only if the inbox was empty, so many results completing together
cost one loop wake-up, and no thread waits per awaiting task.

Cancellation: cancelling the awaiting task (a cancel scope, ``fail_after``,
``Task.cancel()``) takes effect at once. A call still queued is withdrawn; a
callable already running on its thread cannot be stopped: it finishes in the
background and its result is dropped. A pool set it ran in is thrown away,
never reused, once it finishes.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

import anyio
import anyio.to_thread
import sniffio

from .nsset import NamespaceSet
from .pool import Pool
from .workers import Workers, default_workers

__all__ = ["pool_run", "run_in"]

_P = ParamSpec("_P")
_T = TypeVar("_T")


class _Inbox:
    """Completions bound for one event loop, delivered in batches.

    ``deliver`` may be called from any thread; the callbacks run on the loop
    thread, all that arrived before the loop got to them in one go.
    """

    def __init__(self, schedule: Callable[[Callable[[], None]], object]) -> None:
        self._schedule = schedule
        self._lock = threading.Lock()
        self._items: list[Callable[[], None]] = []
        self._scheduled = False

    def deliver(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._items.append(callback)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._schedule(self._drain)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            with self._lock:
                self._items.clear()
                self._scheduled = False

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        for callback in items:
            callback()


_asyncio_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = (
    weakref.WeakKeyDictionary()
)
_trio_inbox: Any = None  # a trio.lowlevel.RunVar, made on first use


def _inbox(library: str) -> _Inbox:
    """The inbox of the running event loop (made on first use)."""
    if library == "asyncio":
        loop = asyncio.get_running_loop()
        inbox = _asyncio_inboxes.get(loop)
        if inbox is None:
            inbox = _asyncio_inboxes[loop] = _Inbox(loop.call_soon_threadsafe)
        return inbox
    if library == "trio":
        import trio

        global _trio_inbox
        if _trio_inbox is None:
            _trio_inbox = trio.lowlevel.RunVar("nspool_inbox")
        try:
            found: _Inbox = _trio_inbox.get()
        except LookupError:
            found = _Inbox(trio.lowlevel.current_trio_token().run_sync_soon)
            _trio_inbox.set(found)
        return found
    raise RuntimeError(f"nspool's async front end does not support {library}")


async def _wait_done(future: Future[Any], on_abandon: Callable[[], None] | None) -> None:
    """Wait until ``future`` is done without blocking the loop. If the wait
    is cancelled, the call is withdrawn if still queued (``future`` then
    reports cancelled); otherwise ``on_abandon`` runs once it finishes (on
    the worker thread, or at once if it just did)."""
    library = sniffio.current_async_library()
    inbox = _inbox(library)
    try:
        if library == "asyncio":
            # A bare asyncio future: cheaper than an anyio.Event, and anyio's
            # cancel scopes cancel the task awaiting it all the same.
            waiter = asyncio.get_running_loop().create_future()

            def wake() -> None:
                if not waiter.done():
                    waiter.set_result(None)

            future.add_done_callback(lambda _f: inbox.deliver(wake))
            await waiter
        else:
            event = anyio.Event()
            future.add_done_callback(lambda _f: inbox.deliver(event.set))
            await event.wait()
    except BaseException:
        if not future.cancel() and on_abandon is not None:
            future.add_done_callback(lambda _f: on_abandon())
        raise


async def run_in(
    workers: Workers | None,
    s: NamespaceSet,
    fn: Callable[_P, _T],
    /,
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> _T:
    """Await ``fn(*args, **kwargs)`` run on a worker thread inside ``s``
    (``workers``, or the default executor if ``None``). asyncio or Trio.

    Cancellation: the awaiting task is cancelled at once; a call still
    queued never runs; a running one finishes in the background and its
    result is dropped.
    """
    executor = workers if workers is not None else default_workers()
    future = executor.submit_in(s, fn, *args, **kwargs)
    await _wait_done(future, None)
    return future.result()


async def pool_take(pool: Pool) -> NamespaceSet:
    """A set from ``pool`` without blocking the loop: a ready one at once,
    else one made on a thread (a miss)."""
    s = pool._take_ready()
    if s is not None:
        return s
    return await anyio.to_thread.run_sync(pool.get)


async def pool_give_back(pool: Pool, s: NamespaceSet) -> None:
    """``pool.put(s)`` without blocking the loop (a recycle runs on a
    thread), shielded: the set is given back even if the task is cancelled."""
    with anyio.CancelScope(shield=True):
        if pool._recycle is None:
            pool.put(s)
        else:
            await anyio.to_thread.run_sync(pool.put, s)


async def pool_run(pool: Pool, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Await ``fn`` in a fresh set from ``pool``; the set is given back
    after (thrown away unless recycled).

    Cancellation: as :func:`run_in`; a set whose call was abandoned while
    running is thrown away when the call finishes, never reused.
    """
    s = await pool_take(pool)
    executor = pool._workers_or_default()
    try:
        future = executor.submit_in(s, fn, *args, **kwargs)
    except BaseException:
        await pool_give_back(pool, s)
        raise
    try:
        await _wait_done(future, lambda: pool._drop(s))
    except BaseException:
        if future.cancelled():  # withdrawn before it ran: the set is untouched
            await pool_give_back(pool, s)
        raise  # else the abandoned call's set is dropped when it finishes
    await pool_give_back(pool, s)
    return future.result()
