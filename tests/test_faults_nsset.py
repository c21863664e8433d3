"""Regression tests for faults of ``NamespaceSet`` found on the real kernel
(input checks, files it must not touch, a pid namespace that ended)."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from nspool import (
    Kind,
    KindError,
    NamespaceError,
    NamespaceExistsError,
    NamespaceNotFoundError,
    NamespaceSet,
    NotANamespaceError,
    _handle,
    _native,
    _persist,
    _pidinit,
    _sys,
    nsset,
)
from nspool.errors import (
    InvalidArgumentError,
    InvalidArgumentTypeError,
    InvalidNetnsNameError,
    KindTypeError,
    PidNamespaceEndedError,
)

from .conftest import open_fds, unique_name, wait_until

TIMEOUT = 10.0


def bounded(fn: Callable[[], object], timeout: float = TIMEOUT) -> object:
    """``fn()`` on a daemon thread; fail (not hang) if it takes longer than
    ``timeout``. A FIFO opened for reading blocks until a writer comes, so a
    hung call is released by opening the FIFO for writing."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="test-bounded", daemon=True)
    thread.start()
    thread.join(timeout)
    return box if not thread.is_alive() else None


def release_fifo(path: str) -> None:
    """Unblock a reader stuck in open(path) by opening it for writing."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    os.close(fd)


# -- 8: FIFOs ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["from_path", "from_path_kind", "from_dir", "from_name"])
def test_fifo_is_refused_without_blocking(tmp_path: os.PathLike[str], how: str) -> None:
    """A FIFO where a namespace file is expected is NotANamespaceError at
    once, not a blocking open that waits for a writer."""
    directory = os.fspath(tmp_path)
    name = unique_name()
    if how == "from_name":
        _persist._prepare_netns_dir(_persist.NETNS_RUN_DIR)
        fifo = os.path.join(nsset.NETNS_RUN_DIR, name)
    else:
        fifo = os.path.join(directory, "net")
    os.mkfifo(fifo)
    calls: dict[str, Callable[[], object]] = {
        "from_path": lambda: NamespaceSet.from_path(fifo),
        "from_path_kind": lambda: NamespaceSet.from_path(fifo, Kind.NET),
        "from_dir": lambda: NamespaceSet.from_dir(directory, Kind.NET),
        "from_name": lambda: NamespaceSet.from_name(name),
    }
    fds = open_fds()
    try:
        box = bounded(calls[how])
        if box is None:
            release_fifo(fifo)
            pytest.fail(f"{how} blocked on a FIFO")
        assert "result" not in box
        error = box["error"]
        assert isinstance(error, NotANamespaceError), error
        assert fifo in str(error)
        assert "FIFO" in str(error)
    finally:
        os.unlink(fifo)
    assert open_fds() == fds


# -- 9: unmount / unpersist leave ordinary files alone -----------------------------


def test_unmount_leaves_a_file_with_content(tmp_path: os.PathLike[str]) -> None:
    """unmount of an ordinary file (not mounted) raises and keeps it."""
    path = os.path.join(os.fspath(tmp_path), "data")
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(NotANamespaceError, match="left in place"):
        NamespaceSet.unmount(path)
    with open(path) as f:
        assert f.read() == "precious"


def test_unmount_directory_leaves_everything_if_one_file_is_ordinary(
    tmp_path: os.PathLike[str],
) -> None:
    """A directory holding a file nspool did not make: nothing is unmounted
    or removed, and the error names that file."""
    directory = os.path.join(os.fspath(tmp_path), "ns")
    with NamespaceSet.unshare(Kind.NET) as s:
        s.mount(directory)
    data = os.path.join(directory, "zzz")
    with open(data, "w") as f:
        f.write("precious")
    try:
        with pytest.raises(NotANamespaceError, match="zzz"):
            NamespaceSet.unmount(directory)
        assert os.path.ismount(os.path.join(directory, "net"))
        with open(data) as f:
            assert f.read() == "precious"
    finally:
        os.unlink(data)
        NamespaceSet.unmount(directory)
    assert not os.path.exists(directory)


def test_unmount_removes_an_empty_leftover_file(tmp_path: os.PathLike[str]) -> None:
    """An empty file (a mount point whose mount is gone) is still removed."""
    path = os.path.join(os.fspath(tmp_path), "net")
    open(path, "w").close()
    NamespaceSet.unmount(path)
    assert not os.path.exists(path)


def test_unpersist_leaves_an_ordinary_file() -> None:
    """unpersist of a name that is an ordinary file raises and keeps it."""
    _persist._prepare_netns_dir(_persist.NETNS_RUN_DIR)
    name = unique_name()
    path = os.path.join(nsset.NETNS_RUN_DIR, name)
    with open(path, "w") as f:
        f.write("precious")
    try:
        with pytest.raises(NotANamespaceError, match=name):
            NamespaceSet.unpersist(name)
        with open(path) as f:
            assert f.read() == "precious"
    finally:
        os.unlink(path)


# -- 10: persist over what is already there -------------------------------------------


def test_persist_refuses_an_existing_regular_file() -> None:
    _persist._prepare_netns_dir(_persist.NETNS_RUN_DIR)
    name = unique_name()
    path = os.path.join(nsset.NETNS_RUN_DIR, name)
    with open(path, "w") as f:
        f.write("precious")
    try:
        with NamespaceSet.unshare(Kind.NET) as s, pytest.raises(NamespaceExistsError):
            s.persist(name)
        assert not os.path.ismount(path)
        with open(path) as f:
            assert f.read() == "precious"
    finally:
        os.unlink(path)


def test_persist_refuses_a_planted_symlink(tmp_path: os.PathLike[str]) -> None:
    """A symlink at /run/netns/NAME never makes its target a mount."""
    _persist._prepare_netns_dir(_persist.NETNS_RUN_DIR)
    name = unique_name()
    path = os.path.join(nsset.NETNS_RUN_DIR, name)
    target = os.path.join(os.fspath(tmp_path), "target")
    open(target, "w").close()
    os.symlink(target, path)
    try:
        with NamespaceSet.unshare(Kind.NET) as s, pytest.raises(NamespaceExistsError):
            s.persist(name)
        assert not os.path.ismount(target)
        with pytest.raises(NotANamespaceError, match="symlink"):
            NamespaceSet.unpersist(name)
        assert os.path.islink(path)
    finally:
        if os.path.ismount(target):
            _sys.umount2(target, _sys.MNT_DETACH)
        os.unlink(path)


def test_mount_ns_refuses_a_symlink(tmp_path: os.PathLike[str]) -> None:
    target = os.path.join(os.fspath(tmp_path), "target")
    link = os.path.join(os.fspath(tmp_path), "link")
    open(target, "w").close()
    os.symlink(target, link)
    with NamespaceSet.unshare(Kind.NET) as s, pytest.raises(NamespaceExistsError):
        s.mount_ns(Kind.NET, link)
    assert not os.path.ismount(target)


# -- 15: bytes and PathLike paths -------------------------------------------------------


def test_bytes_paths_are_accepted() -> None:
    fds = open_fds()
    with pytest.raises(NamespaceNotFoundError) as info:
        NamespaceSet.from_path(b"/nonexistent")
    assert "/nonexistent" in str(info.value)
    with pytest.raises(NamespaceNotFoundError) as info:
        NamespaceSet.from_dir(b"/tmp", "net")
    assert "/tmp/net" in str(info.value)
    with NamespaceSet.from_path(b"/proc/self/ns/net") as s:
        assert s.kinds == Kind.NET
    with NamespaceSet.from_dir(b"/proc/self/ns", "net,uts") as s:
        assert s.kinds == Kind.NET | Kind.UTS
    assert open_fds() == fds


@pytest.mark.parametrize("path", [3, None, 1.5])
def test_non_paths_are_refused_clearly(path: object) -> None:
    for call in (NamespaceSet.from_path, lambda p: NamespaceSet.from_dir(p, "net")):
        with pytest.raises(InvalidArgumentTypeError) as info:
            call(path)  # type: ignore[operator]
        assert isinstance(info.value, TypeError)
        str(info.value)


def test_nul_in_path_is_refused() -> None:
    with pytest.raises(InvalidArgumentError):
        NamespaceSet.from_path("/proc/self/ns/net\0x")


# -- 16: netns names are checked as names --------------------------------------------------


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../etc", "x\0y", "n" * 256])
def test_invalid_netns_names_are_a_validation_error(name: str) -> None:
    """An impossible name is InvalidNetnsNameError (a ValueError), for
    from_name, persist and unpersist alike; nothing is touched."""
    fds = open_fds()
    with pytest.raises(InvalidNetnsNameError) as info:
        NamespaceSet.from_name(name)
    assert isinstance(info.value, ValueError)
    str(info.value)
    with pytest.raises(InvalidNetnsNameError):
        NamespaceSet.unpersist(name)
    with NamespaceSet.unshare(Kind.NET) as s, pytest.raises(InvalidNetnsNameError):
        s.persist(name)
    with pytest.raises(InvalidArgumentTypeError):
        NamespaceSet.from_name(None)  # type: ignore[arg-type]
    assert open_fds() == fds


@pytest.mark.parametrize("value", [None, 1.5, b"net", [1.5]])
def test_kind_parse_refuses_non_kinds_with_a_typed_error(value: object) -> None:
    with pytest.raises(KindTypeError) as info:
        Kind.parse(value)  # type: ignore[arg-type]
    assert isinstance(info.value, KindError)
    assert isinstance(info.value, TypeError)
    assert "Kind.parse" in str(info.value)
    with pytest.raises(KindError):
        NamespaceSet.unshare(value)  # type: ignore[arg-type]


def own_children() -> list[str]:
    pid = os.getpid()
    found: list[str] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            found += f.read().split()
    return found


@pytest.mark.parametrize(
    ("kinds", "options", "error"),
    [
        (Kind.USER, {"uid_map": [(0.5, 0, 1)]}, InvalidArgumentError),
        (Kind.USER, {"uid_map": [(0, 1000.9, 1)]}, InvalidArgumentError),
        (Kind.USER, {"gid_map": "0 0 1"}, InvalidArgumentTypeError),
        (Kind.MNT, {"private_tmp": "no"}, InvalidArgumentTypeError),
        (Kind.MNT | Kind.PID, {"private_proc": 1}, InvalidArgumentTypeError),
        (Kind.TIME, {"clock_offsets": [("monotonic", 5)]}, InvalidArgumentTypeError),
        (Kind.TIME, {"clock_offsets": {"monotonic": 1e300}}, InvalidArgumentError),
        (Kind.TIME, {"clock_offsets": {"boottime": "5"}}, InvalidArgumentTypeError),
        (Kind.UTS, {"hostname": "a\0b"}, InvalidArgumentError),
        (Kind.USER | Kind.UTS, {"hostname": "a\0b"}, InvalidArgumentError),
        (Kind.USER | Kind.UTS, {"domainname": "a\0b"}, InvalidArgumentError),
        (Kind.UTS, {"hostname": 5}, InvalidArgumentTypeError),
    ],
)
def test_bad_options_are_refused_before_anything_is_made(
    kinds: Kind, options: dict[str, object], error: type[Exception]
) -> None:
    """Each bad option is a typed NamespaceError raised at the entry: no
    namespace, helper process, fd or thread is left (no_leaks)."""
    children = own_children()
    with pytest.raises(error) as info:
        NamespaceSet.unshare(kinds, **options)  # type: ignore[arg-type]
    assert isinstance(info.value, NamespaceError)
    str(info.value)
    # No new child: one of an earlier test's (an init exiting) may be reaped
    # meanwhile, which says nothing about this one.
    new = set(own_children()) - set(children)
    assert not new, [_cmdline(pid) for pid in new]


def _cmdline(pid: str) -> str:
    """What process ``pid`` runs (for an assertion's message)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return f"{pid} (gone)"


# -- 14: a pid namespace whose init was killed ----------------------------------------------


def test_fork_error_translates_enomem_only_for_pid_sets() -> None:
    with NamespaceSet.unshare(Kind.NET) as s:
        plain = OSError(errno.ENOMEM, "Cannot allocate memory")
        assert _handle.fork_error(s, plain) is plain
        assert not s.pid_namespace_ended


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
@pytest.mark.parametrize("how", ["run_process", "open_process"])
async def test_killed_init_is_a_typed_error(fresh_default: None, how: str) -> None:
    """After the init of a set's pid namespace is killed, starting a process
    there is PidNamespaceEndedError naming the pid, on this and every later
    use, and the set says so (pid_namespace_ended)."""
    import anyio

    with NamespaceSet.unshare(Kind.PID) as s:
        assert not s.pid_namespace_ended
        init_pid = s.init_pid
        assert init_pid is not None
        os.kill(init_pid, signal.SIGKILL)
        assert wait_until(lambda: s.pid_namespace_ended)
        start = s.run_process if how == "run_process" else s.open_process
        for _ in range(2):
            with anyio.fail_after(TIMEOUT), pytest.raises(PidNamespaceEndedError) as info:
                await start(["true"])
            assert info.value.errno == errno.ENOMEM
            assert f"pid {init_pid}" in str(info.value)
            assert "pid namespace has ended" in str(info.value)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_enomem_from_fork_marks_the_set(fresh_default: None) -> None:
    """A set that shares a pid namespace without its init (from_path): the
    ENOMEM of the fork is translated, and the set remembers it."""
    import anyio

    with NamespaceSet.unshare(Kind.PID) as owner:
        init_pid = owner.init_pid
        assert init_pid is not None
        fd = owner.fds(Kind.PID)[Kind.PID]
        with NamespaceSet.from_path(f"/proc/self/fd/{fd}", Kind.PID) as s:
            os.kill(init_pid, signal.SIGKILL)
            assert wait_until(lambda: owner.pid_namespace_ended)
            assert not s.pid_namespace_ended
            with anyio.fail_after(TIMEOUT), pytest.raises(PidNamespaceEndedError):
                await s.run_process(["true"])
            assert s.pid_namespace_ended


# -- 12: EMFILE while copying a set's fds -------------------------------------------------

_EMFILE_PRELUDE = """
import errno, os, sys
import anyio
from nspool import Kind, NamespaceSet, _handle, nsset

def fill():
    held = []
    while True:
        try:
            held.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            assert exc.errno == errno.EMFILE
            return held

def one_free_slot_left():
    try:
        fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True
"""


def run_script(body: str) -> None:
    """Run ``body`` in a fresh interpreter (it lowers RLIMIT_NOFILE, which
    must not reach this process); fail on a non-zero exit or a hang."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _EMFILE_PRELUDE + body],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_dup_fds_closes_its_copies_on_emfile() -> None:
    """dup_fds copies all or none: EMFILE on the second dup closes the first."""
    run_script(
        """
with NamespaceSet.unshare(Kind.NET | Kind.UTS) as s:
    fds = s.fds()
    held = fill()
    os.close(held.pop())
    try:
        _handle.dup_fds(fds)
    except OSError as exc:
        assert exc.errno == errno.EMFILE, exc
        assert "dup" in str(exc) and "RLIMIT_NOFILE" in str(exc), str(exc)
    else:
        raise AssertionError("no EMFILE")
    assert one_free_slot_left(), "a copy leaked"
    for fd in held:
        os.close(fd)
"""
    )


@pytest.mark.parametrize("kinds", ["USER | Kind.NET", "TIME | Kind.NET"])
def test_open_process_emfile_leaks_no_namespace_fd(kinds: str) -> None:
    run_script(
        f"""
async def main():
    with NamespaceSet.unshare(Kind.{kinds}) as s:
        await s.run_process(["true"])  # workers and loop warmed up
        held = fill()
        os.close(held.pop())
        try:
            await s.open_process(["true"])
        except OSError as exc:
            assert exc.errno == errno.EMFILE, exc
        else:
            raise AssertionError("no EMFILE")
        assert one_free_slot_left(), "a namespace fd leaked"
        for fd in held:
            os.close(fd)

anyio.run(main)
"""
    )


# -- an init that never answers -------------------------------------------------------------


def test_an_init_that_never_answers_is_a_timeout_not_a_hang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An init asked to mount a private /proc that never answers (a stand-in
    program that only sleeps): making the set fails with ETIMEDOUT after
    INIT_ANSWER_TIMEOUT, naming the init's pid, and the init is ended."""
    hung = tmp_path / "hung-init"
    hung.write_text("#!/bin/sh\nexec sleep 30\n")
    hung.chmod(0o755)
    monkeypatch.setattr(_native, "PIDINIT", str(hung))
    monkeypatch.setattr(_pidinit, "INIT_ANSWER_TIMEOUT", 0.5)
    children = own_children()
    started = time.monotonic()
    with pytest.raises(NamespaceError) as info:
        NamespaceSet.unshare(Kind.PID | Kind.MNT, private_proc=True)
    assert time.monotonic() - started < 5
    assert info.value.errno == errno.ETIMEDOUT
    assert "did not answer" in str(info.value)
    # Ended, and reaped (at once, or later by reap_finished_inits).
    assert wait_until(
        lambda: _pidinit.reap_finished_inits() or not set(own_children()) - set(children)
    )
