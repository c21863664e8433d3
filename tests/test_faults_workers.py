"""Faults of the worker threads found in issue 11, each against the real
kernel: a callable that changes a worker's fs or fd table, a set whose fd
number was reused, home taken from inside a set, sniffio's marker, a
drainer that cannot settle, ``os.fork()``, and rootless sockets.

Tests that could hang run their risky part in a subprocess or under a
timeout.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator

import anyio
import pytest
import sniffio

from nspool import Kind, NamespaceError, NamespaceSet, Workers, _sys, _wait, _worker, workers

from .conftest import wait_until


@pytest.fixture
def pool() -> Iterator[Workers]:
    w = Workers(max_workers=4)
    try:
        yield w
    finally:
        w.shutdown(wait=True)


def _name_and(fn: object) -> tuple[str, object]:
    assert callable(fn)
    return threading.current_thread().name, fn()


def _assert_never_reused(pool: Workers, s: NamespaceSet, name: str) -> None:
    assert wait_until(lambda: all(t.name != name for t in threading.enumerate()))
    for _ in range(10):
        got = pool.run_sync(s, lambda: threading.current_thread().name)
        assert got != name


# -- 1: fs and fd table ------------------------------------------------------------


def test_unshare_fs_and_chroot_discards_the_worker(pool: Workers) -> None:
    """unshare(CLONE_FS) + chroot: the thread is discarded, later calls
    (in another set too) see the process's root."""
    root = os.stat("/")
    with tempfile.TemporaryDirectory() as jail, NamespaceSet.unshare(Kind.UTS) as s:

        def tamper() -> str:
            _sys.unshare_fs()
            os.chroot(jail)
            return "done"

        name, result = pool.run_sync(s, lambda: _name_and(tamper))
        assert result == "done"
        assert pool.stats().discarded == 1
        _assert_never_reused(pool, s, name)
        with NamespaceSet.unshare(Kind.NET) as other:
            st = pool.run_sync(other, os.stat, "/")
            assert (st.st_dev, st.st_ino) == (root.st_dev, root.st_ino)


def test_unshare_fs_and_chdir_discards_the_worker(pool: Workers) -> None:
    with NamespaceSet.unshare(Kind.UTS) as s:

        def tamper() -> None:
            _sys.unshare_fs()
            os.chdir("/")

        name, _ = pool.run_sync(s, lambda: _name_and(tamper))
        assert pool.stats().discarded == 1
        _assert_never_reused(pool, s, name)


def test_unshare_files_discards_the_worker(pool: Workers) -> None:
    """unshare(CLONE_FILES): the thread would not see fds opened later."""
    with NamespaceSet.unshare(Kind.UTS) as s:
        name, _ = pool.run_sync(s, lambda: _name_and(lambda: _sys.unshare(0x400)))
        assert pool.stats().discarded == 1
        _assert_never_reused(pool, s, name)
        r, w = os.pipe()
        try:
            assert pool.run_sync(s, os.fstat, r).st_ino == os.fstat(r).st_ino
        finally:
            os.close(r)
            os.close(w)


def test_unshare_files_in_a_plain_submit_discards_the_worker(pool: Workers) -> None:
    pool.submit(_name_and, lambda: _sys.unshare(0x400)).result(timeout=10)
    assert wait_until(lambda: pool.stats().discarded == 1)


def test_unshare_files_in_a_stream_discards_the_drainer(pool: Workers) -> None:
    """Jobs on a stream are checked too."""
    with NamespaceSet.unshare(Kind.UTS) as s:

        async def main() -> None:
            await _wait.run_in(pool, s, _sys.unshare, 0x400)
            await _wait.run_in(pool, s, int)

        anyio.run(main)
        assert pool.stats().discarded == 1


def test_mount_ns_worker_is_checked_for_files(pool: Workers) -> None:
    """A worker in a mount-ns set has its own fs legitimately; its fd table
    is still checked."""
    with NamespaceSet.unshare(Kind.MNT) as s:
        assert pool.run_sync(s, int) == 0
        assert pool.stats().discarded == 0
        pool.run_sync(s, _sys.unshare, 0x400)
        assert pool.stats().discarded == 1


