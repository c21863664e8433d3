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
import contextvars
import errno
import ipaddress
import os
import socket
import subprocess
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import IO, Any, ParamSpec, TypedDict, TypeVar, Unpack

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import sniffio

from . import _sys
from ._handle import HasHandle, dup_fds, fork_error
from ._thread_ns import call_inline
from .errors import KindError, UnsupportedKindError, from_errno
from .kinds import SETNS_ORDER, Kind
from .workers import Job, Workers, default_workers

__all__ = [
    "Command",
    "NamespaceProcess",
    "ProcessOptions",
    "call_in_netns",
    "connect_tcp_in",
    "create_tcp_listener_in",
    "no_async_library",
    "open_process_in",
    "resolve_in",
    "run_in",
    "run_process_in",
    "socket_in",
    "wait_done",
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


async def wait_done(future: Future[Any], on_abandon: Callable[[], None] | None) -> None:
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


def no_async_library(context: contextvars.Context) -> None:
    """Clear sniffio's marker in a call's copied context, as
    ``anyio.to_thread.run_sync`` does: the callable runs on a worker
    thread, where no event loop is running."""
    context.run(sniffio.current_async_library_cvar.set, None)


async def run_in(
    workers: Workers | None,
    s: HasHandle,
    fn: Callable[_P, _T],
    /,
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> _T:
    """Await ``fn(*args, **kwargs)`` run on a worker thread inside ``s``
    (``workers``, or the default executor if ``None``). asyncio or Trio.

    Calls awaited at once on the same set form a stream
    (:meth:`Workers.submit_job`): a worker that has entered the set runs
    them one after another, each checked as any call is, and more workers
    join while calls wait, so calls that block still run side by side.

    Cancellation: the awaiting task is cancelled at once; a call still
    queued never runs; a running one finishes in the background and its
    result is dropped.
    """
    executor = workers if workers is not None else default_workers()
    library = sniffio.current_async_library()
    inbox = _inbox(library)
    if library == "asyncio":
        waiter = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not waiter.done():
                waiter.set_result(None)

        job = Job(fn, args, kwargs, lambda _job: inbox.deliver(wake))
        no_async_library(job.context)
        executor.submit_job(s, job)
        try:
            await waiter
        except BaseException:
            job.cancelled = True
            raise
    else:
        event = anyio.Event()
        job = Job(fn, args, kwargs, lambda _job: inbox.deliver(event.set))
        no_async_library(job.context)
        executor.submit_job(s, job)
        try:
            await event.wait()
        except BaseException:
            job.cancelled = True
            raise
    error = job.error
    if error is not None:
        job.error = None
        try:
            raise error
        finally:
            del error
    result: _T = job.result
    return result


# -- network ------------------------------------------------------------------------


def socket_in(
    s: HasHandle,
    family: int = socket.AF_INET,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
) -> socket.socket:
    """A non-blocking socket that lives in ``s``'s netns, made on the
    calling thread (a ``setns`` into the netns and back: microseconds, no
    thread hop). Usable from the event loop like any socket. In rootless
    mode, where the calling thread could not come back, a worker makes it."""
    try:
        sock = call_in_netns(s, socket.socket, family, type, proto)
    except UnsupportedKindError as exc:
        if exc.errno != errno.EPERM:
            raise
        # The calling thread could not come back (rootless mode): a worker,
        # which never has to, makes the socket instead (a thread hop).
        sock = default_workers().run_sync(s, socket.socket, family, type, proto)
    sock.setblocking(False)
    return sock


def call_in_netns(s: HasHandle, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``fn`` on the calling thread inside ``s``'s netns only (the other
    kinds untouched), e.g. to make a socket there. A socket belongs to the
    netns it was made in, whatever thread uses it later."""
    if not s.handle.bits & int(Kind.NET):
        raise KindError(
            errno.EINVAL,
            syscall="socket",
            kind=Kind.NET,
            detail=f"the set holds no network namespace ({s.handle.kinds})",
        )
    return call_inline(s, Kind.NET, fn, *args, **kwargs)


async def resolve_in(
    s: HasHandle, host: str | None, port: int | str | None, *, type: int, flags: int = 0
) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` on a worker inside ``s``: the resolver's files and
    sockets are those of the set (asyncio's and anyio's ``getaddrinfo`` run
    on executor threads outside it)."""
    infos: list[tuple[Any, ...]] = await run_in(
        None, s, socket.getaddrinfo, host, port, 0, type, 0, flags
    )
    return infos


async def connect_tcp_in(s: HasHandle, host: str, port: int) -> anyio.abc.SocketStream:
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
    if error is not None and error.errno == errno.ENETUNREACH and _is_loopback(infos):
        raise from_errno(
            errno.ENETUNREACH,
            syscall="connect",
            kind=Kind.NET,
            path=f"{host}:{port}",
            detail="lo is down in this set; hint: make it with "
            "NamespaceSet.unshare(..., loopback=True), or run nspool.net.loopback_up in it",
        ) from error
    raise error if error is not None else OSError(f"no address for {host}:{port}")


def _is_loopback(infos: Sequence[tuple[Any, ...]]) -> bool:
    """Whether every address ``getaddrinfo`` gave is a loopback one."""
    try:
        return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)
    except ValueError:
        return False


async def create_tcp_listener_in(
    s: HasHandle,
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


class _Pipe:
    """One end of a pipe to or from a process, used on the event loop: the
    fd is non-blocking and waiting uses the loop's readiness (no thread)."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self._fd = fd

    async def aclose(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            anyio.notify_closing(fd)
            os.close(fd)
        await anyio.lowlevel.checkpoint()


class _PipeReceiveStream(_Pipe, anyio.abc.ByteReceiveStream):
    """The read end of a pipe from a process."""

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while True:
            if self._fd < 0:
                raise anyio.ClosedResourceError
            await anyio.lowlevel.checkpoint_if_cancelled()
            try:
                data = os.read(self._fd, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._fd)
                continue
            if not data:
                raise anyio.EndOfStream
            return data


class _PipeSendStream(_Pipe, anyio.abc.ByteSendStream):
    """The write end of a pipe to a process."""

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while True:
            if self._fd < 0:
                raise anyio.ClosedResourceError
            await anyio.lowlevel.checkpoint_if_cancelled()
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue
            except BrokenPipeError as exc:
                raise anyio.BrokenResourceError from exc
            if not view:
                return


def _take_fd(pipe: IO[bytes]) -> int:
    """The fd of one of ``Popen``'s pipe file objects, which is closed: the
    streams own the fd from then on."""
    fd = os.dup(pipe.fileno())
    pipe.close()
    return fd


def _close_pidfd(holder: list[int]) -> None:
    fd, holder[0] = holder[0], -1
    if fd >= 0:
        os.close(fd)


class NamespaceProcess(anyio.abc.Process):
    """A process started inside a namespace set, as ``anyio.open_process``
    returns one: ``stdin``/``stdout``/``stderr`` streams (for ``PIPE``),
    ``wait()``, ``terminate()``, ``kill()``, ``send_signal()``, and
    ``async with`` to close its streams and wait for it.

    Its exit is awaited through a pidfd on the event loop: no thread waits
    for it. Methods are called on the event loop thread.
    """

    def __init__(self, popen: subprocess.Popen[bytes], pidfd: int) -> None:
        self._popen = popen
        self._pidfd = [pidfd]
        self._closer = weakref.finalize(self, _close_pidfd, self._pidfd)
        self._waiting = anyio.Lock()
        self._stdin = _PipeSendStream(_take_fd(popen.stdin)) if popen.stdin else None
        self._stdout = _PipeReceiveStream(_take_fd(popen.stdout)) if popen.stdout else None
        self._stderr = _PipeReceiveStream(_take_fd(popen.stderr)) if popen.stderr else None
        popen.stdin = popen.stdout = popen.stderr = None

    async def wait(self) -> int:
        """Wait for the process to exit and return its exit code (negative:
        killed by that signal). The process is reaped.

        Cancellation: only the wait is cancelled; the process runs on."""
        async with self._waiting:  # one task at a time waits on the pidfd
            while self._popen.poll() is None:
                await anyio.wait_readable(self._pidfd[0])
            if self._pidfd[0] >= 0:
                anyio.notify_closing(self._pidfd[0])
            self._closer()
        return self._popen.returncode

    def terminate(self) -> None:
        self._popen.terminate()

    def kill(self) -> None:
        self._popen.kill()

    def send_signal(self, signal: int) -> None:
        self._popen.send_signal(signal)

    async def aclose(self) -> None:
        """Close the streams, then wait for the process to exit.

        Cancellation: if the wait is cancelled, the process is killed and
        reaped before the cancellation goes on."""
        with anyio.CancelScope(shield=True) as scope:
            for stream in (self._stdin, self._stdout, self._stderr):
                if stream is not None:
                    await stream.aclose()
            scope.shield = False
            try:
                await self.wait()
            except BaseException:
                scope.shield = True
                self.kill()
                await self.wait()
                raise

    @property
    def pid(self) -> int:
        """The process's pid as the event loop's pid namespace sees it."""
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    @property
    def stdin(self) -> anyio.abc.ByteSendStream | None:
        return self._stdin

    @property
    def stdout(self) -> anyio.abc.ByteReceiveStream | None:
        return self._stdout

    @property
    def stderr(self) -> anyio.abc.ByteReceiveStream | None:
        return self._stderr


Command = (
    str
    | bytes
    | os.PathLike[str]
    | os.PathLike[bytes]
    | Sequence[str | bytes | os.PathLike[str] | os.PathLike[bytes]]
)
"""A command as anyio takes it: a string for the shell, or an argv."""


class ProcessOptions(TypedDict, total=False):
    """The keyword options of :func:`open_process_in` and
    :func:`run_process_in` besides the standard streams, as
    ``subprocess.Popen`` (and anyio) take them."""

    cwd: str | bytes | os.PathLike[str] | os.PathLike[bytes] | None
    env: Mapping[str, str] | None
    start_new_session: bool
    pass_fds: Sequence[int]
    user: str | int | None
    group: str | int | None
    extra_groups: Iterable[str | int] | None
    umask: int


async def open_process_in(
    s: HasHandle,
    command: Command,
    *,
    stdin: int | IO[Any] | None = subprocess.PIPE,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    **options: Unpack[ProcessOptions],
) -> NamespaceProcess:
    """Start ``command`` inside ``s``, as ``anyio.open_process`` does
    outside: a string runs through ``/bin/sh``, a sequence is the argv.

    The process is forked from a worker thread that has entered the set, so
    it starts in all of the set's namespaces, pid and time included, never
    in the event loop's (the bug to avoid is python-trio/trio#3360). In a
    new pid namespace it is PID 2 or later: PID 1 is the set's init, which
    keeps the namespace alive and reaps orphans for the set's whole life. In
    a mount namespace it sees the set's mounts, and ``cwd`` is looked up
    there. Only the fork runs on the worker; pipes are read and the exit is
    awaited on the event loop, with no thread per process.

    Cancellation: if cancelled while starting, a process that did start is
    killed and reaped. Use ``async with`` on the result so that a cancelled
    ``wait`` kills and reaps it too.
    """
    popen_options: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    if "env" in popen_options:
        popen_options["env"] = dict(popen_options["env"])
    shell = isinstance(command, (str, bytes))
    args: Any = command if shell or isinstance(command, os.PathLike) else list(command)
    executor = default_workers()
    # A thread cannot join a user or time namespace other than its own, and
    # without privileges in its own user namespace it cannot join those a
    # user namespace owns: then the process joins the set itself, user
    # first, before exec; the worker joins only the pid namespace (a
    # process's own setns into one would reach only its children).
    h = s.handle
    with h.borrow():
        ids = dict(h.ids_of_acquired())
    home_ids = executor.home_ids
    beyond = any(k in ids and ids[k] != home_ids.get(k, ids[k]) for k in (Kind.USER, Kind.TIME))
    inner: HasHandle | None = s
    own: dict[Kind, int] = {}
    if beyond:
        inner = h.dup(Kind.PID) if Kind.PID in ids else None
        try:
            with h.borrow(h.kinds & ~Kind.PID) as fds:
                own = dup_fds(fds)
        except BaseException:
            if inner is not None:
                inner.handle.close()
            raise
        argv = ["/bin/sh", "-c", os.fsdecode(args)] if shell else [os.fspath(a) for a in args]
        order = [k for k in SETNS_ORDER if k in own]
        spec = ",".join(f"{own[k]}:{int(k)}" for k in order)
        # cwd is looked up after joining: a setns into a mount namespace
        # moves the process to its root.
        cwd = os.fsdecode(popen_options.pop("cwd", "") or "")
        args = [_sys.python(), "-I", "-S", _sys.child_program("_enter_child.py"), spec, cwd, *argv]
        shell = False
        popen_options["pass_fds"] = (*popen_options.get("pass_fds", ()), *own.values())

    def start() -> tuple[subprocess.Popen[bytes], int]:
        try:
            popen = subprocess.Popen(
                args,
                shell=shell,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                **popen_options,
            )
        except OSError as exc:
            ended = fork_error(h, exc)  # ENOMEM: the set's pid namespace has ended
            if ended is exc:
                raise
            raise ended from exc
        try:
            # The child is ours and unreaped, so its pid cannot be reused yet.
            return popen, _sys.pidfd_open(popen.pid)
        except BaseException:
            popen.kill()
            popen.wait()
            _close_popen_pipes(popen)
            raise

    def discard(started: tuple[subprocess.Popen[bytes], int]) -> None:
        popen, pidfd = started
        popen.kill()
        popen.wait()
        _close_popen_pipes(popen)
        os.close(pidfd)

    try:
        future = executor.submit(start) if inner is None else executor.submit_in(inner, start)
    except BaseException:
        if own:
            _close_all(inner, own)
        raise
    if own:
        # The child has its own copies once started (or never starts): ours
        # close when the call is done, even if this wait is cancelled.
        future.add_done_callback(lambda _f: _close_all(inner, own))
    await wait_done(future, lambda: None if future.exception() else discard(future.result()))
    popen, pidfd = future.result()
    return NamespaceProcess(popen, pidfd)


def _close_all(inner: HasHandle | None, own: Mapping[Kind, int]) -> None:
    if inner is not None:
        inner.handle.close()
    for fd in own.values():
        os.close(fd)


def _close_popen_pipes(popen: subprocess.Popen[bytes]) -> None:
    for pipe in (popen.stdin, popen.stdout, popen.stderr):
        if pipe is not None:
            pipe.close()


async def run_process_in(
    s: HasHandle,
    command: Command,
    *,
    input: bytes | None = None,
    stdin: int | IO[Any] | None = None,
    stdout: int | IO[Any] | None = subprocess.PIPE,
    stderr: int | IO[Any] | None = subprocess.PIPE,
    check: bool = True,
    **options: Unpack[ProcessOptions],
) -> subprocess.CompletedProcess[bytes]:
    """Run ``command`` to completion inside ``s`` and return its output, as
    ``anyio.run_process`` does outside; the process starts as in
    :func:`open_process_in`. ``input`` is written to its stdin; output is
    read on the event loop.

    Cancellation: the process is killed and reaped, then the cancellation
    goes on. With ``check``, a non-zero exit raises
    :class:`subprocess.CalledProcessError`.
    """
    if stdin is not None and input is not None:
        raise ValueError("only one of stdin and input is allowed")
    output: list[bytes | None] = [None, None]

    async def drain(stream: anyio.abc.ByteReceiveStream, index: int) -> None:
        chunks = [chunk async for chunk in stream]
        output[index] = b"".join(chunks)

    async with (
        await open_process_in(
            s,
            command,
            stdin=subprocess.PIPE if input else stdin,
            stdout=stdout,
            stderr=stderr,
            **options,
        ) as process,
        anyio.create_task_group() as tg,
    ):
        if process.stdout is not None:
            tg.start_soon(drain, process.stdout, 0)
        if process.stderr is not None:
            tg.start_soon(drain, process.stderr, 1)
        if process.stdin is not None and input:
            await process.stdin.send(input)
            await process.stdin.aclose()
        await process.wait()
    returncode = process.returncode
    assert returncode is not None
    if check and returncode:
        raise subprocess.CalledProcessError(returncode, command, output[0], output[1])
    return subprocess.CompletedProcess(command, returncode, output[0], output[1])
