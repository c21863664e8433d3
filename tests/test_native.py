"""The optional compiled helper and its pure-Python fallback, on the real kernel.

Each behaviour is checked on both paths in the same run: the compiled one
(skipped, with the build's reason, where nothing was built) and the
fallback, forced by patching :mod:`nspool._native` (or, in a child
interpreter, by ``NSPOOL_NATIVE=0``).
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from nspool import Kind, NamespaceSet, Workers, _native, _sys, workers

from .conftest import wait_until
from .test_userns import fresh_workers, run

T = TypeVar("T")
PACKAGE = Path(_native.__file__).parent
NOT_BUILT = f"compiled pid init not in use: {_native.REASON}"


@pytest.fixture(params=["native", "python"])
def init(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which init the sets of the test get: the compiled one, or the Python
    one (forced by hiding the compiled one)."""
    if request.param == "native":
        if _native.PIDINIT is None:
            pytest.skip(NOT_BUILT)
    else:
        monkeypatch.setattr(_native, "PIDINIT", None)
    return str(request.param)


def init_argv(which: str, arg: str) -> list[str]:
    if which == "native":
        if _native.PIDINIT is None:
            pytest.skip(NOT_BUILT)
        return [_native.PIDINIT, arg]
    return [_sys.python(), "-I", "-S", _sys.child_program("_pidinit_child.py"), arg]


def children_of(pid: int) -> list[int]:
    """The children (zombies included) of process ``pid``."""
    found: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/children") as f:
            found += [int(p) for p in f.read().split()]
    return found


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def waiting_on_stdin(pid: int) -> bool:
    """Whether ``pid`` sleeps reading a pipe: an init that has started up
    (``PidInit.start`` does not wait for that unless it mounts /proc)."""
    with open(f"/proc/{pid}/wchan") as f:
        return f.read().endswith("pipe_read")


def is_init_program(pid: int, which: str) -> bool:
    exe = os.readlink(f"/proc/{pid}/exe")
    if which == "native":
        return exe == _native.PIDINIT
    return os.path.realpath(exe) == os.path.realpath(sys.executable)


# --- the pid init ---------------------------------------------------------


__all__ = ["fresh_workers"]  # a fixture of this module's tests


def test_a_process_in_the_set_is_pid_2_or_more(fresh_workers: None, init: str) -> None:
    with NamespaceSet.unshare(Kind.PID) as s:
        assert s.init_pid is not None
        assert is_init_program(s.init_pid, init)
        assert int(run(s, "echo $$")) >= 2


def test_an_orphan_is_reaped(fresh_workers: None, init: str) -> None:
    """A process whose parent exits is reparented to the init, which reaps
    it when it ends: no zombie is left."""
    with NamespaceSet.unshare(Kind.PID) as s:
        assert s.init_pid is not None
        run(s, "sleep 0.3 >/dev/null 2>&1 &")
        assert wait_until(lambda: len(children_of(s.init_pid)) == 1, timeout=0.25)
        assert wait_until(lambda: children_of(s.init_pid) == [], timeout=5)


def test_closing_the_set_ends_its_processes(fresh_workers: None, init: str) -> None:
    with NamespaceSet.unshare(Kind.PID) as s:
        assert s.init_pid is not None
        init_pid = s.init_pid
        run(s, "sleep 60 >/dev/null 2>&1 &")
        assert wait_until(lambda: len(children_of(init_pid)) == 1)
        (orphan,) = children_of(init_pid)
    assert wait_until(lambda: not os.path.exists(f"/proc/{orphan}"))
    assert wait_until(lambda: not os.path.exists(f"/proc/{init_pid}"))


def test_private_proc(fresh_workers: None, init: str) -> None:
    """The init mounts a /proc of the set's pid namespace: a process there
    sees only PID 1 and itself."""
    with NamespaceSet.unshare(Kind.PID | Kind.MNT, private_proc=True) as s:
        assert s.init_pid is not None
        assert is_init_program(s.init_pid, init)
        pids = run(s, "echo $$; exec ls /proc").split()
        assert {int(p) for p in pids[1:] if p.isdigit()} == {1, int(pids[0])}


