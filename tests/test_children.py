"""nspool's child programs are real module files: the pid namespace's init
(``_pidinit_child.py``), the user-namespace helper (``_userns_child.py``),
and the exec wrapper of processes that join a user or time namespace
(``_enter_child.py``).

Each is in the package (so ruff and mypy read it), imports only the standard
library (the helper also the init's file, its sibling), and run as
``python -I -S FILE`` with wrong arguments fails with a usage line and no
traceback. And a helper that hangs is given up on within ``HELPER_WAIT`` at
each step, with an error naming the step and its pid.
"""

from __future__ import annotations

import ast
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import nspool
from nspool import Kind, NamespaceError, NamespaceSet, _pidinit, _process, _sys, _userns, nsset

from .test_faults_nsset import bounded
from .test_userns import children

PACKAGE = Path(nspool.__file__).parent
CHILDREN = ["_pidinit_child.py", "_userns_child.py", "_enter_child.py", "_creator_child.py"]
#: Modules of the package a child program may import at run time (from its
#: own directory, put on sys.path by itself).
SIBLINGS = {"_pidinit_child"}

#: A helper's CONFIG that asks for nothing: it answers "R 0" at once.
NOTHING: dict[str, object] = {
    **dict.fromkeys(["user", "first", "mnt", "uts", "time", "pid"], 0),
    **dict.fromkeys(["propagation", "tmp_flags", "proc"], 0),
    **{"tmp": False, "tmp_data": "", "offsets": "", "hostname": None, "domainname": None},
    "init": "",
    "join": [],
}

#: Wrong argument lists, per child program.
BAD_ARGS = {
    "_pidinit_child.py": [[], ["x"], ["-1"], ["1", "2"], [""]],
    "_userns_child.py": [
        [],
        ["not json"],
        ["[]"],
        [json.dumps(NOTHING), "more"],
        [json.dumps({**NOTHING, "join": [[3]]})],
        [json.dumps({**NOTHING, "join": 3})],
        [json.dumps({**NOTHING, "user": "x"})],
        [json.dumps({**NOTHING, "hostname": 5})],
        [json.dumps({k: v for k, v in NOTHING.items() if k != "offsets"})],
    ],
    "_enter_child.py": [[], ["3:4", ""], ["3:x", "", "true"], ["3", "", "true"]],
    # stdin (fd 0) is /dev/null, fd 9 is not open: neither is a socket.
    "_creator_child.py": [
        [],
        ["0", "0x40000000", "net", "1"],
        ["9", "0x40000000", "net", "1"],
        ["x", "0x40000000", "net", "1"],
        ["0", "zz", "net", "1"],
        ["0", "0x40000000", "net", "2"],
        ["0", "0x40000000", "", "1"],
        ["0", "0x40000000", "net", "1", "a,b"],
        ["0", "0x40000000", "net", "1", "0", "more"],
    ],
}


def run_child(name: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_sys.python(), "-I", "-S", _sys.child_program(name), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize("name", CHILDREN)
def test_child_is_a_stdlib_only_module_of_the_package(name: str) -> None:
    """The file is in the package, is where the parents start it from, and
    imports at run time only the standard library and its siblings (nothing
    of nspool, no relative import; ``if TYPE_CHECKING:`` blocks aside)."""
    path = PACKAGE / name
    assert path.is_file()
    assert _sys.child_program(name) == str(path)
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            node.body = []
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}: relative import"
            assert node.module is not None
            imported.add(node.module.split(".")[0])
    assert imported, name
    assert imported <= sys.stdlib_module_names | SIBLINGS, imported - sys.stdlib_module_names


def test_parents_start_the_files() -> None:
    """The init and the helper are started from the file, and the source
    strings they used to be run from are gone."""
    assert str(PACKAGE / "_pidinit_child.py") == _pidinit._CHILD
    assert str(PACKAGE / "_userns_child.py") == _userns._CHILD
    for module, name in [
        (nsset, "_INIT_SOURCE"),
        (_userns, "REAP_SOURCE"),
        (_userns, "_HELPER_SOURCE"),
        (_process, "_ENTER_SOURCE"),
    ]:
        assert not hasattr(module, name), (module.__name__, name)
    for path in PACKAGE.glob("*.py"):
        assert '"-S", "-c"' not in path.read_text(), f"{path.name} runs a source string"


@pytest.mark.parametrize(
    ("name", "args"), [(name, args) for name, cases in BAD_ARGS.items() for args in cases]
)
def test_wrong_arguments_fail_cleanly(name: str, args: list[str]) -> None:
    """Status 2, a usage line on stderr, no traceback, nothing on stdout
    (the helper's protocol channel)."""
    done = run_child(name, *args)
    assert done.returncode == 2, done
    assert done.stderr.startswith(f"usage: {name} "), done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_init_exits_when_its_stdin_closes() -> None:
    """The init with no /proc to mount (``-``) says nothing, waits on stdin
    and exits 0 at its end."""
    done = run_child("_pidinit_child.py", "-")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_helper_asked_for_nothing() -> None:
    """A helper asked to make nothing answers "R 0" (no init) and exits 0
    when its stdin closes."""
    done = run_child("_userns_child.py", json.dumps(NOTHING))
    assert (done.returncode, done.stdout, done.stderr) == (0, "R 0\n", "")


