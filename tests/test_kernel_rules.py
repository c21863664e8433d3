"""The kernel rules nspool is built on, checked against the running kernel.

Each test here is one rule of "What you must know about the kernel" in
README.md (what the rules cost is measured by the benchmarks, in
``bench/``). Every test makes real ``unshare``/``setns`` calls and real
processes, so a kernel (or a Python) that behaves otherwise fails here first,
before the code built on the rule misbehaves. Anything that moves a thread
does so on a throwaway thread (``on_thread``), never on the test's own thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import os
import resource
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nspool import Kind, NamespaceError, NamespaceSet, NotANamespaceError, _sys

from .conftest import Witness, on_thread, thread_ns, wait_until

#: ``SO_NETNS_COOKIE`` from <asm-generic/socket.h> (Python has no constant).
SO_NETNS_COOKIE = 71

#: How long a namespace that should stay alive is watched. The kernel frees a
#: netns asynchronously but promptly (well under this) once nothing holds it.
STAYS_ALIVE = 0.3


# -- helpers ---------------------------------------------------------------------------


def ns_link(pid: int, name: str) -> str:
    """``readlink /proc/PID/ns/NAME``."""
    return os.readlink(f"/proc/{pid}/ns/{name}")


def comm(pid: int) -> str:
    """The command name of ``pid`` (``""`` if it is gone)."""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


@contextlib.contextmanager
def child(argv: list[str], *, exec_name: str = "sleep") -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` until the block ends, then kill and reap it. Waits until
    the process has exec'd ``exec_name`` (i.e. its set-up is done)."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: comm(proc.pid) == exec_name, timeout=5), f"{argv} did not start"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def children_of(pid: int) -> list[int]:
    """The children of ``pid`` (all its threads), from the host's ``/proc``."""
    found: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
            found.extend(int(word) for word in f.read().split())
    return found


def nspid(pid: int) -> list[int]:
    """The ``NSpid`` line of ``/proc/PID/status``: the pid in each pid
    namespace from the host's down to the process's own."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(word) for word in line.split()[1:]]
    raise AssertionError(f"no NSpid line for {pid}")


def netns_cookie() -> int:
    """The ``SO_NETNS_COOKIE`` of a socket made in the calling thread's netns."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    value: int = struct.unpack("=Q", raw)[0]
    return value


def cookie_of(s: NamespaceSet) -> int:
    """The ``SO_NETNS_COOKIE`` of ``s``'s netns (from a throwaway thread)."""
    fd = s.fds(Kind.NET)[Kind.NET]

    def work() -> int:
        _sys.setns(fd, Kind.NET)
        return netns_cookie()

    return on_thread(work)


def errno_of(fn: Callable[[], object]) -> int:
    """The errno ``fn`` fails with (0 if it does not fail)."""
    try:
        fn()
    except OSError as exc:
        return exc.errno or -1
    return 0


# -- namespaces are per thread ---------------------------------------------------------


def test_unshare_changes_only_the_calling_thread() -> None:
    """Rule: namespaces are per thread; unshare changes only the calling thread."""
    before = thread_ns("net")
    process_before = os.readlink("/proc/self/ns/net")

    def work() -> tuple[str, str]:
        _sys.unshare(Kind.NET)
        return thread_ns("net"), os.readlink("/proc/self/ns/net")

    inside, leader_seen_from_thread = on_thread(work)
    assert inside != before
    assert thread_ns("net") == before
    # /proc/self is the thread-group leader (this, the main thread): unmoved.
    assert leader_seen_from_thread == process_before == before


def test_setns_changes_only_the_calling_thread() -> None:
    """Rule: namespaces are per thread; setns changes only the calling thread."""
    before = thread_ns("uts")
    with NamespaceSet.unshare(Kind.UTS) as s:
        fd = s.fds(Kind.UTS)[Kind.UTS]

        def work() -> str:
            _sys.setns(fd, Kind.UTS)
            return thread_ns("uts")

        assert on_thread(work) == f"uts:[{s.id(Kind.UTS)}]"
        assert thread_ns("uts") == before != f"uts:[{s.id(Kind.UTS)}]"