@pytest.mark.parametrize("private_proc", [False, True], ids=["shared-proc", "private-proc"])
def test_a_set_in_a_user_namespace_keeps_the_same_init(
    fresh_workers: None, init: str, private_proc: bool
) -> None:
    """A set with pid and user namespaces, made by the helper process, keeps
    the same init as any other set: the compiled one where it was built,
    else the Python one. It is PID 1 there, reaps orphans, mounts the
    private /proc when asked, and ends with the set."""
    kinds = Kind.USER | Kind.PID
    if private_proc:
        kinds |= Kind.MNT
    with NamespaceSet.unshare(kinds, private_proc=private_proc) as s:
        init_pid = s.init_pid
        assert init_pid is not None
        assert is_init_program(init_pid, init)
        pids = run(s, "echo $$; exec ls /proc").split()
        assert int(pids[0]) >= 2
        if private_proc:
            assert {int(p) for p in pids[1:] if p.isdigit()} == {1, int(pids[0])}
        run(s, "sleep 0.3 >/dev/null 2>&1 &")
        assert wait_until(lambda: len(children_of(init_pid)) == 1, timeout=0.25)
        assert wait_until(lambda: children_of(init_pid) == [], timeout=5)
    assert wait_until(lambda: not os.path.exists(f"/proc/{init_pid}"))


