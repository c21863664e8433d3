"""``NamespaceSet`` against the real kernel, with outside witnesses.

``ip netns``, ``nsenter`` and veth pairs check from outside what the set
claims; the autouse ``no_leaks`` fixture checks that every test leaves no fd,
thread or mount behind.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator

import pytest

from nspool import (
    Kind,
    KindError,
    KindMismatchError,
    NamespaceError,
    NamespaceExistsError,
    NamespaceNotFoundError,
    NamespaceSet,
    NotANamespaceError,
    ProcessNotFoundError,
    SetClosedError,
    UnsupportedKindError,
    _sys,
    _thread_ns,
)

from .conftest import Witness, ip, on_thread, open_fds, thread_ns, unique_name, wait_until

WitnessFactory = Callable[[NamespaceSet], Witness]
CREATABLE = Kind.all() & ~Kind.USER


def ns_link(pid: int | str, name: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{name}")


def link_ino(link: str) -> int:
    return int(link.split("[")[1].rstrip("]"))


@pytest.fixture
def sleeper() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """``sleeper(*unshare_flags)`` starts ``sleep`` (under ``unshare`` with
    those flags, if any) and kills and reaps it after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*flags: str) -> subprocess.Popen[bytes]:
        argv = ["unshare", *flags, "sleep", "60"] if flags else ["sleep", "60"]
        proc = subprocess.Popen(argv)
        started.append(proc)
        # unshare execs sleep in place; wait until it has.
        assert wait_until(lambda: os.readlink(f"/proc/{proc.pid}/exe").endswith("sleep"))
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def enter_and(s: NamespaceSet, fn: Callable[[], object]) -> object:
    """Enter ``s`` on a throwaway thread and return ``fn()`` from there."""

    def run() -> object:
        _thread_ns.enter(s.fds(), skip=Kind.TIME)
        return fn()

    return on_thread(run)


def assert_cloexec(s: NamespaceSet) -> None:
    for fd in s.fds().values():
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC


# -- creating ------------------------------------------------------------------


def test_unshare_makes_new_namespaces_and_leaves_the_caller_where_it_was(
    witness: WitnessFactory,
) -> None:
    """New net and uts namespaces; the calling thread's links do not change;
    after close the netns is destroyed (the veth witness disappears)."""
    before = {k: thread_ns(k) for k in ("net", "uts", "ipc", "mnt")}
    s = NamespaceSet.unshare(Kind.NET | Kind.UTS)
    assert {k: thread_ns(k) for k in ("net", "uts", "ipc", "mnt")} == before
    assert s.kinds == Kind.NET | Kind.UTS
    assert s.id(Kind.NET) != link_ino(before["net"])
    assert s.id("uts") != link_ino(before["uts"])
    assert_cloexec(s)
    w = witness(s)
    assert w.alive()
    s.close()
    assert w.wait_gone(), "the netns outlived close()"


def test_unshare_every_creatable_kind() -> None:
    """Every kind but user can be created; each namespace is new."""
    with NamespaceSet.current(CREATABLE) as home, NamespaceSet.unshare(CREATABLE) as s:
        assert s.kinds == CREATABLE
        for kind, ino in s.ids().items():
            assert ino != home.id(kind), kind
        assert s.init_pid is not None
        assert_cloexec(s)


@pytest.mark.parametrize("bad", ["", 0, "netz", 0x1])
def test_unshare_bad_kinds(bad: object) -> None:
    """An empty or unknown kind set is a KindError; nothing is opened."""
    fds = open_fds()
    with pytest.raises(KindError):
        NamespaceSet.unshare(bad)  # type: ignore[arg-type]
    assert open_fds() == fds


