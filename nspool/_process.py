"""Processes started inside a set, driven from the event loop.

Owns :func:`open_process_in` and :func:`run_process_in` (what
``NamespaceSet.open_process`` and ``run_process`` do), the process they give
(:class:`NamespaceProcess`, as ``anyio.open_process`` returns one), its
pipes, and the option types (:class:`ProcessOptions`, :data:`Command`).

The process is forked from a worker thread that has entered the set (the
fork is a job awaited through :mod:`nspool._wait`), so it starts in all of
the set's namespaces, pid and time included, never in the event loop's;
where a thread cannot join (another user or time namespace) the process
joins the set itself before exec. Only the fork runs on the worker: pipes
are read and the exit is awaited on the event loop (a pidfd), with no
thread per process.

Cancellation: a process started by a cancelled start is killed and reaped
(if the fork was still queued, it never happens); a cancelled ``wait`` only
stops waiting, and ``aclose`` (``async with``) then kills and reaps it;
:func:`run_process_in` kills and reaps it before the cancellation goes on.
"""

from __future__ import annotations

import os
import subprocess
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any, TypedDict, Unpack

import anyio
import anyio.abc
import anyio.lowlevel

from . import _sys
from ._handle import HasHandle, dup_fds, fork_error, pid_namespace_ended_error
from ._wait import make_job, unwrap, wait_job
from .kinds import SETNS_ORDER, Kind
from .workers import default_workers

__all__ = [
    "Command",
    "NamespaceProcess",
    "OpenOptions",
    "ProcessOptions",
    "RunOptions",
    "open_process_in",
    "run_process_in",
]


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


class OpenOptions(ProcessOptions, total=False):
    """The keyword options of :func:`open_process_in` (and
    ``NamespaceSet.open_process``): the standard streams (each
    ``subprocess.PIPE`` unless given) and :class:`ProcessOptions`."""

    stdin: int | IO[Any] | None
    stdout: int | IO[Any] | None
    stderr: int | IO[Any] | None


class RunOptions(OpenOptions, total=False):
    """The keyword options of :func:`run_process_in` (and
    ``NamespaceSet.run_process``): ``input``, ``check`` (default ``True``),
    the standard streams (stdin default ``None``, stdout and stderr
    ``subprocess.PIPE``) and :class:`ProcessOptions`."""

    input: bytes | None
    check: bool


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

    Raises :class:`~nspool.PidNamespaceEndedError` if the set's pid
    namespace has ended (its init exited or was killed), before anything
    starts, or when the fork fails with ``ENOMEM`` for that reason.
    """
    if s.handle.pid_namespace_ended:
        raise pid_namespace_ended_error(s)
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

    job = make_job(start)

    def abandon() -> None:
        # The child has its own copies once started (or never starts): ours
        # close when the fork is done, even if the wait was cancelled.
        if own:
            _close_all(inner, own)
        if job.error is None:
            discard(job.result)

    try:
        await wait_job(executor, inner, job, abandon, stream=False)
    except BaseException:
        if job.cancelled and own:  # withdrawn: the fork never happens
            _close_all(inner, own)
        raise
    if own:
        _close_all(inner, own)
    popen, pidfd = unwrap(job)
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
