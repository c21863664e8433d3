"""``python -m nspool doctor``'s verdict, as root and as the unprivileged
user 65534: what it claims of rootless mode must agree with what a script
run as the same user gets when it tries rootless mode itself."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from nspool import Kind, _doctor, _native, _sys, cli

from .test_cli import table_rows

NOBODY = 65534
DROP = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]

#: What a user who turns rootless mode on does: enter a user namespace, then
#: make a netns and run a call in it, then a pool call. Prints ``worked``.
ROOTLESS_TRY = """
    import os
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
        return os.getpid()

    nspool.enter_user_namespace()
    with NamespaceSet.unshare(Kind.NET) as made:
        assert made.run_sync(talk) == os.getpid()
    with Pool(Kind.NET, warm=1) as pool:
        assert pool.run_sync(talk) == os.getpid()
    nspool.default_workers().shutdown()
    print("worked")
"""


def env_for(backend: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "COLUMNS")}
    env["NO_COLOR"] = "1"
    env["NSPOOL_SYSCALLS"] = backend
    return env


def run(drop: list[str], args: list[str], backend: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*drop, sys.executable, *args],
        capture_output=True,
        text=True,
        env=env_for(backend),
        cwd="/",
        timeout=120,
        check=False,
    )


def line_starting(output: str, prefix: str) -> str:
    found = [line for line in output.splitlines() if line.startswith(prefix)]
    assert len(found) == 1, f"no single line {prefix!r} in:\n{output}"
    return found[0]


def verdict(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines, output
    return lines[-1]


def nobody_can_run_python() -> bool:
    done = subprocess.run([*DROP, sys.executable, "-c", "pass"], capture_output=True, cwd="/")
    return done.returncode == 0


needs_setpriv = pytest.mark.skipif(
    shutil.which("setpriv") is None or os.geteuid() != 0,
    reason="needs root and setpriv to become an unprivileged user",
)


def check_common(output: str, backend: str) -> None:
    """The lines every doctor run prints: backends, optional parts."""
    backends = ", ".join(_sys.available_backends())
    assert line_starting(output, "syscall backend: ") == (
        f"syscall backend: {backend} (available: {backends})"
    )
    optional = line_starting(output, "optional: ")
    for name in cli.OPTIONAL:
        assert f"{name} " in optional, optional
    assert optional.endswith(f"compiled helper: {_doctor.helper()}"), optional


def test_doctor_says_which_path_is_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled helper in use, in part, or not (and why)."""
    monkeypatch.setattr(_native, "AVAILABLE", True)
    monkeypatch.setattr(_native, "EXT", True)
    monkeypatch.setattr(_native, "PIDINIT", "/x/_native_pidinit")
    assert _doctor.helper() == "in use (pid init, hop primitives)"
    monkeypatch.setattr(_native, "AVAILABLE", False)
    monkeypatch.setattr(_native, "EXT", False)
    monkeypatch.setattr(_native, "REASON", "hop primitives: not built (no Python.h in /x)")
    assert _doctor.helper() == (
        "partly in use (pid init); pure Python for the rest "
        "(hop primitives: not built (no Python.h in /x))"
    )
    monkeypatch.setattr(_native, "PIDINIT", None)
    monkeypatch.setattr(_native, "REASON", "disabled by NSPOOL_NATIVE=0")
    assert _doctor.helper() == "pure Python (disabled by NSPOOL_NATIVE=0)"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_doctor_as_root_says_nspool_works(syscall_backend: str) -> None:
    """As root: net is created and joined, rootless mode works too, the
    verdict says nspool can work here, and the exit status is 0."""
    done = run([], ["-m", "nspool", "doctor"], syscall_backend)
    assert done.returncode == 0, done.stdout + done.stderr
    check_common(done.stdout, syscall_backend)
    assert table_rows(done.stdout)["net"][:2] == [cli.YES, cli.YES]
    assert line_starting(done.stdout, "rootless mode: ").startswith("rootless mode: yes;")
    assert verdict(done.stdout) == (
        "net namespaces can be created and joined: nspool can work here"
    )


@needs_setpriv
def test_doctor_as_nobody_agrees_with_rootless_mode(syscall_backend: str) -> None:
    """As uid 65534: creating a netns is refused (EPERM); doctor's rootless
    line and verdict say rootless mode works exactly when a script run as
    the same user that turns rootless mode on can make a netns and a pool
    and run calls in them; the exit status follows the verdict."""
    if not nobody_can_run_python():
        pytest.skip(
            f"uid {NOBODY} cannot run {sys.executable} (a directory on its path is private)"
        )
    done = run(DROP, ["-m", "nspool", "doctor"], syscall_backend)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    check_common(done.stdout, syscall_backend)
    assert "root: no" in done.stdout
    assert table_rows(done.stdout)["net"][0].startswith("no: EPERM"), done.stdout

    tried = run(DROP, ["-c", textwrap.dedent(ROOTLESS_TRY)], syscall_backend)
    works = tried.returncode == 0 and tried.stdout.splitlines()[-1:] == ["worked"]

    rootless = line_starting(done.stdout, "rootless mode: ")
    assert rootless.startswith("rootless mode: yes;") == works, (rootless, tried.stderr)
    if works:
        assert "nspool.enter_user_namespace()" in rootless
        assert verdict(done.stdout) == (
            "net namespaces cannot be created and joined with these privileges, "
            "but rootless mode works: nspool can work here in rootless mode"
        )
        assert done.returncode == 0
    else:
        assert verdict(done.stdout).endswith("nspool cannot work here")
        assert done.returncode == 1


def report(net_create: str, rootless: str) -> cli.DoctorReport:
    row = cli.KindReport(Kind.NET, net_create, net_create, net_create)
    return cli.DoctorReport(
        kernel="k",
        python="p",
        backend="ctypes",
        root=False,
        pidfd_open=cli.YES,
        kinds=(row,),
        rootless=rootless,
    )


@pytest.mark.parametrize(
    ("net", "rootless", "usable", "ends"),
    [
        (cli.YES, cli.YES, True, "nspool can work here"),
        (cli.YES, "no: EPERM", True, "nspool can work here"),
        ("no: EPERM", cli.YES, True, "nspool can work here in rootless mode"),
        ("no: EPERM", "no: EPERM", False, "nspool cannot work here"),
    ],
)
def test_verdict_follows_net_and_rootless(net: str, rootless: str, usable: bool, ends: str) -> None:
    """The verdict and exit status: usable if a netns works directly or in
    rootless mode; the text says which."""
    made = report(net, rootless)
    assert made.usable is usable
    assert made.verdict.endswith(ends)
    assert made.ok is (net == cli.YES)
