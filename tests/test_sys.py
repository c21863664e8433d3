"""The syscall layer: both backends, EINTR retries, errno translation."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from nspool import (
    Kind,
    NamespaceError,
    NamespaceNotFoundError,
    NotANamespaceError,
    ProcessNotFoundError,
    _sys,
)

from .conftest import on_thread, thread_ns


def test_backends_on_this_python() -> None:
    """3.11 has only the ctypes backend; 3.12+ has os too, and uses it by default."""
    have = _sys.available_backends()
    assert "ctypes" in have
    assert ("os" in have) == (sys.version_info >= (3, 12))
    with pytest.raises(ValueError, match="not available"):
        _sys.use_backend("nope")


def test_backend_chosen_by_environment() -> None:
    """NSPOOL_SYSCALLS picks the backend at import; the default is os where present."""
    code = "from nspool import _sys; print(_sys.backend())"
    env = {**os.environ, "NSPOOL_SYSCALLS": "ctypes"}
    forced = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert forced.stdout.strip() == "ctypes"
    env.pop("NSPOOL_SYSCALLS")
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert default.stdout.strip() == ("os" if sys.version_info >= (3, 12) else "ctypes")


def test_unshare_and_setns_move_only_the_calling_thread(syscall_backend: str) -> None:
    """With the backend under test: unshare gives the thread a new netns,
    setns takes it back; the main thread never moves."""
    assert _sys.backend() == syscall_backend
    home = thread_ns("net")
    home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def hop() -> tuple[str, str]:
        _sys.unshare(Kind.NET)
        inside = thread_ns("net")
        _sys.setns(home_fd, Kind.NET)
        return inside, thread_ns("net")

    try:
        inside, back = on_thread(hop)
    finally:
        os.close(home_fd)
    assert inside != home
    assert back == home
    assert thread_ns("net") == home


def test_setns_errors_name_the_syscall_and_kind() -> None:
    """setns with a file that is no namespace fails with EINVAL, named."""
    fd = os.open("/etc/hostname", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(NamespaceError) as info:
            on_thread(lambda: _sys.setns(fd, Kind.NET, path="/etc/hostname"))
    finally:
        os.close(fd)
    assert info.value.errno == errno.EINVAL
    assert str(info.value).startswith("setns(net, /etc/hostname)")


def test_unshare_user_in_a_threaded_process_is_einval() -> None:
    """The kernel refuses a user namespace to a multi-threaded process."""
    with pytest.raises(NamespaceError) as info:
        on_thread(lambda: _sys.unshare(Kind.USER))
    assert info.value.errno == errno.EINVAL
    assert info.value.syscall == "unshare"
    assert info.value.kind == "user"


class _Flaky:
    """A backend whose calls fail with EINTR a few times, then run for real.

    setns and unshare do not return EINTR on demand, so the fault is
    injected; the final call is the real syscall.
    """

    def __init__(self, real: object, failures: int) -> None:
        self.real = real
        self.failures = failures
        self.calls = 0
        self.name = "flaky"

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise InterruptedError(errno.EINTR, "Interrupted system call")

    def setns(self, fd: int, nstype: int) -> None:
        self._maybe_fail()
        self.real.setns(fd, nstype)  # type: ignore[attr-defined]

    def unshare(self, flags: int) -> None:
        self._maybe_fail()
        self.real.unshare(flags)  # type: ignore[attr-defined]


def test_eintr_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A syscall interrupted by a signal is retried until it completes."""
    flaky = _Flaky(_sys._backend, failures=3)
    monkeypatch.setattr(_sys, "_backend", flaky)
    home = thread_ns("uts")
    inside = on_thread(lambda: (_sys.unshare(Kind.UTS), thread_ns("uts"))[1])
    assert flaky.calls == 4
    assert inside != home


def test_nstype_and_open_ns() -> None:
    """NS_GET_NSTYPE names each kind; other files are NotANamespaceError."""
    for kind in Kind.all().singles():
        fd = _sys.open_ns(f"/proc/self/ns/{kind.proc_name}", kind)
        try:
            assert _sys.nstype(fd) is kind
        finally:
            os.close(fd)
    fd = os.open("/etc/hostname", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(NotANamespaceError):
            _sys.nstype(fd, path="/etc/hostname")
    finally:
        os.close(fd)


def test_pidfd() -> None:
    """pidfd_open pins a live process; bad pids are ProcessNotFoundError."""
    fd = _sys.pidfd_open(os.getpid())
    try:
        assert _sys.pidfd_is_alive(fd)
    finally:
        os.close(fd)
    child = subprocess.Popen(["true"])
    fd = _sys.pidfd_open(child.pid)
    try:
        child.wait()
        assert not _sys.pidfd_is_alive(fd)
    finally:
        os.close(fd)
    for bad in (0, -5, child.pid):
        with pytest.raises(ProcessNotFoundError):
            _sys.pidfd_open(bad)


def test_mount_errors(tmp_path: os.PathLike[str]) -> None:
    """mount and umount2 failures name the syscall and the path."""
    missing = os.path.join(os.fspath(tmp_path), "missing")
    with pytest.raises(NamespaceNotFoundError) as info:
        _sys.mount("tmpfs", missing, "tmpfs", 0)
    assert info.value.syscall == "mount"
    assert missing in str(info.value)
    with pytest.raises(NamespaceError) as info2:
        _sys.umount2(os.fspath(tmp_path), 0)
    assert info2.value.errno == errno.EINVAL
    assert info2.value.syscall == "umount2"


def test_gil_holding_calls() -> None:
    """setns_holding_gil and ns_inode_at work on any backend, report errors,
    and read the same inode as readlink does."""
    buf = __import__("ctypes").create_string_buffer(64)
    ns_dir = os.open("/proc/thread-self/ns", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in ("net", "uts", "pid_for_children", "time_for_children"):
            link = os.readlink(name, dir_fd=ns_dir)
            assert _sys.ns_inode_at(ns_dir, name.encode(), buf) == int(
                link[link.index("[") + 1 : -1]
            )
        with pytest.raises(FileNotFoundError):
            _sys.ns_inode_at(ns_dir, b"nonexistent", buf)
    finally:
        os.close(ns_dir)
    home = os.open("/proc/thread-self/ns/uts", os.O_RDONLY | os.O_CLOEXEC)

    def hop() -> str:
        _sys.unshare(Kind.UTS)
        _sys.setns_holding_gil(home, Kind.UTS)
        return thread_ns("uts")

    try:
        assert on_thread(hop) == thread_ns("uts")
        with pytest.raises(NamespaceError) as info:
            on_thread(lambda: _sys.setns_holding_gil(home, Kind.NET))
        assert info.value.errno == errno.EINVAL
    finally:
        os.close(home)


def test_current_cpu() -> None:
    """current_cpu names a CPU this thread may run on."""
    assert _sys.current_cpu() in os.sched_getaffinity(0)
