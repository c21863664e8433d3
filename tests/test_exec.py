"""``python -m nspool exec``: run as a separate process, as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nspool import Kind, NamespaceSet, _exec

from .conftest import ip, unique_name

NSPOOL = [sys.executable, "-m", "nspool", "exec"]


def nspool_exec(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*NSPOOL, *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )


def netns_link(pid: int | str = "self") -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


@pytest.fixture
def named_netns() -> Iterator[str]:
    name = unique_name("nspx")
    ip("netns", "add", name)
    try:
        yield name
    finally:
        ip("netns", "del", name, check=False)


def test_exit_status_is_the_commands() -> None:
    assert nspool_exec("--fresh", "net", "--", "sh", "-c", "exit 7").returncode == 7
    assert nspool_exec("--fresh", "net", "--", "true").returncode == 0


def test_killed_by_a_signal_exits_128_plus_n() -> None:
    done = nspool_exec("--fresh", "net", "--", "sh", "-c", "kill -KILL $$")
    assert done.returncode == 128 + signal.SIGKILL
    assert _exec.status_of(-signal.SIGTERM) == 128 + signal.SIGTERM


def test_command_not_found_and_bad_target() -> None:
    missing = nspool_exec("--fresh", "net", "--", "/nonexistent-command")
    assert missing.returncode == 127
    assert "/nonexistent-command" in missing.stderr
    bad = nspool_exec("--uts", "somename", "--", "true")
    assert bad.returncode == 125
    assert "--uts" in bad.stderr
    assert nspool_exec("--fresh", "net").returncode == 125


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signals_are_passed_on(sig: signal.Signals) -> None:
    script = (
        f"trap 'echo got{int(sig)}; exit 42' {int(sig)}; echo ready; while :; do sleep 0.05; done"
    )
    with subprocess.Popen(
        [*NSPOOL, "--fresh", "net", "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(sig)
        try:
            rest = proc.communicate(timeout=10)[0]
        finally:
            proc.kill()
    assert rest == f"got{int(sig)}\n"
    assert proc.returncode == 42


def test_stdio_is_inherited() -> None:
    done = nspool_exec(
        "--fresh", "net", "--", "sh", "-c", "read x; echo out:$x; echo err:$x >&2", input="hi\n"
    )
    assert done.returncode == 0
    assert done.stdout == "out:hi\n"
    assert done.stderr == "err:hi\n"


def test_no_namespace_fd_reaches_the_command() -> None:
    # The command lists its own fds and where each points: nsfs links read
    # "net:[...]", "uts:[...]" and so on.
    lister = (
        "import os\n"
        "for n in os.listdir('/proc/self/fd'):\n"
        "    try: print(os.readlink(f'/proc/self/fd/{n}'))\n"
        "    except FileNotFoundError: pass\n"  # the listing's own fd
    )
    done = nspool_exec("--fresh", "net,uts,ipc,pid", "--", sys.executable, "-c", lister)
    assert done.returncode == 0, done.stderr
    links = done.stdout.split()
    assert links, "the lister saw no fd at all"
    assert len(links) >= 3, links  # stdin, stdout, stderr
    nsfs = [link for link in links if ":[" in link and not link.startswith(("pipe:", "socket:"))]
    assert not nsfs, f"namespace fds reached the command: {nsfs}"


def test_a_run_netns_name_and_its_path(named_netns: str) -> None:
    inode = os.stat(f"/run/netns/{named_netns}").st_ino
    for target in (named_netns, f"/run/netns/{named_netns}"):
        done = nspool_exec("--net", target, "--", "readlink", "/proc/self/ns/net")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"net:[{inode}]"


def test_a_pid(named_netns: str) -> None:
    with subprocess.Popen(["ip", "netns", "exec", named_netns, "sleep", "30"]) as holder:
        try:
            inode = os.stat(f"/run/netns/{named_netns}").st_ino
            deadline = time.monotonic() + 10
            while netns_link(holder.pid) != f"net:[{inode}]":
                assert time.monotonic() < deadline
                time.sleep(0.01)
            for option in ("--net", "--all"):
                done = nspool_exec(option, str(holder.pid), "--", "readlink", "/proc/self/ns/net")
                assert done.returncode == 0, done.stderr
                assert done.stdout.strip() == f"net:[{inode}]"
        finally:
            holder.kill()


def test_fresh_namespaces() -> None:
    done = nspool_exec(
        "--fresh",
        "net,uts",
        "--",
        "sh",
        "-c",
        "hostname inside; hostname; readlink /proc/self/ns/net; ip -br link",
    )
    assert done.returncode == 0, done.stderr
    hostname, link, *links = done.stdout.splitlines()
    assert hostname == "inside"
    assert os.uname().nodename != "inside"
    assert link != netns_link()
    assert [line.split()[0] for line in links] == ["lo"]


def test_a_fresh_user_namespace() -> None:
    """A set with a user namespace: the command is started by open_process,
    which joins it itself; exit status and signals as with any other."""
    done = nspool_exec("--fresh", "user,net", "--", "sh", "-c", "readlink /proc/self/ns/user")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() != os.readlink("/proc/self/ns/user")
    killed = nspool_exec("--fresh", "user,net", "--", "sh", "-c", "kill -TERM $$")
    assert killed.returncode == 128 + signal.SIGTERM


def test_terminal_signals_are_not_sent_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """In the foreground of a terminal, Ctrl-C's SIGINT has reached the
    command already (same process group): not passed on again. SIGTERM is."""
    monkeypatch.setattr(os, "tcgetpgrp", lambda fd: os.getpgrp())
    assert _exec._terminal_delivers(signal.SIGINT)
    assert not _exec._terminal_delivers(signal.SIGTERM)
    monkeypatch.setattr(os, "tcgetpgrp", lambda fd: os.getpgrp() + 1)
    assert not _exec._terminal_delivers(signal.SIGINT)


@pytest.mark.usefixtures("fresh_default")  # s.run_sync starts the default workers
def test_starts_in_our_working_directory(tmp_path: Path) -> None:
    """In our cwd, also in a fresh mount namespace (a copy of ours); in one
    where the path does not exist, at its root."""
    for fresh in ("net", "mnt", "user,mnt"):
        done = nspool_exec("--fresh", fresh, "--", "pwd", cwd=tmp_path)
        assert (done.returncode, done.stdout) == (0, f"{tmp_path}\n"), done.stderr
    with NamespaceSet.unshare(Kind.MNT) as s:
        s.run_sync(subprocess.run, ["mount", "-t", "tmpfs", "none", str(tmp_path)], check=True)
        target = f"/proc/{os.getpid()}/fd/{s.fds('mnt')[Kind.MNT]}"
        inner = tmp_path / "inner"
        inner.mkdir()
        done = nspool_exec("--mnt", target, "--", "pwd", cwd=inner)
    assert (done.returncode, done.stdout) == (0, "/\n"), done.stderr
