"""``python -m nspool doctor``: as a subprocess, and in-process under the
autouse ``no_leaks`` fixture (fds, threads, mounts)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import pytest

from nspool import Kind, cli
from nspool.kinds import SETNS_ORDER

NET_CELLS = ("create", "join", "persist")


def run_cli(*args: str, backend: str | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m nspool ARGS`` with piped, uncoloured output."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    env["NO_COLOR"] = "1"
    if backend is not None:
        env["NSPOOL_SYSCALLS"] = backend
    return subprocess.run(
        [sys.executable, "-m", "nspool", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def table_rows(output: str) -> dict[str, list[str]]:
    """The table's rows by kind name: ``{"net": ["yes", "yes", "yes"]}``.

    Cells are split on rich's box edges (``│``, or ``|`` where the output
    encoding has no box characters).
    """
    names = {k.proc_name for k in SETNS_ORDER}
    rows: dict[str, list[str]] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line)]
        cells = [c for c in cells if c]
        if cells and cells[0] in names:
            rows[cells[0]] = cells[1:]
    return rows


def children() -> set[str]:
    """Pids of this process's child processes (of every thread)."""
    found: set[str] = set()
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as f:
            found.update(f.read().split())
    return found


def thread_ns(name: str) -> str:
    """The calling thread's namespace link, e.g. ``net:[4026531840]``."""
    return os.readlink(f"/proc/thread-self/ns/{name}")


def doctor_dirs() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("nspool-doctor-")}


def test_doctor_subprocess_shows_every_kind(syscall_backend: str) -> None:
    """The table has one row per kind, in SETNS_ORDER, each with three
    cells; net is created, joined and persisted; the exit code is 0."""
    result = run_cli("doctor", backend=syscall_backend)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table_rows(result.stdout)
    assert list(rows) == [k.proc_name for k in SETNS_ORDER], result.stdout
    for name, cells in rows.items():
        assert len(cells) == 3, f"{name}: {cells}"
        for cell in cells:
            assert cell == cli.YES or cell.startswith("no: "), cell
    assert rows["net"] == ["yes", "yes", "yes"], result.stdout
    assert f"syscalls: {syscall_backend}" in result.stdout
    assert f"kernel {os.uname().release}" in result.stdout


def test_doctor_subprocess_explains_refusals() -> None:
    """The kernel refuses time (EUSERS) and user (EINVAL) joins in a
    multi-threaded process: each is shown with its reason. Creating a user
    namespace works (in a helper process)."""
    rows = table_rows(run_cli("doctor").stdout)
    assert rows["user"][0] == cli.YES
    assert rows["user"][1].startswith("no: EINVAL "), rows["user"]
    assert rows["time"][1].startswith("no: EUSERS "), rows["time"]
    assert "multi-threaded" in rows["time"][1]


def test_doctor_in_process_returns_0_and_leaves_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """main(["doctor"]) returns 0 and leaves no fd, thread or mount (the
    no_leaks fixture), no child process, no temporary directory, and the
    calling thread in its own namespaces."""
    before_ns = {k: thread_ns(k.for_children_name) for k in SETNS_ORDER}
    before_children, before_dirs = children(), doctor_dirs()
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert table_rows(out)["net"] == ["yes", "yes", "yes"], out
    assert {k: thread_ns(k.for_children_name) for k in SETNS_ORDER} == before_ns
    assert children() <= before_children
    assert doctor_dirs() <= before_dirs


def test_probe_report() -> None:
    """probe() reports every kind once, in SETNS_ORDER, and says net works."""
    report = cli.probe()
    assert [r.kind for r in report.kinds] == list(SETNS_ORDER)
    net = report.row(Kind.NET)
    assert (net.create, net.join, net.persist) == (cli.YES, cli.YES, cli.YES)
    assert report.ok
    assert report.row(Kind.USER).create == cli.YES
    assert report.root == (os.geteuid() == 0)
    assert report.pidfd_open == cli.YES


