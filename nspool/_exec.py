"""``python -m nspool exec``: run a command inside existing or fresh namespaces.

Each ``--KIND TARGET`` names a namespace of that kind: a number is a pid
(``/proc/PID/ns/KIND``), a value with a ``/`` is a namespace file (a bind
mount such as ``/run/netns/blue``, ``/proc/PID/ns/net``), anything else is an
``ip netns`` name (network namespaces only). ``--all PID`` takes every
namespace of a process that differs from ours; ``--fresh KINDS`` makes new
ones (``net,uts``). The command is forked from a worker thread that entered
the set (:meth:`NamespaceSet.run_sync`), or, for a user or time namespace,
started by :meth:`NamespaceSet.open_process`, which joins those itself.

The command inherits stdin, stdout and stderr, and nothing else: every fd
nspool holds is close-on-exec and ``subprocess`` closes the rest. Signals
sent to ``nspool exec`` (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2,
SIGWINCH) are passed on to the command, but for one a terminal sends to
its whole foreground process group (Ctrl-C's SIGINT, SIGQUIT, SIGWINCH) when
nspool is in that group's foreground: the command, in the same group, has
it already. The exit status is the command's,
or ``128 + N`` if a signal ``N`` killed it, as a shell reports it; 125 if
nspool could not set the namespaces up, 127 if the command was not found,
126 if it could not be run. It starts in our working directory (in another
mount namespace: that path there, or its root if there is none).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from types import FrameType

import anyio

from .errors import NamespaceError
from .kinds import SETNS_ORDER, Kind
from .nsset import NamespaceSet

__all__ = ["FORWARDED", "add_arguments", "exec_main", "open_target", "run", "status_of"]

#: The signals passed on to the command.
FORWARDED = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
#: Exit statuses of nspool exec's own failures, as env(1) and nsenter use them.
SETUP_FAILED, CANNOT_RUN, NOT_FOUND = 125, 126, 127
#: The kinds with a ``--KIND`` option.
OPTION_KINDS = (Kind.NET, Kind.UTS, Kind.IPC, Kind.MNT, Kind.PID, Kind.CGROUP, Kind.TIME)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``nspool exec`` on ``parser``."""
    for kind in OPTION_KINDS:
        parser.add_argument(
            f"--{kind.proc_name}",
            metavar="NAME|PATH|PID" if kind is Kind.NET else "PATH|PID",
            help=f"join this {kind.proc_name} namespace"
            + (" (an `ip netns` name, a namespace file or a pid)" if kind is Kind.NET else ""),
        )
    parser.add_argument(
        "--all", metavar="PID", type=int, help="join every namespace of PID that differs from ours"
    )
    parser.add_argument(
        "--fresh", metavar="KINDS", help="make new namespaces of these kinds (e.g. net,uts)"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")


def open_target(kind: Kind, target: str) -> NamespaceSet:
    """The namespace of ``kind`` that ``target`` names: a pid, a path, or
    (for a network namespace) an ``ip netns`` name."""
    if target.isdigit():
        return NamespaceSet.from_pid(int(target), kind)
    if "/" in target:
        return NamespaceSet.from_path(target, kind)
    if kind is Kind.NET:
        return NamespaceSet.from_name(target)
    raise ValueError(f"--{kind.proc_name} {target!r}: give a pid or a namespace file")


@contextlib.contextmanager
def _target_set(args: argparse.Namespace) -> Iterator[NamespaceSet]:
    """One set of every namespace the options name, closed afterwards."""
    with contextlib.ExitStack() as stack:
        parts: list[NamespaceSet] = []
        if args.fresh:
            parts.append(stack.enter_context(NamespaceSet.unshare(args.fresh)))
        if args.all is not None:
            theirs = stack.enter_context(NamespaceSet.from_pid(args.all))
            ours = stack.enter_context(NamespaceSet.current())
            mine = ours.ids()
            differ = [k for k, i in theirs.ids().items() if mine.get(k) != i]
            if differ:
                kinds = Kind(sum(int(k) for k in differ))
                parts.append(stack.enter_context(theirs.dup(kinds)))
        for kind in OPTION_KINDS:
            target = getattr(args, kind.proc_name)
            if target is not None:
                parts.append(stack.enter_context(open_target(kind, target)))
        # Later options win: --net NAME over --all PID over --fresh.
        fds: dict[Kind, int] = {}
        for part in parts:
            fds.update(part.fds())
        copies: dict[Kind, int] = {}
        try:
            for kind in SETNS_ORDER:
                if kind in fds:
                    copies[kind] = os.dup(fds[kind])  # close-on-exec
        except BaseException:
            for fd in copies.values():
                os.close(fd)
            raise
        # The parts (a fresh pid namespace's init among them) stay open
        # until the command is done.
        yield stack.enter_context(NamespaceSet(copies))


def status_of(returncode: int) -> int:
    """The exit status a shell reports for a child's ``returncode``."""
    return 128 - returncode if returncode < 0 else returncode


@contextlib.contextmanager
def _forwarding(send: Callable[[int], None]) -> Iterator[Callable[[Callable[[int], None]], None]]:
    """Pass the signals of :data:`FORWARDED` to ``send`` while inside;
    signals that arrive before there is a command are kept and sent once
    one is set with the yielded function."""
    pending: list[int] = []
    target: list[Callable[[int], None]] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        if target:
            target[0](signum)
        else:
            pending.append(signum)

    def attach(sender: Callable[[int], None]) -> None:
        target.append(sender)
        while pending:
            sender(pending.pop(0))

    old = {sig: signal.signal(sig, handler) for sig in FORWARDED}
    try:
        yield attach
    finally:
        for sig, previous in old.items():
            signal.signal(sig, previous)


def _wait(popen: subprocess.Popen[bytes]) -> int:
    while True:
        try:
            return popen.wait()
        except InterruptedError:  # pragma: no cover - PEP 475 retries
            continue


#: Signals a terminal sends to its whole foreground process group.
TERMINAL_SIGNALS = frozenset({signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH})


def _terminal_delivers(signum: int) -> bool:
    """Whether ``signum`` is one a terminal sends to our process group (the
    command's) because we are its foreground: the command has it already,
    and passing it on would deliver it twice (Ctrl-C)."""
    if signum not in TERMINAL_SIGNALS:
        return False
    for fd in (0, 1, 2):
        try:
            return os.tcgetpgrp(fd) == os.getpgrp()
        except OSError:
            continue
    return False


def _send(popen: subprocess.Popen[bytes]) -> Callable[[int], None]:
    def send(signum: int) -> None:
        if _terminal_delivers(signum):
            return
        with contextlib.suppress(ProcessLookupError):
            popen.send_signal(signum)

    return send


def _cwd_in(s: NamespaceSet) -> str:
    """Our working directory, where the command starts: in another mount
    namespace, that path if it is a directory there, else its root."""
    cwd = os.getcwd()
    if Kind.MNT in s.kinds and not s.run_sync(os.path.isdir, cwd):
        return "/"
    return cwd


def run(s: NamespaceSet, command: Sequence[str]) -> int:
    """Run ``command`` inside ``s`` with this process's stdio and return the
    exit status a shell would report; signals are passed on meanwhile."""
    with _forwarding(lambda _sig: None) as attach:
        if s.kinds & (Kind.USER | Kind.TIME):
            return _run_async(s, command, attach)
        popen = s.run_sync(subprocess.Popen, list(command), close_fds=True, cwd=_cwd_in(s))
        attach(_send(popen))
        return status_of(_wait(popen))


def _run_async(
    s: NamespaceSet, command: Sequence[str], attach: Callable[[Callable[[int], None]], None]
) -> int:
    async def main() -> int:
        async with await s.open_process(
            # Looked up once joined (user namespaces cannot be entered by a worker).
            list(command),
            stdin=None,
            stdout=None,
            stderr=None,
            cwd=os.getcwd(),
        ) as process:

            def send(signum: int) -> None:
                if not _terminal_delivers(signum):
                    process.send_signal(signum)

            attach(send)
            return await process.wait()

    return status_of(anyio.run(main))


def exec_main(args: argparse.Namespace) -> int:
    """``nspool exec``: the exit status of the command, or 125 to 127 if it
    did not run (the reason on stderr)."""
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        print(
            "nspool exec: no command given (nspool exec [OPTIONS] -- CMD ARGS...)", file=sys.stderr
        )
        return SETUP_FAILED
    try:
        with _target_set(args) as s:
            try:
                return run(s, command)
            except FileNotFoundError as exc:
                print(f"nspool exec: {command[0]}: {exc.strerror}", file=sys.stderr)
                return NOT_FOUND
            except PermissionError as exc:
                print(f"nspool exec: {command[0]}: {exc.strerror}", file=sys.stderr)
                return CANNOT_RUN
    except (NamespaceError, ValueError) as exc:
        print(f"nspool exec: {exc}", file=sys.stderr)
        return SETUP_FAILED
