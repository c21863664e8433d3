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
import os
import socket
import subprocess
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

import anyio
import anyio.abc
import anyio.to_thread
import sniffio

from .nsset import NamespaceSet
from .pool import Pool
from .workers import Workers, default_workers

__all__ = [
    "connect_tcp_in",
    "create_tcp_listener_in",
    "pool_run",
    "resolve_in",
    "run_in",
    "run_process_in",
    "socket_in",
]

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


# -- network ------------------------------------------------------------------------


def socket_in(
    s: NamespaceSet,
    family: int = socket.AF_INET,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
) -> socket.socket:
    """A non-blocking socket that lives in ``s``'s netns, made on the
    calling thread (a ``setns`` into the netns and back: microseconds, no
    thread hop). Usable from the event loop like any socket."""
    sock = s._call_in_netns(socket.socket, family, type, proto)
    sock.setblocking(False)
    return sock


async def resolve_in(
    s: NamespaceSet, host: str | None, port: int | str | None, *, type: int, flags: int = 0
) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` on a worker inside ``s``: the resolver's files and
    sockets are those of the set (asyncio's and anyio's ``getaddrinfo`` run
    on executor threads outside it)."""
    infos: list[tuple[Any, ...]] = await run_in(
        None, s, socket.getaddrinfo, host, port, 0, type, 0, flags
    )
    return infos


async def connect_tcp_in(s: NamespaceSet, host: str, port: int) -> anyio.abc.SocketStream:
    """An anyio stream connected to ``host:port`` from ``s``'s netns; the
    name is resolved inside the set, each address tried in turn."""
    infos = await resolve_in(s, host, port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, type_, proto, _name, address in infos:
        sock = socket_in(s, family, type_, proto)
        try:
            try:
                sock.connect(address)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code), f"{host}:{port}") from None
            return await anyio.abc.SocketStream.from_socket(sock)
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    raise error if error is not None else OSError(f"no address for {host}:{port}")


async def create_tcp_listener_in(
    s: NamespaceSet,
    local_host: str | None = None,
    local_port: int = 0,
    *,
    backlog: int = 65536,
    reuse_port: bool = False,
) -> anyio.abc.SocketListener:
    """An anyio listener bound in ``s``'s netns (the first address
    ``local_host`` resolves to there; all interfaces if ``None``)."""
    infos = await resolve_in(
        s, local_host, local_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, type_, proto, _name, address = infos[0]
    sock = socket_in(s, family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(min(backlog, socket.SOMAXCONN))
        return await anyio.abc.SocketListener.from_socket(sock)
    except BaseException:
        sock.close()
        raise


# -- processes --------------------------------------------------------------------------


async def run_process_in(
    s: NamespaceSet,
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` to completion inside ``s`` and return its output, like
    ``anyio.run_process``.

    The process is forked from a worker thread that has entered the set, so
    it starts in all of the set's namespaces, pid and time included (it is
    PID 2 or later in a new pid namespace, whose init is PID 1; it sees the
    set's mounts), never in the event loop's (python-trio/trio#3360). Its
    output is collected on a thread while the loop stays free.

    Cancellation: the process is killed and reaped, then the cancellation
    goes on. With ``check``, a non-zero exit raises
    :class:`subprocess.CalledProcessError`.
    """
    argv = list(argv)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=None if env is None else dict(env),
        )

    proc = await run_in(None, s, start)
    try:
        stdout, stderr = await anyio.to_thread.run_sync(
            proc.communicate, input, abandon_on_cancel=True
        )
    except BaseException:
        # The abandoned communicate() ends once the killed process's pipes
        # close; wait() (safe beside it) reaps the process.
        proc.kill()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(proc.wait)
        raise
    if check and proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, argv, stdout, stderr)
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)