def test_helper_whose_init_cannot_be_executed(tmp_path: Path) -> None:
    """A helper told to start a compiled init that is no program answers
    the execve's errno (and exits 1) instead of waiting for an answer
    that never comes; the init's process is gone with it."""
    not_a_program = tmp_path / "init"
    not_a_program.write_text("")
    config = {**NOTHING, "pid": int(Kind.PID), "init": str(not_a_program)}
    done = run_child("_userns_child.py", json.dumps(config))
    assert done.returncode == 1, done
    assert done.stdout == f"E {errno.EACCES} execve {not_a_program}\n"


def test_enter_child_exit_statuses(tmp_path: Path) -> None:
    """The exec wrapper runs the command (its status passes through), and
    says why with 126 (a setns failed) or 127 (no such directory or
    command)."""
    assert run_child("_enter_child.py", "", "", "sh", "-c", "exit 7").returncode == 7
    done = run_child("_enter_child.py", "", str(tmp_path), "pwd")
    assert (done.returncode, done.stdout) == (0, f"{tmp_path}\n")
    bad_fd = run_child("_enter_child.py", f"999:{int(Kind.NET)}", "", "true")
    assert (bad_fd.returncode, bad_fd.stderr) == (
        126,
        f"nspool: setns({int(Kind.NET)}): {os.strerror(9)}\n",
    )
    missing = run_child("_enter_child.py", "", str(tmp_path / "gone"), "true")
    assert missing.returncode == 127
    assert missing.stderr == f"nspool: {tmp_path / 'gone'}: No such file or directory\n"
    no_command = run_child("_enter_child.py", "", "", "nspool-no-such-command")
    assert no_command.returncode == 127
    assert "Traceback" not in no_command.stderr


# -- a helper that hangs -------------------------------------------------------------


def _unshare_bounded(kinds: Kind) -> BaseException:
    """``NamespaceSet.unshare(kinds)``, which must fail, on a thread that
    must not take longer than 30 s; the exception."""
    box = bounded(lambda: NamespaceSet.unshare(kinds).close(), timeout=30)
    assert isinstance(box, dict), "unshare hung"
    assert "error" in box, "unshare did not fail"
    error = box["error"]
    assert isinstance(error, BaseException)
    return error


def _assert_timed_out(error: BaseException, step: str, pid: int | None) -> None:
    """ETIMEDOUT naming the step and the helper's pid (``pid`` if known),
    and the helper reaped."""
    assert isinstance(error, NamespaceError), error
    assert error.errno == errno.ETIMEDOUT
    assert error.pid is not None
    assert pid in (None, error.pid)
    assert f"pid {error.pid}" in str(error)
    assert f"no answer within 0.5 s ({step})" in str(error)
    assert children() == []


def test_a_helper_that_never_answers_times_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A helper that hangs before its first line (here a stand-in program
    that sleeps) is killed and reaped after HELPER_WAIT; the error names
    the step and the helper's pid."""
    pid_file = tmp_path / "pid"
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text(
        f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    )
    monkeypatch.setattr(_userns, "_CHILD", str(sleeper))
    monkeypatch.setattr(_userns, "HELPER_WAIT", 0.5)
    error = _unshare_bounded(Kind.USER | Kind.NET)
    # (None if it was killed before it got to write its pid.)
    pid = int(pid_file.read_text()) if pid_file.exists() else None
    _assert_timed_out(error, "making the user namespace", pid)


def test_a_stopped_helper_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real helper, stopped (SIGSTOP) once its user namespace is made
    and mapped, gives no "R" line: the parent gives up after HELPER_WAIT
    and kills and reaps it; the error names the step and the pid."""
    monkeypatch.setattr(_userns, "HELPER_WAIT", 0.5)
    stopped: list[int] = []
    real_write: Callable[..., None] = _userns.write_id_maps

    def write_then_stop(pid: int, *args: object) -> None:
        real_write(pid, *args)
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    monkeypatch.setattr(_userns, "write_id_maps", write_then_stop)
    error = _unshare_bounded(Kind.USER | Kind.NET | Kind.PID)
    assert len(stopped) == 1
    _assert_timed_out(error, "making the namespaces", stopped[0])


def test_user_set_with_private_tmp_when_nspool_lives_under_tmp(tmp_path: Path) -> None:
    """Regression: the user-namespace helper loaded the pid init's code
    after mounting the private /tmp, which hides the package when it lives
    under /tmp (a checkout or venv there): the helper died with no answer.
    A copy of the package under tmp_path (in /tmp) makes such a set."""
    copy = tmp_path / "tree"
    shutil.copytree(PACKAGE, copy / "nspool", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    script = (
        "from nspool import Kind, NamespaceSet\n"
        "kinds = Kind.USER | Kind.PID | Kind.MNT\n"
        "with NamespaceSet.unshare(kinds, private_tmp=True, private_proc=True) as s:\n"
        "    assert s.init_pid\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTHONPATH": str(copy), "NSPOOL_NATIVE": "0"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