# -- 4: sniffio ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_run_callable_sees_no_async_library(pool: Workers) -> None:
    def library() -> str | None:
        try:
            return sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            return None

    with NamespaceSet.unshare(Kind.UTS) as s:
        assert await _wait.run_in(pool, s, library) is None


# -- 6: a drainer that cannot settle ----------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_drainer_that_cannot_settle_fails_the_jobs(
    pool: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mocked: the new drainer's settling fails with EMFILE (as with a
    lowered RLIMIT_NOFILE). The awaiting job gets the error instead of
    hanging, and later awaits on the set work."""
    real = _worker.Worker._settle
    failures = [1]

    def settle(self: _worker.Worker) -> None:
        if failures:
            failures.pop()
            raise OSError(errno.EMFILE, "Too many open files")
        real(self)

    monkeypatch.setattr(_worker.Worker, "_settle", settle)
    with NamespaceSet.unshare(Kind.UTS) as s:
        with anyio.fail_after(10), pytest.raises(OSError, match="Too many") as info:
            await _wait.run_in(pool, s, int)
        assert info.value.errno == errno.EMFILE
        with anyio.fail_after(10):
            assert await _wait.run_in(pool, s, int) == 0


# -- 7: fork --------------------------------------------------------------------------

_FORK_CHILD = textwrap.dedent(
    """
    import os, sys
    from nspool import Kind, NamespaceSet, Workers, workers
    mine = Workers()
    with NamespaceSet.unshare(Kind.UTS) as s:
        assert s.run_sync(int) == 0
        assert mine.run_sync(s, int) == 0
        pid = os.fork()
        if pid == 0:
            try:
                assert s.run_sync(lambda: 7) == 7
                try:
                    mine.run_sync(s, int)
                except workers.WorkersForkedError:
                    pass
                else:
                    os._exit(3)
                os._exit(0)
            except BaseException as exc:
                print(repr(exc), file=sys.stderr)
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert s.run_sync(int) == 0
        mine.shutdown()
        sys.exit(os.waitstatus_to_exitcode(status))
    """
)


def test_fork_child_gets_fresh_default_workers_or_an_error() -> None:
    """After os.fork() with workers running, the child's s.run_sync runs on
    fresh threads, and a Workers of the parent refuses at once."""
    proc = subprocess.run(
        [sys.executable, "-c", _FORK_CHILD], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


# -- 2: a set's fd number reused ------------------------------------------------------


@pytest.mark.parametrize("stay", [False, True], ids=["going-home", "staying"])
def test_set_whose_fd_number_was_reused_is_not_entered(
    pool: Workers, monkeypatch: pytest.MonkeyPatch, stay: bool
) -> None:
    """A callable closes its set's net fd and another set's fd takes the
    number: the next call that enters the first set raises instead of
    running in the second set's netns. A worker that stayed in the first
    set (STAY_IN_SET) enters nothing: its calls there run in the first
    set's netns, never the second's, until it goes home."""
    monkeypatch.setattr(workers, "STAY_IN_SET", stay)
    with NamespaceSet.unshare(Kind.NET) as a, NamespaceSet.unshare(Kind.NET) as b:
        a_fd = a.fds()[Kind.NET]
        a_link = f"net:[{a.id(Kind.NET)}]"
        assert pool.run_sync(a, os.readlink, "/proc/thread-self/ns/net") == a_link
        pool.run_sync(a, os.dup2, b.fds()[Kind.NET], a_fd)  # close a's fd, reuse the number
        if stay:
            assert pool.run_sync(a, os.readlink, "/proc/thread-self/ns/net") == a_link
            monkeypatch.setattr(workers, "STAY_IN_SET", False)
            assert pool.run_sync(a, os.readlink, "/proc/thread-self/ns/net") == a_link
        with pytest.raises(NamespaceError, match="reused"):
            pool.run_sync(a, os.readlink, "/proc/thread-self/ns/net")
        with NamespaceSet.unshare(Kind.UTS) as other:
            assert pool.run_sync(other, os.readlink, "/proc/thread-self/ns/net") == (
                os.readlink("/proc/thread-self/ns/net")
            )


# -- 3: the default executor's home ----------------------------------------------------


def test_default_workers_first_reached_inside_a_set_keep_the_process_home(
    fresh_default: None,
) -> None:
    """The default Workers first made from inside a netns set (call_inline)
    still has the process's home: later calls in a UTS-only set and plain
    submits run in the home netns, and the set's netns dies with the set."""
    with workers._default_lock:
        old, workers._default = workers._default, None
    if old is not None:
        old.shutdown(wait=True)
    home_net = os.readlink("/proc/thread-self/ns/net")
    net_of = lambda: os.readlink("/proc/thread-self/ns/net")  # noqa: E731
    with NamespaceSet.unshare(Kind.NET) as a, NamespaceSet.unshare(Kind.UTS) as u:
        assert a.call_inline(lambda: u.run_sync(net_of)) == home_net
        assert u.run_sync(net_of) == home_net
        assert workers.default_workers().submit(net_of).result(timeout=10) == home_net