def test_new_thread_starts_in_its_creators_namespaces() -> None:
    """Rule: a new thread starts in the namespaces of the thread that created it."""
    host = thread_ns("net")

    def work() -> tuple[str, str]:
        _sys.unshare(Kind.NET)
        mine = thread_ns("net")
        seen: list[str] = []
        grandchild = threading.Thread(target=lambda: seen.append(thread_ns("net")))
        grandchild.start()
        grandchild.join()
        return mine, seen[0]

    creator, created = on_thread(work)
    assert creator != host
    assert created == creator
    # And a thread created by this (unmoved) thread is in the host's.
    assert on_thread(lambda: thread_ns("net")) == host


# -- user namespaces and threads -------------------------------------------------------


def test_unshare_user_fails_with_einval_when_multithreaded() -> None:
    """Rule: unshare(CLONE_NEWUSER) fails with EINVAL in a multi-threaded process."""
    with pytest.raises(NamespaceError) as info:
        on_thread(lambda: _sys.unshare(Kind.USER))
    assert info.value.errno == errno.EINVAL
    # A single-threaded process may: the EINVAL is the threads'.
    control = subprocess.run(["unshare", "--user", "true"], capture_output=True, text=True)
    assert control.returncode == 0, control.stderr


def test_setns_user_fails_with_einval_when_multithreaded() -> None:
    """Rule: setns into a user ns fails with EINVAL in a multi-threaded process."""
    with child(["unshare", "--user", "sleep", "60"]) as proc:
        assert ns_link(proc.pid, "user") != ns_link(os.getpid(), "user")
        with NamespaceSet.from_pid(proc.pid, Kind.USER) as s:
            fd = s.fds(Kind.USER)[Kind.USER]
            with pytest.raises(NamespaceError) as info:
                on_thread(lambda: _sys.setns(fd, Kind.USER))
            assert info.value.errno == errno.EINVAL
            # The same setns from a single-threaded process succeeds: the
            # EINVAL above is the threads', not the namespace's.
            control = subprocess.run(
                [
                    "nsenter",
                    f"--user=/proc/{os.getpid()}/fd/{fd}",
                    "--preserve-credentials",
                    "true",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            assert control.returncode == 0, control.stderr


# -- mount namespaces ------------------------------------------------------------------


def test_setns_mnt_needs_unshare_fs_first() -> None:
    """Rule: setns into a mount ns fails with EINVAL unless the thread did unshare(CLONE_FS)."""
    with NamespaceSet.unshare(Kind.MNT) as s:
        fd = s.fds(Kind.MNT)[Kind.MNT]
        want = f"mnt:[{s.id(Kind.MNT)}]"

        def work() -> tuple[NamespaceError | None, str, str]:
            refused = None
            try:
                _sys.setns(fd, Kind.MNT)
            except NamespaceError as exc:
                refused = exc
            still = thread_ns("mnt")
            _sys.unshare_fs()
            _sys.setns(fd, Kind.MNT)
            return refused, still, thread_ns("mnt")

        refused, still, after = on_thread(work)
        assert refused is not None, "setns(mnt) worked without unshare(CLONE_FS)"
        assert refused.errno == errno.EINVAL
        assert still == thread_ns("mnt") != want
        assert after == want


def test_a_thread_sharing_its_fs_cannot_leave_its_mount_ns() -> None:
    """Rule: a thread that shares its fs with the process is in the process's
    mount ns: unshare(CLONE_NEWNS) unshares the fs too (kcmp KCMP_FS then
    differs), and setns into a mount ns refuses a shared fs (EINVAL). So
    after a call outside any mount ns, the fs comparison stands in for
    reading the mnt link."""
    pid = os.getpid()
    home_mnt = thread_ns("mnt")

    def work() -> tuple[int, int, str, int, str]:
        tid = threading.get_native_id()
        before = _sys.kcmp(pid, tid, _sys.KCMP_FS)
        with NamespaceSet.unshare(Kind.MNT) as s:
            fd = s.fds(Kind.MNT)[Kind.MNT]
            refused = errno_of(lambda: _sys.setns(fd, Kind.MNT))
        still = thread_ns("mnt")
        _sys.unshare(Kind.MNT)
        return before, refused, still, _sys.kcmp(pid, tid, _sys.KCMP_FS), thread_ns("mnt")

    before, refused, still, after, moved = on_thread(work)
    assert before == 0, "a new thread shares the process's fs"
    assert refused == errno.EINVAL
    assert still == home_mnt
    assert moved != home_mnt
    assert after != 0, "unshare(CLONE_NEWNS) left the fs shared"


# -- pid and time namespaces -----------------------------------------------------------


def test_unshare_pid_and_time_move_only_future_children() -> None:
    """Rule: unshare(CLONE_NEWPID|CLONE_NEWTIME) changes only *_for_children."""
    own_pid, own_time = thread_ns("pid"), thread_ns("time")
    assert thread_ns("pid_for_children") == own_pid
    assert thread_ns("time_for_children") == own_time

    def work() -> tuple[str, str, str, str, str, str]:
        _sys.unshare(Kind.PID | Kind.TIME)
        time_children = thread_ns("time_for_children")
        proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
        try:
            return (
                thread_ns("pid"),
                thread_ns("time"),
                thread_ns("pid_for_children"),
                time_children,
                ns_link(proc.pid, "pid"),
                ns_link(proc.pid, "time"),
            )
        finally:
            proc.kill()
            proc.wait()

    pid, tns, pid_children, time_children, child_pid, child_time = on_thread(work)
    assert (pid, tns) == (own_pid, own_time)  # the thread itself did not move
    assert pid_children != own_pid
    assert time_children != own_time
    assert (child_pid, child_time) == (pid_children, time_children)  # its children do


def test_setns_time_fails_with_eusers_when_multithreaded() -> None:
    """Rule: setns into a time ns fails with EUSERS in a multi-threaded process."""
    with NamespaceSet.unshare(Kind.TIME) as s:
        fd = s.fds(Kind.TIME)[Kind.TIME]
        with pytest.raises(NamespaceError) as info:
            on_thread(lambda: _sys.setns(fd, Kind.TIME))
        assert info.value.errno == errno.EUSERS
        # A single-threaded process can enter it: the EUSERS is the threads'.
        control = subprocess.run(
            ["nsenter", f"--time=/proc/{os.getpid()}/fd/{fd}", "true"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert control.returncode == 0, control.stderr


def test_fresh_pid_ns_has_no_id_until_first_process_and_dies_with_it() -> None:
    """Rule: a fresh pid ns gives ENOENT until its first process, and ENOMEM after it exits."""

    def work() -> tuple[int, str, str, int]:
        _sys.unshare(Kind.PID)
        before = errno_of(lambda: thread_ns("pid_for_children"))
        subprocess.run(["true"], check=True)  # the namespace's pid 1: lives and exits
        ident = thread_ns("pid_for_children")
        try:
            subprocess.run(["true"], check=True)
        except OSError as exc:
            return before, ident, thread_ns("pid"), exc.errno or -1
        return before, ident, thread_ns("pid"), 0

    before, ident, own, after = on_thread(work)
    assert before == errno.ENOENT
    assert ident.startswith("pid:[")
    assert ident != own
    assert after == errno.ENOMEM


def test_set_with_pid_ns_keeps_an_init_so_forks_keep_working() -> None:
    """Rule: NamespaceSet.unshare(PID) keeps an init, so successive forks succeed until close."""
    s = NamespaceSet.unshare(Kind.PID)
    try:
        init_pid = s.init_pid
        assert init_pid is not None
        assert nspid(init_pid)[-1] == 1
        fd = s.fds(Kind.PID)[Kind.PID]
        kept = os.dup(fd)
        try:

            def spawn_twice() -> list[list[int]]:
                _sys.setns(fd, Kind.PID)
                seen = []
                for _ in range(2):
                    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
                    try:
                        seen.append(nspid(proc.pid))
                        assert ns_link(proc.pid, "pid") == f"pid:[{s.id(Kind.PID)}]"
                    finally:
                        proc.kill()
                        proc.wait()
                return seen

            for outer_inner in on_thread(spawn_twice):
                assert len(outer_inner) == len(nspid(os.getpid())) + 1
                assert outer_inner[-1] >= 2

            init_fd = os.pidfd_open(init_pid)
            try:
                s.close()
                assert not _sys.pidfd_is_alive(init_fd)
            finally:
                os.close(init_fd)

            # The namespace itself is still held by `kept`, but it is dead.
            def fork_into_dead() -> int:
                _sys.setns(kept, Kind.PID)
                return errno_of(lambda: subprocess.run(["true"], check=True))

            assert on_thread(fork_into_dead) == errno.ENOMEM
        finally:
            os.close(kept)
    finally:
        s.close()


# -- /proc and pid namespaces ----------------------------------------------------------


def test_private_proc_does_not_describe_the_host_thread() -> None:
    """Rule: a pid ns's private /proc does not show /proc/thread-self for an outside thread."""
    argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "sleep", "60"]
    with child(argv, exec_name="unshare") as proc:
        sleepers: list[int] = []

        def sleeper_ready() -> bool:
            sleepers[:] = [p for p in children_of(proc.pid) if comm(p) == "sleep"]
            return bool(sleepers)

        assert wait_until(sleeper_ready, timeout=5)
        sleep_pid = sleepers[0]
        assert nspid(sleep_pid)[-1] == 1  # it is the init of its own pid ns
        with NamespaceSet.from_pid(sleep_pid, Kind.MNT) as s:
            fd = s.fds(Kind.MNT)[Kind.MNT]

            def work() -> tuple[str, int, int, str]:
                host_view = os.readlink("/proc/thread-self")
                _sys.unshare_fs()
                _sys.setns(fd, Kind.MNT)
                thread_self = errno_of(lambda: os.readlink("/proc/thread-self"))
                self_ = errno_of(lambda: os.readlink("/proc/self"))
                return host_view, thread_self, self_, comm(1)

            host_view, thread_self, self_, pid1 = on_thread(work)
        assert host_view.startswith(f"{os.getpid()}/task/")
        # This process is not in that /proc's pid ns: no self, no thread-self.
        assert thread_self == errno.ENOENT
        assert self_ == errno.ENOENT
        assert pid1 == "sleep"  # that /proc's pid 1 is the sleep, not the host's init
        assert comm(1) != "sleep"


# -- identity over time ----------------------------------------------------------------


def netns_numbered(ino: int, timeout: float = 5.0) -> NamespaceSet | None:
    """A new netns whose inode number is ``ino``, or ``None`` if none could be
    made within ``timeout`` seconds.

    Namespace inode numbers come from the same lowest-free allocator as
    procfs entries: a new netns takes the lowest free number for itself and
    about 70 more for its ``/proc/net`` files, so a freed netns number usually
    goes to one of those files. Holes below ``ino`` are therefore filled with
    UTS namespaces (one number each) until ``ino`` is the lowest free number,
    and only then is a netns made.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    max_fillers = min(5000, soft - len(os.listdir("/proc/self/fd")) - 64)
    fillers: list[NamespaceSet] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and len(fillers) < max_fillers:
            uts = NamespaceSet.unshare(Kind.UTS)
            number = uts.id(Kind.UTS)
            if number < ino:
                fillers.append(uts)
                continue
            uts.close()  # frees `number` again at once
            if number == ino:  # `ino` is now the lowest free number
                net = NamespaceSet.unshare(Kind.NET)
                if net.id(Kind.NET) == ino:
                    return net
                net.close()  # a hole opened below `ino` meanwhile: again
            time.sleep(0.005)  # `ino` not free yet: the netns is freed lazily
        return None
    finally:
        for uts in fillers:
            uts.close()


def test_netns_inode_is_reused_but_cookie_is_not(
    witness: Callable[[NamespaceSet], Witness],
) -> None:
    """Rule: a netns inode number is reused once it is freed; SO_NETNS_COOKIE is never reused."""
    with NamespaceSet.unshare(Kind.NET) as first:
        w = witness(first)
        ino = first.id(Kind.NET)
        cookie = cookie_of(first)
        assert cookie_of(first) == cookie  # stable for one namespace
    assert w.wait_gone(), "the first netns was not destroyed"

    second = netns_numbered(ino)
    assert second is not None, f"no new netns got the freed inode number {ino}"
    with second:
        assert second.id(Kind.NET) == ino
        assert cookie_of(second) != cookie


_GO_HOME_SCRIPT = textwrap.dedent(
    """\
    import ctypes, ctypes.util, os, threading
    CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    assert threading.active_count() == 1
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    home_link = os.readlink("/proc/self/ns/net")
    def call(fn, *args):
        return 0 if fn(*args) == 0 else ctypes.get_errno()
    before = call(libc.setns, home, CLONE_NEWNET)
    unshared = call(libc.unshare, CLONE_NEWUSER | CLONE_NEWNET)
    moved = os.readlink("/proc/self/ns/net") != home_link
    after = call(libc.setns, home, CLONE_NEWNET)
    print(before, unshared, int(moved), after)
    """
)


def test_setns_home_after_unshare_user_fails_with_eperm() -> None:
    """Rule: after unshare(CLONE_NEWUSER), setns back to the home namespaces fails with EPERM."""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _GO_HOME_SCRIPT],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    before, unshared, moved, after = (int(word) for word in done.stdout.split())
    assert before == 0  # going "home" works while still in the initial user ns
    assert unshared == 0
    assert moved == 1
    assert after == errno.EPERM


# -- ctypes and the GIL ----------------------------------------------------------------


def _gil_kept_during(lib: ctypes.CDLL) -> tuple[float, int, int]:
    """Call ``usleep(300000)`` through ``lib`` on a thread while this thread
    counts. Returns this thread's longest stall, and how far its count got
    during the call and during the whole run."""
    usleep = lib.usleep
    usleep.argtypes = (ctypes.c_uint,)
    usleep.restype = ctypes.c_int
    go, done = threading.Event(), threading.Event()
    count = [0]
    during: list[int] = []

    def sleeper() -> None:
        go.wait()
        before = count[0]
        usleep(300_000)
        during.append(count[0] - before)
        done.set()

    thread = threading.Thread(target=sleeper)
    thread.start()
    last = time.monotonic()
    longest = 0.0
    go.set()
    while not done.is_set():
        now = time.monotonic()
        longest = max(longest, now - last)
        last = now
        count[0] += 1
    thread.join()
    return longest, during[0], count[0]


def test_cdll_releases_the_gil_and_pydll_does_not() -> None:
    """Rule: ctypes.CDLL releases the GIL on every call, ctypes.PyDLL does not."""
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    c_stall, c_during, c_total = _gil_kept_during(ctypes.CDLL(libc_name))
    py_stall, py_during, py_total = _gil_kept_during(ctypes.PyDLL(libc_name))
    # CDLL: this thread kept running throughout the 0.3 s call.
    assert c_stall < 0.1, f"main thread stalled {c_stall:.3f} s during a CDLL call"
    assert c_during > 1000
    # PyDLL: it stood still for the whole call (at most one switch interval
    # of progress, if the GIL changed hands between reading the count and the call).
    assert py_stall > 0.25, f"main thread stalled only {py_stall:.3f} s during a PyDLL call"
    assert py_during * 10 < c_during, (py_during, c_during, py_total, c_total)


# -- pidfds ----------------------------------------------------------------------------


def test_setns_pidfd_joins_several_kinds_at_once() -> None:
    """Rule: setns on a pidfd accepts several CLONE_NEW* flags at once."""
    with child(["unshare", "--net", "--uts", "sleep", "60"]) as proc:
        want = {name: ns_link(proc.pid, name) for name in ("net", "uts", "ipc")}
        assert want["net"] != thread_ns("net")
        assert want["uts"] != thread_ns("uts")
        pidfd = os.pidfd_open(proc.pid)
        try:

            def work() -> dict[str, str]:
                _sys.setns(pidfd, Kind.NET | Kind.UTS)
                return {name: thread_ns(name) for name in ("net", "uts", "ipc")}

            got = on_thread(work)
        finally:
            os.close(pidfd)
        assert got["net"] == want["net"]
        assert got["uts"] == want["uts"]
        assert got["ipc"] == thread_ns("ipc")  # only the kinds asked for


# -- NS_GET_NSTYPE ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(Kind.all().singles()), ids=lambda k: k.proc_name)
def test_ns_get_nstype_tells_the_kind(kind: Kind) -> None:
    """Rule: ioctl(NS_GET_NSTYPE) tells a namespace fd's kind."""
    fd = os.open(f"/proc/thread-self/ns/{kind.proc_name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert fcntl.ioctl(fd, _sys.NS_GET_NSTYPE) == int(kind)
        assert _sys.nstype(fd) is kind
    finally:
        os.close(fd)


def test_ns_get_nstype_gives_enotty_for_other_files(tmp_path: Path) -> None:
    """Rule: ioctl(NS_GET_NSTYPE) gives ENOTTY for a file that is not a namespace."""
    path = tmp_path / "plain"
    path.write_text("not a namespace\n")
    for name in (os.fspath(path), "/dev/null", "/proc/self/status"):
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            assert errno_of(functools.partial(fcntl.ioctl, fd, _sys.NS_GET_NSTYPE)) == errno.ENOTTY
            with pytest.raises(NotANamespaceError) as info:
                _sys.nstype(fd, path=name)
            assert info.value.errno == errno.ENOTTY
        finally:
            os.close(fd)


# -- what keeps a namespace alive ------------------------------------------------------


def stays_alive(w: Witness) -> bool:
    """Whether the witness's netns survives :data:`STAYS_ALIVE` seconds."""
    return not wait_until(lambda: not w.alive(), timeout=STAYS_ALIVE)


def test_netns_dies_with_its_last_fd(witness: Callable[[NamespaceSet], Witness]) -> None:
    """Rule: a namespace lives while an open fd refers to it."""
    s = NamespaceSet.unshare(Kind.NET)
    w = witness(s)
    with s:
        other = s.dup()
    try:
        assert stays_alive(w), "the netns died while a dup'd fd still held it"
    finally:
        other.close()
    assert w.wait_gone(), "the netns outlived its last fd"


def test_netns_lives_while_bind_mounted(
    witness: Callable[[NamespaceSet], Witness], tmp_path: Path
) -> None:
    """Rule: a namespace lives while a bind mount refers to it."""
    path = tmp_path / "net"
    with NamespaceSet.unshare(Kind.NET) as s:
        w = witness(s)
        s.mount_ns(Kind.NET, path)
    try:
        assert stays_alive(w), "the netns died while bind-mounted"
        with NamespaceSet.from_path(path, Kind.NET) as again:
            assert w.alive()
            assert again.id(Kind.NET) == os.stat(path).st_ino
    finally:
        NamespaceSet.unmount(path)
    assert w.wait_gone(), "the netns outlived its bind mount"


def test_netns_lives_while_a_process_is_inside(
    witness: Callable[[NamespaceSet], Witness],
) -> None:
    """Rule: a namespace lives while a task (a process) is inside it."""
    with NamespaceSet.unshare(Kind.NET) as s:
        w = witness(s)
        fd = s.fds(Kind.NET)[Kind.NET]
        want = f"net:[{s.id(Kind.NET)}]"
        proc = subprocess.Popen(
            ["nsenter", f"--net=/proc/{os.getpid()}/fd/{fd}", "sleep", "60"],
            stdin=subprocess.DEVNULL,
        )
        try:
            # nsenter opens the set's fd by path: keep the set open until it has.
            assert wait_until(lambda: comm(proc.pid) == "sleep", timeout=5)
            assert ns_link(proc.pid, "net") == want
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    try:
        assert stays_alive(w), "the netns died while a process was inside"
    finally:
        proc.kill()
        proc.wait()
    assert w.wait_gone(), "the netns outlived the last process inside"


def test_netns_lives_while_a_thread_is_inside(
    witness: Callable[[NamespaceSet], Witness],
) -> None:
    """Rule: a namespace lives while a task (a thread parked inside) is in it."""
    entered, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    with NamespaceSet.unshare(Kind.NET) as s:
        w = witness(s)
        fd = s.fds(Kind.NET)[Kind.NET]

        def park() -> None:
            try:
                _sys.setns(fd, Kind.NET)
            except BaseException as exc:
                errors.append(exc)
            finally:
                entered.set()
            release.wait()

        thread = threading.Thread(target=park)
        thread.start()
        entered.wait()
    try:
        assert not errors
        assert stays_alive(w), "the netns died while a thread was inside"
    finally:
        release.set()
        thread.join()
    assert w.wait_gone(), "the netns outlived the last thread inside"


# -- Python's own syscall wrappers -----------------------------------------------------


def test_os_setns_exists_from_python_3_12() -> None:
    """Rule: Python 3.12+ has os.setns/os.unshare; 3.11 does not."""
    newer = sys.version_info >= (3, 12)
    assert hasattr(os, "setns") == newer
    assert hasattr(os, "unshare") == newer
    assert ("os" in _sys.available_backends()) == newer