def test_the_compiled_init_is_small(fresh_workers: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The compiled init's RSS is a small fraction of the Python one's."""
    if _native.PIDINIT is None:
        pytest.skip(NOT_BUILT)
    with NamespaceSet.unshare(Kind.PID) as small:
        monkeypatch.setattr(_native, "PIDINIT", None)
        with NamespaceSet.unshare(Kind.PID) as big:
            assert small.init_pid is not None
            assert big.init_pid is not None
            for pid in (small.init_pid, big.init_pid):
                assert wait_until(lambda pid=pid: waiting_on_stdin(pid))
            native, python = rss_kib(small.init_pid), rss_kib(big.init_pid)
    assert native < 2048, native
    assert native * 4 < python, (native, python)


@pytest.mark.parametrize("which", ["native", "python"])
@pytest.mark.parametrize("args", [[], ["x"], ["-1"], ["1", "2"], [""]])
def test_init_wrong_arguments(which: str, args: list[str]) -> None:
    """Both inits: status 2, a usage line on stderr, nothing on stdout."""
    argv = init_argv(which, "-")[:-1] + args
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done
    assert done.stderr.startswith("usage: "), done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("which", ["native", "python"])
def test_init_ignores_sigint_and_exits_at_end_of_stdin(which: str) -> None:
    """Both inits: SIGINT does nothing; the end of stdin ends it, status 0,
    nothing said."""
    with subprocess.Popen(
        init_argv(which, "-"), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    ) as init:
        assert init.stdin is not None
        assert init.stdout is not None
        # Once it waits on stdin, its signal dispositions are set.
        assert wait_until(lambda: waiting_on_stdin(init.pid))
        init.send_signal(signal.SIGINT)
        with pytest.raises(subprocess.TimeoutExpired):
            init.wait(timeout=0.2)
        init.stdin.close()
        assert init.wait(timeout=10) == 0
        assert init.stdout.read() == b""


def test_native_0_ignores_what_was_built() -> None:
    """``NSPOOL_NATIVE=0``: the fallback everywhere, and doctor is told why."""
    code = (
        "from nspool import _native as n\n"
        "assert not n.AVAILABLE and not n.EXT and n.PIDINIT is None\n"
        "assert n.read_inodes is n.py_read_inodes and n.setns is n.py_setns\n"
        "assert n.check_and_return is n.py_check_and_return\n"
        "print(n.REASON)\n"
    )
    env = {**os.environ, "NSPOOL_NATIVE": "0", "PYTHONPATH": str(PACKAGE.parent)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "NSPOOL_NATIVE=0" in done.stdout


# --- the hop primitives ---------------------------------------------------

CLONE_FILES = 0x00000400
CLONE_NEWNET = int(Kind.NET)
NAMES = (b"net", b"uts", b"ipc")


def implementations() -> list[object]:
    """The fallback, and the compiled module's functions where built."""
    found: list[object] = [pytest.param("python", id="python")]
    marks = [] if _native.EXT else [pytest.mark.skip(reason=f"not built: {_native.REASON}")]
    found.append(pytest.param("native", id="native", marks=marks))
    return found


def hop(which: str, name: str) -> Any:
    """Function ``name`` of path ``which``."""
    if which == "python":
        return getattr(_native, f"py_{name}")
    assert _native.EXT
    return getattr(_native, name)


def on_thread(fn: Callable[[], T]) -> T:
    """``fn()``'s result on a throwaway thread (whose namespaces and fs it
    may change: they end with it)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def errno_of(call: Callable[[], object]) -> int | None:
    """The errno of the ``OSError`` that ``call()`` raises (None if none)."""
    try:
        call()
    except OSError as exc:
        return exc.errno
    return None


def own_ns_dir() -> int:
    return os.open("thread-self/ns", os.O_RDONLY | os.O_DIRECTORY, dir_fd=_sys.HOST_PROC)


def own_inodes(names: tuple[bytes, ...]) -> tuple[int, ...]:
    return tuple(os.stat(f"/proc/thread-self/ns/{n.decode()}").st_ino for n in names)


@pytest.mark.parametrize("which", implementations())
def test_read_inodes(which: str) -> None:
    read_inodes = hop(which, "read_inodes")
    dirfd = own_ns_dir()
    try:
        assert read_inodes(dirfd, NAMES) == own_inodes(NAMES)
        assert read_inodes(dirfd, ()) == ()
        assert errno_of(lambda: read_inodes(dirfd, (b"net", b"nothing"))) == errno.ENOENT
    finally:
        os.close(dirfd)
    assert errno_of(lambda: read_inodes(-1, NAMES)) == errno.EBADF
    # A link that is not a namespace's: /proc/self/cwd.
    assert errno_of(lambda: read_inodes(_sys.HOST_PROC, (b"self/cwd",))) == errno.EINVAL


@pytest.mark.parametrize("which", implementations())
def test_setns(which: str) -> None:
    setns = hop(which, "setns")
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        assert setns(fd, CLONE_NEWNET) is None
        assert setns(fd, 0) is None
        assert errno_of(lambda: setns(fd, int(Kind.UTS))) == errno.EINVAL
    finally:
        os.close(fd)
    assert errno_of(lambda: setns(-1, CLONE_NEWNET)) == errno.EBADF


def check_on_a_thread(
    which: str,
    before: Callable[[], None],
    *,
    check_fs: bool = True,
    names: tuple[bytes, ...] = NAMES,
    anchor: bool = False,
    dirfd: int | None = None,
    tid: int | None = None,
) -> int:
    """check_and_return on a throwaway thread whose expected links are read
    first, after which it runs ``before`` (the harm to catch)."""
    check_and_return = hop(which, "check_and_return")

    # Opened by the thread, closed here once it is done: a thread that
    # unshared its fd table would close only its own copies.
    opened: list[int] = []

    def run() -> int:
        expected = own_inodes(names)
        opened.append(own := own_ns_dir())
        opened.append(home := os.open("/proc/thread-self/ns/net", os.O_RDONLY))
        before()
        return int(
            check_and_return(
                os.getpid(),
                threading.get_native_id() if tid is None else tid,
                check_fs,
                own if dirfd is None else dirfd,
                names,
                expected,
                home if anchor else -1,
                CLONE_NEWNET,
            )
        )

    try:
        return on_thread(run)
    finally:
        for fd in opened:
            os.close(fd)


def nothing() -> None:
    pass


@pytest.mark.parametrize("which", implementations())
def test_check_and_return(which: str) -> None:
    assert check_on_a_thread(which, nothing) == _native.CHECK_OK
    assert check_on_a_thread(which, nothing, anchor=True) == _native.CHECK_OK
    assert check_on_a_thread(which, nothing, names=()) == _native.CHECK_OK
    # A thread that left the process's netns: the link that moved.
    moved = check_on_a_thread(which, lambda: _sys.unshare(CLONE_NEWNET))
    assert moved == _native.CHECK_LINK_MOVED + NAMES.index(b"net")
    # The anchor puts it back when all else is well.
    back = check_on_a_thread(
        which, lambda: _sys.unshare(CLONE_NEWNET), names=(b"uts",), anchor=True
    )
    assert back == _native.CHECK_OK
    # Its own fs (cwd, root): caught only when asked for.
    assert check_on_a_thread(which, _sys.unshare_fs) == _native.CHECK_FS_DIFFERS
    assert check_on_a_thread(which, _sys.unshare_fs, check_fs=False) == _native.CHECK_OK
    # Its own fd table.
    files = check_on_a_thread(which, lambda: _sys.unshare(CLONE_FILES))
    assert files == _native.CHECK_FILES_DIFFER
    # A failed syscall: -errno.
    assert check_on_a_thread(which, nothing, dirfd=-1) == -errno.EBADF
    assert check_on_a_thread(which, nothing, tid=2**22 + 1) == -errno.ESRCH


def test_both_paths_give_the_same_results() -> None:
    """The compiled functions and the fallbacks side by side, same inputs."""
    if not _native.EXT:
        pytest.skip(f"not built: {_native.REASON}")
    cases: list[tuple[Callable[[], None], dict[str, Any]]] = [
        (nothing, {}),
        (lambda: _sys.unshare(CLONE_NEWNET), {}),
        (_sys.unshare_fs, {}),
        (_sys.unshare_fs, {"check_fs": False}),
        (nothing, {"dirfd": 12345}),
    ]
    for before, options in cases:
        results = {w: check_on_a_thread(w, before, **options) for w in ("python", "native")}
        assert results["python"] == results["native"], (before, options, results)


# -- the workers' checks after a call take the compiled helper's one call ---------------


def test_workers_check_in_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call in a netns is checked and sent home by one check_and_return
    (compiled, or with NSPOOL_NATIVE=0 its Python twin: CI runs this file
    both ways); a callable that moves the thread is still caught
    (the helper says so, the checks one by one say what), and its thread is
    never given another call."""

    calls: list[int] = []
    real = _native.check_and_return

    def counting(*args: Any) -> int:
        result: int = real(*args)
        calls.append(result)
        return result

    monkeypatch.setattr(_native, "check_and_return", counting)
    with Workers(max_workers=1) as w, NamespaceSet.unshare(Kind.NET) as s:
        assert w.run_sync(s, os.readlink, "/proc/thread-self/ns/net") == f"net:[{s.id(Kind.NET)}]"
        assert calls == [_native.CHECK_OK]
        first = w.run_sync(s, threading.get_native_id)
        w.run_sync(s, _sys.unshare, Kind.NET)  # the callable moves its thread
        assert calls[-1] >= _native.CHECK_LINK_MOVED
        assert w.stats().discarded == 1
        assert w.run_sync(s, threading.get_native_id) != first
        assert workers.CHECK_EVERY_KIND is False


# --- the hand-off baton ---------------------------------------------------


def baton_of(which: str) -> tuple[Callable[[], _native.BatonLike], Any]:
    """``Baton`` and ``pass_baton`` of path ``which``."""
    if which == "python":
        return _native.PyBaton, _native.py_pass_baton
    assert _native.EXT
    return _native.Baton, _native.pass_baton


class Interrupted(Exception):
    """Raised by the test's SIGALRM handler."""


@pytest.fixture
def alarm() -> Iterator[Callable[[float], None]]:
    """``alarm(seconds)``: raise :class:`Interrupted` in the main thread
    (this test's) that many seconds from now."""

    def fire(_signum: int, _frame: object) -> None:
        raise Interrupted

    old = signal.signal(signal.SIGALRM, fire)
    try:
        yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("which", implementations())
def test_baton_posts_do_not_add_up_and_waits_time_out(which: str) -> None:
    baton_cls, _ = baton_of(which)
    b = baton_cls()
    assert b.wait(0.01) is False
    b.post()
    b.post()
    assert b.wait(0.01) is True
    assert b.wait(0.05) is False


@pytest.mark.parametrize("which", implementations())
def test_pass_baton_wakes_the_other_thread_and_waits_for_its_answer(which: str) -> None:
    """Ping-pong between two threads, each posting the other's baton and
    waiting on its own: every round trip is answered, in order."""
    baton_cls, pass_baton = baton_of(which)
    mine, theirs = baton_cls(), baton_cls()
    seen: list[int] = []

    def other() -> None:
        for i in range(200):
            assert theirs.wait(10)
            seen.append(i)
            mine.post()

    t = threading.Thread(target=other)
    t.start()
    for i in range(200):
        assert pass_baton(theirs, mine, 10.0)
        assert seen[-1] == i
    t.join(10)
    assert seen == list(range(200))


@pytest.mark.parametrize("which", implementations())
def test_a_baton_wait_is_interrupted_by_a_signal_handler(
    which: str, alarm: Callable[[float], None]
) -> None:
    """A signal handler's exception ends the wait (as for a lock), and a
    handler that returns lets it go on waiting."""
    baton_cls, pass_baton = baton_of(which)
    b, other = baton_cls(), baton_cls()
    alarm(0.05)
    with pytest.raises(Interrupted):
        b.wait(-1.0)
    alarm(0.05)
    with pytest.raises(Interrupted):
        pass_baton(other, b, -1.0)
    assert other.wait(0) is True, "posted before the wait began"


@pytest.mark.parametrize("native", [False, True], ids=["python", "native"])
def test_run_sync_wait_is_interrupted_by_a_signal_handler(
    native: bool, monkeypatch: pytest.MonkeyPatch, alarm: Callable[[float], None]
) -> None:
    """Workers.run_sync's promise: an exception raised by a signal handler
    in the waiting thread stops the wait, not the call, which finishes in
    the background; the worker serves the next call."""
    if native and not _native.EXT:
        pytest.skip(f"not built: {_native.REASON}")
    if not native:
        monkeypatch.setattr(workers, "Baton", _native.PyBaton)
        monkeypatch.setattr(_native, "Baton", _native.PyBaton)
        monkeypatch.setattr(_native, "pass_baton", _native.py_pass_baton)
    finished = threading.Event()

    def slow() -> None:
        time.sleep(0.3)
        finished.set()

    with Workers(max_workers=1) as w, NamespaceSet.unshare(Kind.NET) as s:
        alarm(0.05)
        started = time.monotonic()
        with pytest.raises(Interrupted):
            w.run_sync(s, slow)
        assert time.monotonic() - started < 0.25
        assert finished.wait(5)
        assert w.run_sync(s, os.readlink, "/proc/thread-self/ns/net") == f"net:[{s.id(Kind.NET)}]"