# -- 17: sockets in rootless mode --------------------------------------------------------

_ROOTLESS_SOCKETS = textwrap.dedent(
    """
    import socket, sys
    import anyio
    import nspool
    from nspool import Kind, NamespaceSet

    SO_NETNS_COOKIE = 71
    nspool.enter_user_namespace()

    def cookie(sock):
        return sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)

    async def main():
        with NamespaceSet.unshare(Kind.NET) as s:
            def up_and_cookie():
                import subprocess
                subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
                with socket.socket() as probe:
                    return cookie(probe)
            inside = await s.run(up_and_cookie)
            # Made on a worker and awaited: the loop runs other tasks
            # meanwhile (it used to block on the worker).
            others = []
            async def other():
                others.append(1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(other)
                sock = await s.socket()
                assert others, "s.socket() blocked the event loop"
            with sock:
                assert cookie(sock) == inside
            listener = await s.create_tcp_listener("127.0.0.1")
            async with listener:
                port = listener.extra(anyio.abc.SocketAttribute.local_port)
                stream = await s.connect_tcp("127.0.0.1", port)
                await stream.aclose()
        print("ok")

    anyio.run(main)
    """
)


def test_rootless_sockets_are_made_on_a_worker() -> None:
    """In rootless mode s.socket(), s.create_tcp_listener() and
    s.connect_tcp() work (the socket is made on a worker) instead of
    raising UnsupportedKindError, and the loop is not blocked meanwhile
    (regression: the worker's call was a blocking run_sync)."""
    proc = subprocess.run(
        [sys.executable, "-c", _ROOTLESS_SOCKETS],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_a_discard_is_counted_before_the_waiter_wakes(pool: Workers) -> None:
    """Regression: a drainer discarded after a job delivered that job's
    outcome before the discard was counted, so a waiter that read
    ``stats()`` as soon as it woke could see ``discarded`` one short (it
    failed now and then in CI). Repeated, each wake-up sees the count."""
    with NamespaceSet.unshare(Kind.UTS) as s:

        async def main() -> None:
            for i in range(30):
                await _wait.run_in(pool, s, _sys.unshare, 0x400)  # CLONE_FILES
                assert pool.stats().discarded == i + 1

        anyio.run(main)


# -- shutdown while a thread is still being started ---------------------------------------


def test_shutdown_joins_a_thread_still_being_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """shutdown(wait=True) while a new worker thread is being started (as
    the rootless spawner or a replacement can be): it waits for the start
    and joins the thread, so no worker outlives the shutdown."""
    w = Workers(max_workers=1)
    real = w._home.start
    gate = threading.Event()
    entered = threading.Event()

    def slow_start(thread: threading.Thread) -> None:
        entered.set()
        gate.wait(10)
        real(thread)

    monkeypatch.setattr(w._home, "start", slow_start)
    submitted: list[object] = []
    submitter = threading.Thread(target=lambda: submitted.append(w.submit(lambda: 5)))
    submitter.start()
    assert entered.wait(10)
    (worker,) = list(w._core._threads)
    assert worker.thread.ident is None, "not started yet"
    timer = threading.Timer(0.2, gate.set)
    timer.start()
    w.shutdown(wait=True)
    timer.join(10)
    assert worker.thread.ident is not None
    assert not worker.thread.is_alive()
    submitter.join(10)
    assert submitted[0].result(timeout=10) == 5  # type: ignore[attr-defined]