def test_many_threads_unshare_at_once() -> None:
    """Concurrent creation gives distinct namespaces and leaks nothing."""
    results: list[NamespaceSet] = []
    lock = threading.Lock()

    def make() -> None:
        for _ in range(5):
            s = NamespaceSet.unshare(Kind.NET)
            with lock:
                results.append(s)

    threads = [threading.Thread(target=make) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len({s.id(Kind.NET) for s in results}) == 20
    finally:
        for s in results:
            s.close()


def test_pid_namespace_keeps_an_init_and_close_ends_it() -> None:
    """A new pid namespace has an init (its PID 1) for the set's life;
    closing the set ends it."""
    s = NamespaceSet.unshare(Kind.PID)
    pid = s.init_pid
    assert pid is not None
    with open(f"/proc/{pid}/status") as f:
        nspid = next(line for line in f if line.startswith("NSpid:")).split()
    assert nspid[-1] == "1"
    assert link_ino(ns_link(pid, "pid")) == s.id(Kind.PID)
    s.close()
    assert not os.path.exists(f"/proc/{pid}")


def test_time_namespace_is_for_children() -> None:
    """A new time namespace is held via time_for_children; the init of a pid
    namespace made with it stays outside it, so offsets stay settable."""
    with NamespaceSet.current(Kind.TIME) as home, NamespaceSet.unshare("time,pid") as s:
        assert s.id(Kind.TIME) != home.id(Kind.TIME)
        assert s.init_pid is not None
        assert link_ino(ns_link(s.init_pid, "time")) == home.id(Kind.TIME)


def test_mount_namespace_is_private() -> None:
    """A mount made inside a new mount namespace does not reach the host."""
    with NamespaceSet.unshare(Kind.MNT) as s:
        target = "/mnt"

        def mount_tmpfs() -> bool:
            _sys.mount("tmpfs", target, "tmpfs", 0)
            with open("/proc/thread-self/mountinfo") as f:
                return any(line.split()[4] == target for line in f)

        assert enter_and(s, mount_tmpfs)
        with open("/proc/self/mountinfo") as f:
            assert not any(line.split()[4] == target for line in f)


# -- nested --------------------------------------------------------------------


def test_nested_unshare_shares_the_rest(witness: WitnessFactory) -> None:
    """s.unshare(IPC) makes a new ipc ns and holds s's netns as well."""
    with NamespaceSet.unshare(Kind.NET) as s, NamespaceSet.current(Kind.IPC) as home:
        w = witness(s)
        n = s.unshare(Kind.IPC)
        assert n.kinds == Kind.NET | Kind.IPC
        assert n.id(Kind.NET) == s.id(Kind.NET)
        assert n.id(Kind.IPC) != home.id(Kind.IPC)
        s.close()
        assert w.alive(), "the nested set should keep the shared netns"
        n.close()
        assert w.wait_gone()


def test_nested_mount_namespace_copies_the_sets_mounts() -> None:
    """A mount namespace nested in s starts as a copy of s's, not the host's."""
    with NamespaceSet.unshare(Kind.MNT) as s:
        enter_and(s, lambda: _sys.mount("tmpfs", "/mnt", "tmpfs", 0))
        with s.unshare(Kind.MNT | Kind.UTS) as n:
            assert n.id(Kind.MNT) != s.id(Kind.MNT)

            def has_tmpfs() -> bool:
                with open("/proc/thread-self/mountinfo") as f:
                    return any(line.split()[4] == "/mnt" for line in f)

            assert enter_and(n, has_tmpfs)


def test_nested_set_shares_the_pid_init() -> None:
    """A set nested in one with a new pid ns keeps its init alive."""
    s = NamespaceSet.unshare(Kind.PID | Kind.NET)
    pid = s.init_pid
    n = s.unshare(Kind.UTS)
    assert n.init_pid == pid
    s.close()
    assert os.path.exists(f"/proc/{pid}")
    n.close()
    assert not os.path.exists(f"/proc/{pid}")


def test_nested_pid_namespace_is_refused() -> None:
    """The kernel cannot make a pid ns from a thread that joined another;
    the error says so and nothing leaks."""
    with NamespaceSet.unshare(Kind.PID) as s, pytest.raises(UnsupportedKindError):
        s.unshare(Kind.PID)


# -- joining existing namespaces ---------------------------------------------------


def test_current_is_the_calling_threads() -> None:
    """current() holds exactly the calling thread's namespaces."""
    with NamespaceSet.current() as s:
        assert s.kinds == Kind.all()
        for kind, ino in s.ids().items():
            assert ino == link_ino(thread_ns(kind.for_children_name)), kind
        assert_cloexec(s)


def test_current_on_a_thread_inside_a_set() -> None:
    """current() on a thread that entered a set gives that set's namespaces."""
    with NamespaceSet.unshare(Kind.NET | Kind.UTS) as s:

        def read() -> dict[Kind, int]:
            with NamespaceSet.current("net,uts") as c:
                return c.ids()

        assert enter_and(s, read) == s.ids()


def test_from_pid_matches_nsenter(
    sleeper: Callable[..., subprocess.Popen[bytes]], witness: WitnessFactory
) -> None:
    """from_pid sees the process's namespaces: nsenter into the same pid
    finds the veth end planted through the set."""
    proc = sleeper("--net", "--uts")
    with NamespaceSet.from_pid(proc.pid, Kind.NET | Kind.UTS) as s:
        assert s.id(Kind.NET) == link_ino(ns_link(proc.pid, "net"))
        assert s.id(Kind.UTS) == link_ino(ns_link(proc.pid, "uts"))
        assert_cloexec(s)
        w = witness(s)
        out = subprocess.run(
            ["nsenter", "-t", str(proc.pid), "-n", "ip", "-br", "link"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert w.inside in out


def test_from_pid_every_kind(sleeper: Callable[..., subprocess.Popen[bytes]]) -> None:
    """All eight kinds of a process, pid and time as it lives in them."""
    proc = sleeper()
    with NamespaceSet.from_pid(proc.pid) as s:
        assert s.kinds == Kind.all()
        for kind, ino in s.ids().items():
            assert ino == link_ino(ns_link(proc.pid, kind.proc_name))


def test_from_pid_of_a_dead_process() -> None:
    """A reaped pid and a zombie are ProcessNotFoundError; nothing leaks."""
    proc = subprocess.Popen(["true"])
    assert wait_until(lambda: _zombie(proc.pid))
    fds = open_fds()
    with pytest.raises(ProcessNotFoundError) as info:
        NamespaceSet.from_pid(proc.pid, Kind.NET)
    assert info.value.pid == proc.pid
    proc.wait()
    with pytest.raises(ProcessNotFoundError, match=f"pid {proc.pid}"):
        NamespaceSet.from_pid(proc.pid, Kind.NET)
    with pytest.raises(ProcessNotFoundError):
        NamespaceSet.from_pid(-1)
    assert open_fds() == fds


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("moment", ["after pidfd_open", "after opening /proc/PID/ns"])
def test_from_pid_process_exits_mid_read(
    monkeypatch: pytest.MonkeyPatch,
    sleeper: Callable[..., subprocess.Popen[bytes]],
    moment: str,
) -> None:
    """A process that exits (and is reaped, freeing its pid for reuse) while
    from_pid reads it gives ProcessNotFoundError, never other namespaces.

    The kernel cannot be made to hit this window on demand, so the test
    forces the interleaving: it kills and reaps the real process at the
    chosen moment. Every syscall still runs against the real kernel.
    """
    proc = sleeper("--net")

    def kill_and_reap() -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    if moment == "after pidfd_open":
        real_open = _sys.pidfd_open

        def pidfd_open_then_exit(pid: int) -> int:
            fd = real_open(pid)
            kill_and_reap()
            return fd

        monkeypatch.setattr(_sys, "pidfd_open", pidfd_open_then_exit)
    else:
        real_alive = _sys.pidfd_is_alive

        def exit_then_check(pidfd: int) -> bool:
            if proc.returncode is None:
                kill_and_reap()
            return real_alive(pidfd)

        monkeypatch.setattr(_sys, "pidfd_is_alive", exit_then_check)
    fds = open_fds()
    with pytest.raises(ProcessNotFoundError):
        NamespaceSet.from_pid(proc.pid, Kind.NET)
    assert open_fds() == fds


def test_from_path_checks_the_kind() -> None:
    """from_path opens a namespace file, detects or checks its kind."""
    with NamespaceSet.from_path("/proc/self/ns/net", Kind.NET) as s:
        assert s.id(Kind.NET) == link_ino(thread_ns("net"))
        assert_cloexec(s)
    with NamespaceSet.from_path("/proc/self/ns/uts") as s:
        assert s.kinds == Kind.UTS


@pytest.mark.parametrize(
    ("path", "kind", "error"),
    [
        ("/nonexistent/ns", Kind.NET, NamespaceNotFoundError),
        ("/etc/hostname", Kind.NET, NotANamespaceError),
        ("/etc", Kind.NET, NotANamespaceError),
        ("/dev/null", None, NotANamespaceError),
        ("/proc/self/ns/net", Kind.UTS, KindMismatchError),
        ("/proc/self/ns/net", Kind.NET | Kind.UTS, KindError),
        ("/proc/self/ns/net", "", KindError),
    ],
)
def test_from_path_bad_input(path: str, kind: Kind | None, error: type[Exception]) -> None:
    """Each bad input is its own NamespaceError, naming the path; no fd is left."""
    fds = open_fds()
    with pytest.raises(error) as info:
        NamespaceSet.from_path(path, kind)
    assert isinstance(info.value, NamespaceError)
    assert path in str(info.value)
    assert open_fds() == fds


def test_from_dir(sleeper: Callable[..., subprocess.Popen[bytes]]) -> None:
    """from_dir reads a /proc/PID/ns-style directory; a missing kind file is
    an error naming it."""
    proc = sleeper("--net", "--ipc")
    with NamespaceSet.from_dir(f"/proc/{proc.pid}/ns", "net,ipc") as s:
        assert s.id(Kind.IPC) == link_ino(ns_link(proc.pid, "ipc"))
    fds = open_fds()
    with pytest.raises(NamespaceNotFoundError, match="/nonexistent"):
        NamespaceSet.from_dir("/nonexistent", Kind.NET)
    with pytest.raises(NamespaceNotFoundError, match="/etc/uts"):
        NamespaceSet.from_dir("/etc", Kind.UTS)
    assert open_fds() == fds


def test_from_dir_with_a_plain_file(tmp_path: os.PathLike[str]) -> None:
    """A kind file that is no namespace is NotANamespaceError naming it."""
    with open(os.path.join(os.fspath(tmp_path), "net"), "w"):
        pass
    fds = open_fds()
    with pytest.raises(NotANamespaceError, match=f"{tmp_path}/net"):
        NamespaceSet.from_dir(tmp_path, Kind.NET)
    assert open_fds() == fds


def test_from_name_joins_ip_netns_add() -> None:
    """A netns made by `ip netns add` is the one from_name holds: same inode,
    and a process started from a thread that entered it is identified by
    `ip netns identify` under that name."""
    name = unique_name()
    ip("netns", "add", name)
    try:
        with NamespaceSet.from_name(name) as s:
            assert s.id(Kind.NET) == os.stat(f"/run/netns/{name}").st_ino
            inside = ip("netns", "exec", name, "readlink", "/proc/self/ns/net").stdout.strip()
            assert enter_and(s, lambda: thread_ns("net")) == inside

            def identify() -> str:
                child = subprocess.Popen(["sleep", "30"])
                try:
                    return ip("netns", "identify", str(child.pid)).stdout.strip()
                finally:
                    child.kill()
                    child.wait()

            assert enter_and(s, identify) == name
    finally:
        ip("netns", "del", name)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "missing-name"])
def test_from_name_bad_names(name: str) -> None:
    """Invalid or unknown names are NamespaceNotFoundError."""
    fds = open_fds()
    with pytest.raises(NamespaceNotFoundError):
        NamespaceSet.from_name(name if name != "missing-name" else unique_name())
    assert open_fds() == fds


# -- persistence -----------------------------------------------------------------


def test_persist_is_seen_by_ip_netns(witness: WitnessFactory) -> None:
    """A persisted set is listed by `ip netns`, usable by `ip netns exec`,
    outlives the set, and unpersist removes it without leaving a file."""
    name = unique_name()
    s = NamespaceSet.unshare(Kind.NET)
    w = witness(s)
    path = s.persist(name)
    try:
        assert path == f"/run/netns/{name}"
        assert name in ip("netns", "list").stdout.split()
        assert w.inside in ip("netns", "exec", name, "ip", "-br", "link").stdout
        s.close()
        assert not w.wait_gone(timeout=0.3), "the bind mount should keep the netns"
        with pytest.raises(NamespaceExistsError):
            _persist_twice(name)
    finally:
        NamespaceSet.unpersist(name)
    assert not os.path.lexists(path)
    assert w.wait_gone()


def _persist_twice(name: str) -> None:
    with NamespaceSet.unshare(Kind.NET) as other:
        other.persist(name)


def test_ip_netns_del_removes_a_persisted_set(witness: WitnessFactory) -> None:
    """`ip netns del` accepts a name made by persist()."""
    name = unique_name()
    with NamespaceSet.unshare(Kind.NET) as s:
        w = witness(s)
        s.persist(name)
    ip("netns", "del", name)
    assert not os.path.lexists(f"/run/netns/{name}")
    assert w.wait_gone()


def test_persist_needs_a_netns() -> None:
    """persist() on a set without a netns is a KindError; nothing is created."""
    name = unique_name()
    with NamespaceSet.unshare(Kind.UTS) as s, pytest.raises(KindError):
        s.persist(name)
    assert not os.path.lexists(f"/run/netns/{name}")


def test_unpersist_unknown_name() -> None:
    """unpersist of a name that does not exist is NamespaceNotFoundError."""
    with pytest.raises(NamespaceNotFoundError):
        NamespaceSet.unpersist(unique_name())


def test_mount_and_from_dir_round_trip(tmp_path: os.PathLike[str]) -> None:
    """mount(dir) binds every kind, from_dir reads them back, unmount removes
    the mounts and the directory."""
    directory = os.path.join(os.fspath(tmp_path), "ns")
    with NamespaceSet.unshare("net,uts,ipc,mnt,cgroup") as s:
        s.mount(directory)
        try:
            assert sorted(os.listdir(directory)) == ["cgroup", "ipc", "mnt", "net", "uts"]
            with NamespaceSet.from_dir(directory, s.kinds) as back:
                assert back.ids() == s.ids()
        finally:
            NamespaceSet.unmount(directory)
    assert not os.path.exists(directory)


def test_mount_ns_outlives_the_set(tmp_path: os.PathLike[str], witness: WitnessFactory) -> None:
    """A namespace bound with mount_ns lives on after close, until unmount."""
    path = os.path.join(os.fspath(tmp_path), "netns")
    s = NamespaceSet.unshare(Kind.NET)
    w = witness(s)
    s.mount_ns(Kind.NET, path)
    s.close()
    with NamespaceSet.from_path(path, Kind.NET) as again:
        assert again.kinds == Kind.NET
    assert w.alive()
    NamespaceSet.unmount(path)
    assert not os.path.exists(path)
    assert w.wait_gone()


def test_mount_ns_errors(tmp_path: os.PathLike[str]) -> None:
    """A kind the set lacks, and a path already mounted, are errors; a
    failed mount leaves no file behind."""
    path = os.path.join(os.fspath(tmp_path), "netns")
    with NamespaceSet.unshare(Kind.NET) as s:
        with pytest.raises(KindError):
            s.mount_ns(Kind.UTS, path)
        assert not os.path.exists(path)
        s.mount_ns(Kind.NET, path)
        try:
            with pytest.raises(NamespaceExistsError):
                s.mount_ns(Kind.NET, path)
        finally:
            NamespaceSet.unmount(path)
        with pytest.raises(NamespaceNotFoundError):
            s.mount_ns(Kind.NET, os.path.join(os.fspath(tmp_path), "no", "such", "dir"))


def test_mounting_a_mount_ns_into_itself_is_refused(tmp_path: os.PathLike[str]) -> None:
    """The kernel refuses to bind the caller's own mount ns (a loop); the
    error names mount and the path, and no file is left."""
    path = os.path.join(os.fspath(tmp_path), "mnt")
    with NamespaceSet.current(Kind.MNT) as s, pytest.raises(NamespaceError) as info:
        s.mount_ns(Kind.MNT, path)
    assert info.value.errno == errno.EINVAL
    assert info.value.syscall == "mount"
    assert not os.path.exists(path)


# -- lifetime ---------------------------------------------------------------------


def test_close_is_idempotent_and_use_after_close_is_an_error() -> None:
    """Every use of a closed set raises SetClosedError (an EBADF OSError)."""
    s = NamespaceSet.unshare(Kind.NET)
    s.close()
    s.close()
    assert s.closed
    for use in (
        s.ids,
        s.fds,
        s.dup,
        lambda: s.id(Kind.NET),
        lambda: s.persist(unique_name()),
        lambda: s.unshare(Kind.UTS),
        lambda: s.mount("/nonexistent-dir"),
    ):
        with pytest.raises(SetClosedError) as info:
            use()
        assert info.value.errno == errno.EBADF
    assert "closed" in repr(s)


def test_dup_is_independent(witness: WitnessFactory) -> None:
    """A dup keeps the namespaces alive after the original closes."""
    s = NamespaceSet.unshare(Kind.NET | Kind.UTS)
    w = witness(s)
    d = s.dup(Kind.NET)
    assert d.kinds == Kind.NET
    assert d.id(Kind.NET) == s.id(Kind.NET)
    assert d.fds()[Kind.NET] != s.fds()[Kind.NET]
    assert_cloexec(d)
    s.close()
    assert not w.wait_gone(timeout=0.3)
    d.close()
    assert w.wait_gone()


def test_dup_shares_the_pid_init() -> None:
    """A dup holding the pid ns keeps its init; the last close ends it."""
    s = NamespaceSet.unshare(Kind.PID)
    pid = s.init_pid
    d = s.dup()
    s.close()
    assert d.init_pid == pid
    assert os.path.exists(f"/proc/{pid}")
    d.close()
    assert not os.path.exists(f"/proc/{pid}")


def test_close_waits_for_borrowers() -> None:
    """close() while another thread uses the fds defers closing them until
    that use ends, so an fd number is never reused under it."""
    s = NamespaceSet.unshare(Kind.NET)
    with s.handle.borrow() as fds:
        fd = fds[Kind.NET]
        on_thread(s.close)
        assert s.closed
        assert _sys.nstype(fd) is Kind.NET
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def test_unclosed_set_warns() -> None:
    """A set collected unclosed is closed with a ResourceWarning."""
    holder = [NamespaceSet.unshare(Kind.UTS)]
    fd = holder[0].fds()[Kind.UTS]
    with pytest.warns(ResourceWarning, match="unclosed"):
        _drop_and_collect(holder)
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)


def _drop_and_collect(holder: list[NamespaceSet]) -> None:
    holder.clear()
    gc.collect()


def test_repr_shows_ids() -> None:
    """repr names each kind with its inode, as /proc does."""
    with NamespaceSet.unshare(Kind.NET) as s:
        assert repr(s) == f"<NamespaceSet net:[{s.id(Kind.NET)}]>"


def test_fds_and_id_errors() -> None:
    """Asking for a kind the set lacks is a KindError."""
    with NamespaceSet.unshare(Kind.NET) as s:
        with pytest.raises(KindError):
            s.id(Kind.UTS)
        assert s.fds(Kind.UTS) == {}
        assert set(s.fds(Kind.NET)) == {Kind.NET}
