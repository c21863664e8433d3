"""``nspool doctor``: what this kernel and these privileges let nspool do.

Kind by kind: create a namespace (``NamespaceSet.unshare``), join one from
a throwaway thread, and persist one with a bind mount
(``NamespaceSet.mount_ns``). Everything it makes is closed, unmounted or
removed before it returns; the only threads it starts are joined. It also
tries rootless mode (:func:`nspool.enter_user_namespace`, then a netns and a
pool) in a child process of this interpreter, since that needs a process
with one thread, and lists the syscall backends and optional parts found.
Drawn with rich when there is a console, else as plain text.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from importlib import metadata
from importlib.util import find_spec
from typing import TYPE_CHECKING

# rich is imported where it draws (the `cli` extra): nspool works without it.
if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

from . import _native, _sys
from ._thread_ns import enter
from .kinds import SETNS_ORDER, Kind
from .nsset import NamespaceSet

__all__ = ["DoctorReport", "KindReport", "doctor", "installed", "plain_table", "probe", "render"]

#: A cell for something that works.
YES = "yes"
#: The optional packages doctor looks for, and what each is for.
OPTIONAL = {
    "pyroute2": "nspool.net.veth (the `net` extra), bench baselines",
    "matplotlib": "bench plots",
    "rich": "the `cli` extra: demo and bench, doctor's tables",
    "trio": "the async API under Trio",
}
#: What a report not probed says of the compiled helper (``probe`` says
#: which path is in use, and why: :func:`helper`).
HELPER = "not built / none"
#: How long the rootless-mode child may take.
ROOTLESS_TIMEOUT = 60.0
#: How to turn rootless mode on, as doctor prints it.
ROOTLESS_HOWTO = (
    "call nspool.enter_user_namespace() first thing in the program, "
    "while the process has one thread"
)

#: The rootless-mode check, run by this interpreter as a child process: it
#: enters a user namespace of its own, then makes a netns and runs a call in
#: it, then a pool call; its last stdout line is ``ok`` if all of that worked.
_ROOTLESS_SCRIPT = """
import socket
import nspool
from nspool import Kind, NamespaceSet, Pool

def talk():
    from nspool.net import loopback_up
    loopback_up()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()):
            pass
    return True

nspool.enter_user_namespace()
with NamespaceSet.unshare(Kind.NET) as made:
    assert made.run_sync(talk)
with Pool(Kind.NET, warm=1) as pool:
    assert pool.run_sync(talk)