def test_unknown_subcommand_exits_non_zero() -> None:
    """An unknown subcommand is a usage error: non-zero exit, a message."""
    result = run_cli("no-such-command")
    assert result.returncode != 0
    assert "invalid choice" in result.stderr


def test_usage_errors_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    """main() returns argparse's code instead of raising SystemExit."""
    assert cli.main(["no-such-command"]) == 2
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    assert "doctor" in capsys.readouterr().out


def test_demo_and_exec_help(capsys: pytest.CaptureFixture[str]) -> None:
    """``demo --help`` names the ``ip netns`` variant it runs; ``exec --help``
    lists its namespace options; neither names a file not in the repository."""
    assert cli.main(["demo", "--help"]) == 0
    demo_help = " ".join(capsys.readouterr().out.split())
    assert "`ip netns add` + `ip netns del`" in demo_help
    assert cli.main(["exec", "--help"]) == 0
    exec_help = capsys.readouterr().out
    for option in ("--net", "--uts", "--ipc", "--mnt", "--pid", "--all", "--fresh"):
        assert option in exec_help
    assert "DESIGN" not in demo_help + exec_help


#: The modules that draw with rich (the `cli` extra); every other module of
#: nspool, the command line's own included, imports without it.
RICH_MODULES = {"nspool.demo", "nspool._measure", "nspool.__main__"}

#: Run as ``python -c``: rich blocked (as if not installed), then ``cli.main``
#: with the arguments that follow; exits with its status.
WITHOUT_RICH = (
    "import sys\n"
    "sys.modules['rich'] = None\n"
    "from nspool import cli\n"
    "raise SystemExit(cli.main(sys.argv[1:]))\n"
)


#: Run as ``python -c``: import nspool, then every module of it but
#: RICH_MODULES, checking after each that rich is still not imported; prints
#: how many modules it found.
NO_RICH_IMPORTED = f"""
import importlib, pkgutil, sys
import nspool
assert "rich" not in sys.modules, "import nspool imported rich"
names = [m.name for m in pkgutil.iter_modules(nspool.__path__, "nspool.")]
for name in sorted(set(names) - set({sorted(RICH_MODULES)!r})):
    importlib.import_module(name)
    assert "rich" not in sys.modules, name + " imported rich"
print(len(names))
"""


def python_c(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -c SCRIPT ARGS`` in a fresh interpreter, output captured."""
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def run_without_rich(*args: str) -> subprocess.CompletedProcess[str]:
    """``nspool ARGS`` in a fresh interpreter where ``import rich`` fails."""
    return python_c(WITHOUT_RICH, *args)


def test_library_does_not_import_rich() -> None:
    """``import nspool`` and every library module (the command line's too)
    leave rich unimported: it is the optional `cli` extra."""
    done = python_c(NO_RICH_IMPORTED)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > len(RICH_MODULES) + 5, done.stdout


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_without_rich_a_command_says_how_to_install_it(command: str) -> None:
    """``demo`` and ``bench`` without rich: exit status 2 and one line on
    stderr naming the command and the fix, no traceback; ``--help`` works."""
    done = run_without_rich(command)
    assert done.returncode == cli.RICH_MISSING_STATUS == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"nspool {command}: needs rich"), lines
    assert "pip install 'nspool[cli]'" in lines[0]
    helped = run_without_rich(command, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "usage:" in helped.stdout


def test_doctor_without_rich_prints_plain_text() -> None:
    """``doctor`` without rich prints the same table in plain text (cells
    split on ``|``), says rich is missing, and exits 0."""
    done = run_without_rich("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    rows = table_rows(done.stdout)
    assert list(rows) == [k.proc_name for k in SETNS_ORDER], done.stdout
    assert rows["net"] == ["yes", "yes", "yes"], done.stdout
    assert "rich missing" in done.stdout
    assert done.stdout.splitlines()[-1].endswith("nspool can work here")