nspool.default_workers().shutdown()
print("ok")
"""
#: Doctor's plain-text table (without rich): the column separator.
PLAIN_SEPARATOR = " | "
#: Short reasons for the refusals doctor expects, by (step, kind, errno); a
#: ``None`` kind matches any kind. Anything else is shown with ``strerror``.
_REASONS: dict[tuple[str, Kind | None, int], str] = {
    ("join", Kind.TIME, errno.EUSERS): "process is multi-threaded",
    ("join", Kind.USER, errno.EINVAL): "process is multi-threaded",
    ("persist", Kind.MNT, errno.EINVAL): "cannot bind a mount ns into itself or older",
    ("create", None, errno.EINVAL): "not supported by this kernel",
    ("create", None, errno.ENOSPC): "namespace limit reached (/proc/sys/user)",
    ("create", None, errno.EPERM): "needs CAP_SYS_ADMIN",
    ("join", None, errno.EPERM): "needs CAP_SYS_ADMIN",
    ("persist", None, errno.EPERM): "needs CAP_SYS_ADMIN",
}


def _refusal(step: str, kind: Kind, exc: OSError) -> str:
    """The ``no: ERRNO reason`` cell for ``exc`` raised by ``step`` on ``kind``."""
    err = exc.errno or errno.EIO
    name = errno.errorcode.get(err, f"errno {err}")
    reason = _REASONS.get((step, kind, err)) or _REASONS.get((step, None, err))
    return f"no: {name} {reason or os.strerror(err)}"


@dataclasses.dataclass(frozen=True)
class KindReport:
    """What doctor found for one kind: each cell is ``"yes"``,
    ``"no: ERRNO reason"``."""

    kind: Kind
    create: str
    join: str
    persist: str


@dataclasses.dataclass(frozen=True)
class DoctorReport:
    """Everything ``nspool doctor`` prints."""

    kernel: str
    python: str
    backend: str
    root: bool
    pidfd_open: str
    kinds: tuple[KindReport, ...]
    #: The syscall backends this Python offers (``backend`` is one).
    backends: tuple[str, ...] = ()
    #: Whether rootless mode works: ``"yes"`` or ``"no: reason"``.
    rootless: str = "no: not tried"
    #: Optional packages by name: their version, or ``"missing"``.
    optional: tuple[tuple[str, str], ...] = ()
    #: The compiled helper: which path is in use, and why.
    helper: str = HELPER

    def row(self, kind: Kind) -> KindReport:
        """The report of single kind ``kind``."""
        for report in self.kinds:
            if report.kind is kind:
                return report
        raise KeyError(kind)

    @property
    def ok(self) -> bool:
        """Whether nspool can do its main job here: create and join a netns."""
        net = self.row(Kind.NET)
        return net.create == YES and net.join == YES

    @property
    def usable(self) -> bool:
        """Whether nspool can work here at all: directly, or in rootless mode."""
        return self.ok or self.rootless == YES

    @property
    def verdict(self) -> str:
        """The last line doctor prints."""
        if self.ok:
            return "net namespaces can be created and joined: nspool can work here"
        if self.rootless == YES:
            return (
                "net namespaces cannot be created and joined with these privileges, "
                "but rootless mode works: nspool can work here in rootless mode"
            )
        return (
            "net namespaces cannot be created and joined, and rootless mode does not "
            "work: nspool cannot work here"
        )


def probe() -> DoctorReport:
    """Try everything doctor reports, on this process, and return the result.

    Blocks the calling thread while it works (well under a second here:
    creating a pid namespace starts and ends an init process, and the
    rootless-mode check starts an interpreter). The calling thread's
    namespaces are untouched: creating happens on nspool's helper thread,
    joining on a throwaway thread that is joined before this returns.
    """
    return DoctorReport(
        kernel=os.uname().release,
        python=platform.python_version(),
        backend=_sys.backend(),
        root=os.geteuid() == 0,
        pidfd_open=_check_pidfd_open(),
        kinds=tuple(_probe_kind(kind) for kind in SETNS_ORDER),
        backends=_sys.available_backends(),
        rootless=_check_rootless(),
        optional=tuple((name, _version(name)) for name in OPTIONAL),
        helper=helper(),
    )


def helper() -> str:
    """Which path nspool takes (:mod:`nspool._native`): the compiled helper's
    parts in use, or the pure-Python fallback, and why."""
    parts = [name for name, used in (("pid init", _native.PIDINIT), ("hop", _native.EXT)) if used]
    if _native.AVAILABLE:
        return "in use (pid init, hop primitives)"
    if not parts:
        return f"pure Python ({_native.REASON})"
    return f"partly in use ({', '.join(parts)}); pure Python for the rest ({_native.REASON})"


def installed(name: str) -> bool:
    """Whether package ``name`` can be imported (without importing it)."""
    try:
        return find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _version(name: str) -> str:
    """The installed version of package ``name``, or ``"missing"``."""
    if not installed(name):
        return "missing"
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "present"


def _interpreters() -> list[str]:
    """Interpreters that can run the rootless-mode child: this one, then a
    ``pythonX.Y`` of the same version on ``PATH`` (for a user who could not
    start this one again: a venv whose base interpreter lives in a directory
    private to another user)."""
    found = [sys.executable] if sys.executable else []
    for name in (f"python{sys.version_info[0]}.{sys.version_info[1]}",):
        other = shutil.which(name)
        if other is not None and os.path.realpath(other) not in map(os.path.realpath, found):
            found.append(other)
    return found


def _check_rootless() -> str:
    """Try rootless mode in a child process (it needs a process with one
    thread): ``"yes"``, or ``"no: "`` and the child's last error line. The
    child uses this process's syscall backend and import path."""
    env = {
        **os.environ,
        "NSPOOL_SYSCALLS": _sys.backend(),
        "PYTHONPATH": os.pathsep.join([entry for entry in sys.path if entry]),
    }
    refusal = "no: no Python interpreter to run the check"
    for interpreter in _interpreters():
        try:
            done = subprocess.run(
                [interpreter, "-c", _ROOTLESS_SCRIPT],
                capture_output=True,
                text=True,
                env=env,
                cwd="/",
                timeout=ROOTLESS_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"no: the check did not finish in {ROOTLESS_TIMEOUT:g}s"
        except OSError as exc:
            refusal = f"no: cannot start {interpreter}: {exc.strerror}"
            continue
        lines = done.stdout.splitlines()
        if done.returncode == 0 and lines and lines[-1] == "ok":
            return YES
        errors = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        return "no: " + (errors[-1] if errors else f"exit status {done.returncode}")
    return refusal


def _check_pidfd_open() -> str:
    try:
        pidfd = _sys.pidfd_open(os.getpid())
    except OSError as exc:
        err = exc.errno or errno.EIO
        return f"no: {errno.errorcode.get(err, f'errno {err}')} {os.strerror(err)}"
    os.close(pidfd)
    return YES


def _probe_kind(kind: Kind) -> KindReport:
    """Create, join and persist one kind. Join and persist use the created
    set when creation worked (a mount namespace can only be bound into an
    older one, so the caller's own would fail), else the caller's own."""
    made: NamespaceSet | None = None
    try:
        made = NamespaceSet.unshare(kind)
        create = YES
    except OSError as exc:
        create = _refusal("create", kind, exc)
    try:
        target = made if made is not None else NamespaceSet.current(kind)
    except OSError as exc:
        cell = _refusal("join", kind, exc)
        return KindReport(kind, create, cell, cell)
    with target:
        join = _check_join(kind, target)
        persist = _check_persist(kind, target)
    return KindReport(kind, create, join, persist)


def _check_join(kind: Kind, target: NamespaceSet) -> str:
    """Enter ``target`` on a plain thread that exits afterwards, and check
    that the thread is then in ``target``'s namespace."""
    fds = target.fds(kind)
    wanted = target.id(kind)
    outcome: list[str] = []

    def run() -> None:
        try:
            enter(fds)
            now = os.stat(f"/proc/thread-self/ns/{kind.for_children_name}").st_ino
        except OSError as exc:
            outcome.append(_refusal("join", kind, exc))
            return
        outcome.append(YES if now == wanted else f"no: thread in [{now}], not [{wanted}]")

    thread = threading.Thread(target=run, name=f"nspool-doctor-join-{kind.proc_name}")
    thread.start()
    thread.join()
    return outcome[0] if outcome else "no: the join thread died"


def _check_persist(kind: Kind, target: NamespaceSet) -> str:
    """Bind-mount ``target``'s namespace in a fresh temporary directory,
    unmount it, and remove the directory."""
    directory = tempfile.mkdtemp(prefix="nspool-doctor-")
    path = os.path.join(directory, kind.proc_name)
    try:
        target.mount_ns(kind, path)
        NamespaceSet.unmount(path)
        return YES
    except OSError as exc:
        return _refusal("persist", kind, exc)
    finally:
        if os.path.lexists(path):  # only if unmount failed half-way
            with contextlib.suppress(OSError):
                NamespaceSet.unmount(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)


#: The title and the columns of doctor's table.
TABLE_TITLE = "what this kernel and these privileges allow"
TABLE_COLUMNS = ("kind", "create", "join", "persist")


def _cell(value: str) -> Text:
    from rich.text import Text

    style = "green" if value == YES else "red"
    return Text(value, style=style)


def _rich_table(report: DoctorReport) -> Table:
    """Doctor's table of kinds as a rich ``Table``."""
    from rich.table import Table

    table = Table(title=TABLE_TITLE, title_justify="left")
    for name in TABLE_COLUMNS:
        table.add_column(name, style="bold" if name == TABLE_COLUMNS[0] else None)
    for row in report.kinds:
        table.add_row(row.kind.proc_name, _cell(row.create), _cell(row.join), _cell(row.persist))
    return table


def plain_table(report: DoctorReport) -> list[str]:
    """Doctor's table of kinds as lines of plain text (no rich): a title,
    a header, then one ``kind | create | join | persist`` line a kind."""
    rows = [TABLE_COLUMNS] + [
        (row.kind.proc_name, row.create, row.join, row.persist) for row in report.kinds
    ]
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    lines = [
        PLAIN_SEPARATOR.join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        for cells in rows
    ]
    return [f"{TABLE_TITLE}:", *(line.rstrip() for line in lines)]


def render(report: DoctorReport, console: Console | None) -> None:
    """Print ``report``: a summary line, a table of kinds, then a line each
    for the backends, rootless mode, the optional parts and the verdict. On
    ``console`` (rich), or as plain text on stdout if it is ``None``."""

    def say(line: str) -> None:  # one line each, however narrow the console
        if console is None:
            print(line)
        else:
            console.print(line, markup=False, highlight=False, soft_wrap=True)

    say(
        f"kernel {report.kernel}  ·  Python {report.python}  ·  syscalls: {report.backend}"
        f"  ·  root: {'yes' if report.root else 'no'}  ·  pidfd_open: {report.pidfd_open}"
    )
    if console is None:
        for line in plain_table(report):
            say(line)
    else:
        console.print(_rich_table(report))
    lines = [
        f"syscall backend: {report.backend} (available: {', '.join(report.backends)})",
        f"rootless mode: {report.rootless}"
        + (f"; to use it, {ROOTLESS_HOWTO}" if report.rootless == YES else ""),
        "optional: "
        + "  ·  ".join(f"{name} {version}" for name, version in report.optional)
        + f"  ·  compiled helper: {report.helper}",
        report.verdict,
    ]
    for line in lines:
        say(line)


def doctor(args: argparse.Namespace, console: Console | None) -> int:
    """``nspool doctor``: 0 if a netns can be created and joined, or rootless
    mode works, else 1. Plain text if ``console`` is ``None`` (no rich)."""
    report = probe()
    render(report, console)
    return 0 if report.usable else 1
