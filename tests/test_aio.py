"""The async front end on asyncio and Trio (anyio's pytest plugin runs each
test on both): results, exceptions, the loop kept free, cancellation, and
the pool's ``async with`` forms."""

from __future__ import annotations

import contextvars
import fcntl
import functools
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import anyio
import anyio.abc
import anyio.to_thread
import pytest

from nspool import (
    Kind,
    NamespaceSet,
    Pool,
    Workers,
    _sys,
    _thread_ns,
    _wait,
    default_workers,
    workers,
)
from nspool.net import loopback_up

from .conftest import Witness, thread_ns, wait_until
from .test_pool import netns_cookie

WitnessFactory = Callable[[NamespaceSet], Witness]

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pool_workers() -> Iterator[Workers]:
    """A Workers for the test, shut down (threads joined) after it."""
    w = Workers()
    yield w
    w.shutdown(wait=True)


async def test_run_returns_inside_the_set(fresh_default: None) -> None:
    """await s.run(fn) runs fn in the set and returns its result; exceptions
    and the caller's contextvars come through."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")
    var.set("task's")
    with NamespaceSet.unshare(Kind.NET) as s:
        assert await s.run(thread_ns, "net") == f"net:[{s.id(Kind.NET)}]"
        assert await s.run(var.get) == "task's"
        with pytest.raises(ZeroDivisionError):
            await s.run(lambda: 1 / 0)


async def test_many_awaits_at_once(pool_workers: Workers) -> None:
    """Hundreds of awaits gathered over several sets each get their own
    set's answer."""
    sets = [NamespaceSet.unshare(Kind.NET) for _ in range(4)]
    results: dict[int, tuple[int, str]] = {}
    try:

        async def one(i: int) -> None:
            s = sets[i % len(sets)]
            results[i] = (i, await _wait.run_in(pool_workers, s, thread_ns, "net"))

        async with anyio.create_task_group() as tg:
            for i in range(400):
                tg.start_soon(one, i)
        for i, (_, net) in results.items():
            assert net == f"net:[{sets[i % len(sets)].id(Kind.NET)}]"
        assert len(results) == 400
    finally:
        for s in sets:
            s.close()


async def test_the_loop_is_not_blocked(pool_workers: Workers) -> None:
    """While a call runs on its thread the loop keeps serving other tasks."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0.01)

    with NamespaceSet.unshare(Kind.UTS) as s:
        async with anyio.create_task_group() as tg:
            tg.start_soon(ticker)
            await _wait.run_in(pool_workers, s, time.sleep, 0.3)
            tg.cancel_scope.cancel()
    assert ticks >= 10


async def test_cancellation_is_immediate_and_the_call_finishes(pool_workers: Workers) -> None:
    """A cancelled await returns at once; the running callable finishes in
    the background; nothing is left behind."""
    finished = threading.Event()

    def slow() -> str:
        time.sleep(0.3)
        finished.set()
        return "done"

    with NamespaceSet.unshare(Kind.NET) as s:
        started = time.monotonic()
        with anyio.move_on_after(0.05):
            await _wait.run_in(pool_workers, s, slow)
        assert time.monotonic() - started < 0.25
        assert not finished.is_set()
        assert await anyio.to_thread.run_sync(finished.wait, 5)
    assert wait_until(lambda: pool_workers.stats().idle == pool_workers.stats().threads)


async def test_cancellation_storm(pool_workers: Workers) -> None:
    """Thousands of awaits cancelled together: queued calls are withdrawn,
    running ones finish, no thread or fd leaks (checked by no_leaks)."""
    with NamespaceSet.unshare(Kind.NET) as s:
        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as tg:
                for _ in range(2000):
                    tg.start_soon(_wait.run_in, pool_workers, s, time.sleep, 0.001)
                await anyio.sleep(0.01)
                scope.cancel()
        assert wait_until(lambda: pool_workers.stats().queued == 0, timeout=20)
        assert wait_until(
            lambda: pool_workers.stats().idle == pool_workers.stats().threads, timeout=20
        )
        assert pool_workers.stats().calls < 2000 or pool_workers.stats().queued == 0
        assert await _wait.run_in(pool_workers, s, lambda: "still fine") == "still fine"


def test_a_job_claim_goes_to_exactly_one_taker() -> None:
    """Job.take: the worker about to run a job and a waiter withdrawing it
    race for one claim; however many threads try at once, one gets it."""
    for _ in range(200):
        job = _wait.make_job(int)
        barrier = threading.Barrier(4)
        won: list[bool] = []

        def race(
            job: workers.Job = job, barrier: threading.Barrier = barrier, won: list[bool] = won
        ) -> None:
            barrier.wait()
            won.append(job.seize())

        threads = [threading.Thread(target=race) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sorted(won) == [False, False, False, True]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "own-call"])
async def test_wait_job_withdrawn_or_abandoned(stream: bool) -> None:
    """The one cancellation story of wait_job, for either hand-off: a job
    still queued is withdrawn (job.cancelled; it never runs, on_abandon
    never runs); a job already running finishes, then on_abandon runs
    exactly once."""
    w = Workers(max_workers=1)
    gate = threading.Event()
    abandoned: list[str] = []
    ran: list[str] = []
    try:
        with NamespaceSet.unshare(Kind.NET) as s:
            running = _wait.make_job(lambda: (ran.append("running"), gate.wait(5)))
            queued = _wait.make_job(ran.append, "queued")
            async with anyio.create_task_group() as tg:
                wait = functools.partial(_wait.wait_job, stream=stream)
                tg.start_soon(wait, w, s, running, lambda: abandoned.append("running"))
                started = lambda: ran == ["running"]  # noqa: E731
                assert await anyio.to_thread.run_sync(wait_until, started)
                tg.start_soon(wait, w, s, queued, lambda: abandoned.append("queued"))
                await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
            assert queued.cancelled
            assert not running.cancelled
            assert abandoned == []
            gate.set()
            assert wait_until(lambda: abandoned == ["running"])
            assert await _wait.run_in(w, s, lambda: "next") == "next"
            assert ran == ["running"]
            assert abandoned == ["running"]
    finally:
        gate.set()
        w.shutdown(wait=True)


async def test_pool_run_and_lease(pool_workers: Workers) -> None:
    """async with pool; await pool.run(fn) runs each call in a fresh set;
    async with pool.lease() holds one set for several calls. Fresh sets are
    told apart by netns cookie: a freed netns's inode is reused at once."""
    async with Pool(Kind.NET, warm=4, workers=pool_workers) as pool:
        a = await pool.run(netns_cookie)
        b = await pool.run(netns_cookie)
        assert a != b
        async with pool.lease() as s:
            first = await _wait.run_in(pool_workers, s, thread_ns, "net")
            assert await _wait.run_in(pool_workers, s, thread_ns, "net") == first
            assert pool.stats().leased == 1
        assert pool.stats().leased == 0
        assert pool.stats().discarded >= 3
    assert pool.stats().ready == 0


async def test_cancelled_pool_run_throws_its_set_away(pool_workers: Workers) -> None:
    """A pool call abandoned while running: its set is thrown away when the
    call finishes, never handed out again. Compared by netns cookie: the
    inode of the thrown-away netns is reused as soon as it is freed."""
    seen: list[int] = []
    gate = threading.Event()

    def hold() -> None:
        seen.append(netns_cookie())
        gate.wait(5)

    async with Pool(Kind.NET, warm=2, workers=pool_workers) as pool:
        with anyio.move_on_after(0.05):
            await pool.run(hold)
        assert pool.stats().leased == 1
        gate.set()
        assert wait_until(lambda: pool.stats().leased == 0)
        for _ in range(5):
            assert await pool.run(netns_cookie) != seen[0]


async def test_pool_cancellation_storm_leaks_no_set(
    pool_workers: Workers, witness: WitnessFactory
) -> None:
    """A thousand pool calls cancelled at every stage (taking a set,
    queued, running): afterwards no set is leased, every set handed out was
    thrown away, and when the pool closes each namespace it made is gone
    (a witness planted in every set by the hook vanishes)."""
    planted: list[Witness] = []

    def plant(s: NamespaceSet) -> None:
        loopback_up()
        planted.append(witness(s))

    async with Pool(Kind.NET, warm=8, workers=pool_workers, after_create=plant) as pool:

        async def one(delay: float) -> None:
            with anyio.move_on_after(delay):
                await pool.run(time.sleep, 0.002)

        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(one, (i % 10) * 0.001)
        assert wait_until(lambda: pool.stats().leased == 0, timeout=20)
        st = pool.stats()
        assert st.hits + st.misses <= 1000
        assert st.discarded == st.hits + st.misses  # never recycled, never lost
    assert planted
    assert all(w.wait_gone(timeout=30) for w in planted)


async def test_run_from_a_closed_pool(pool_workers: Workers) -> None:
    """A closed pool refuses."""
    pool = Pool(Kind.NET, warm=1, workers=pool_workers)
    async with pool:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(os.getpid)


SIOCGIFINDEX = 0x8933


def if_index(sock: socket.socket, name: str) -> int | None:
    """The index of interface ``name`` in the socket's netns, or None."""
    try:
        raw = fcntl.ioctl(sock, SIOCGIFINDEX, struct.pack("16si20x", name.encode(), 0))
    except OSError:
        return None
    return int(struct.unpack("16si20x", raw)[1])


async def test_socket_lives_in_the_netns(fresh_default: None, witness: WitnessFactory) -> None:
    """A socket from s.socket() sees the netns's interfaces (the veth end
    planted there), not the host's; the loop thread does not move."""
    home = thread_ns("net")
    try:
        with NamespaceSet.unshare(Kind.NET) as s:
            w = witness(s)
            with await s.socket() as inside, socket.socket() as outside:
                assert not inside.getblocking()
                assert if_index(inside, w.inside) is not None
                assert if_index(outside, w.inside) is None
                assert if_index(inside, w.outside) is None
                assert if_index(outside, w.outside) is not None
            assert thread_ns("net") == home
    finally:
        # The loop thread keeps an fd of its own netns for the way back
        # (opened on first use, kept for the thread's life): let it go.
        _thread_ns.forget_thread_home()


async def test_two_listeners_on_one_address_and_a_connection(
    pool_workers: Workers, fresh_default: None
) -> None:
    """Listeners on 127.0.0.1:PORT in two sets coexist (isolation); a
    connection made inside one set reaches that set's listener."""
    pool = Pool(Kind.NET, warm=2, workers=pool_workers)
    async with pool, pool.lease() as a, pool.lease() as b:
        first = await a.create_tcp_listener("127.0.0.1", 0)
        port = first.extra(anyio.abc.SocketAttribute.local_port)
        second = await b.create_tcp_listener("127.0.0.1", port)
        async with first, second:

            async def serve(listener: anyio.abc.SocketListener, tag: bytes) -> None:
                async def reply(stream: anyio.abc.SocketStream) -> None:
                    async with stream:
                        await stream.send(tag + await stream.receive())

                await listener.serve(reply)

            async with anyio.create_task_group() as tg:
                tg.start_soon(serve, first, b"a:")
                tg.start_soon(serve, second, b"b:")
                for s, tag in ((a, b"a:"), (b, b"b:")):
                    async with await s.connect_tcp("127.0.0.1", port) as stream:
                        await stream.send(b"hi")
                        assert await stream.receive() == tag + b"hi"
                tg.cancel_scope.cancel()


async def test_connect_fails_cleanly_in_a_bare_netns(fresh_default: None) -> None:
    """In a fresh netns with lo down nothing is reachable: a clear OSError,
    no socket left open (checked by no_leaks)."""
    with NamespaceSet.unshare(Kind.NET) as s, pytest.raises(OSError, match=r"unreachable|refused"):
        await s.connect_tcp("127.0.0.1", 9)


async def test_run_process_inside_the_set(fresh_default: None) -> None:
    """A process started by s.run_process is in every namespace of the set:
    its netns (only lo), its uts, and its pid namespace (PID 2 or later
    there, the set's init being PID 1)."""
    with NamespaceSet.unshare(Kind.NET | Kind.UTS | Kind.PID) as s:
        links = await s.run_process(["ip", "-br", "link"])
        assert [line.split()[0] for line in links.stdout.decode().splitlines()] == ["lo"]
        status = (await s.run_process(["cat", "/proc/self/status"])).stdout.decode()
        nspid = next(line for line in status.splitlines() if line.startswith("NSpid:")).split()
        assert len(nspid) == 3
        assert int(nspid[-1]) >= 2
        uts = (await s.run_process(["readlink", "/proc/self/ns/uts"])).stdout.decode().strip()
        assert uts == f"uts:[{s.id(Kind.UTS)}]"
        echoed = await s.run_process(["cat"], input=b"through stdin")
        assert echoed.stdout == b"through stdin"
        with pytest.raises(subprocess.CalledProcessError):
            await s.run_process(["false"])
        assert (await s.run_process(["false"], check=False)).returncode == 1


async def test_cancelled_run_process_kills_the_process(fresh_default: None) -> None:
    """Cancelling the await kills and reaps the process."""
    with NamespaceSet.unshare(Kind.NET) as s:
        started = time.monotonic()
        with anyio.move_on_after(0.3):
            await s.run_process(["sleep", "30"])
        assert time.monotonic() - started < 5
        out = subprocess.run(["pgrep", "-f", "^sleep 30$"], capture_output=True, text=True)
        assert out.stdout.strip() == ""


async def test_open_process_talks_through_pipes_inside_the_set(fresh_default: None) -> None:
    """s.open_process starts the process inside the set; its stdin and
    stdout are streams read and written on the loop; wait() gives its exit
    code and reaps it."""
    with NamespaceSet.unshare(Kind.NET) as s:
        script = "readlink /proc/self/ns/net; exec cat"
        async with await s.open_process(["sh", "-c", script]) as process:
            assert process.stdin is not None
            assert process.stdout is not None
            first = await process.stdout.receive()
            assert first.decode().strip() == f"net:[{s.id(Kind.NET)}]"
            await process.stdin.send(b"ping")
            assert await process.stdout.receive() == b"ping"
            await process.stdin.aclose()
            with pytest.raises(anyio.EndOfStream):
                await process.stdout.receive()
            assert await process.wait() == 0
        assert process.returncode == 0


async def test_open_process_shell_string_and_stderr(fresh_default: None) -> None:
    """A string command runs through the shell, as with anyio; stderr is
    its own stream; a signal's exit code is negative."""
    with NamespaceSet.unshare(Kind.UTS) as s:
        await s.run(socket.sethostname, "inside-the-set")
        async with await s.open_process("hostname; echo oops >&2; kill -TERM $$") as process:
            assert process.stdout is not None
            assert process.stderr is not None
            out = b"".join([chunk async for chunk in process.stdout])
            err = b"".join([chunk async for chunk in process.stderr])
            assert await process.wait() == -15
        assert out == b"inside-the-set\n"
        assert err == b"oops\n"
        assert socket.gethostname() != "inside-the-set"


async def test_cancelled_wait_in_open_process_kills_and_reaps(fresh_default: None) -> None:
    """Leaving ``async with`` by cancellation kills the process and reaps
    it: its pid no longer exists as a zombie or otherwise."""
    with NamespaceSet.unshare(Kind.NET) as s:
        with anyio.move_on_after(0.2):
            async with await s.open_process(["sleep", "30"], stdin=subprocess.DEVNULL) as process:
                await process.wait()
        assert process.returncode == -9
        assert not os.path.exists(f"/proc/{process.pid}") or _not_our_child(process.pid)


def _not_our_child(pid: int) -> bool:
    """Whether ``pid`` (recycled since) is no longer a child of ours."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1]) != os.getpid()
    except FileNotFoundError:
        return True


async def test_process_in_pid_and_mount_namespaces(fresh_default: None, tmp_path: str) -> None:
    """In a new pid namespace the process is PID 2 or later (the set's init
    is PID 1); in a mount namespace it sees the set's mounts, and cwd is
    looked up there."""
    with NamespaceSet.unshare(Kind.PID | Kind.MNT) as s:
        target = os.fspath(tmp_path)
        await s.run(_sys.mount, "tmpfs", target, "tmpfs", 0, None)
        done = await s.run_process(
            ["sh", "-c", "echo $$; touch made-inside; ls; grep -c ' tmpfs ' /proc/self/mounts"],
            cwd=target,
        )
        pid_inside, listing, mounts = done.stdout.decode().split("\n", 2)
        assert int(pid_inside) >= 2
        assert listing == "made-inside"
        assert int(mounts) >= 1
        assert os.listdir(target) == []  # the host sees the bare directory


async def test_process_cancellation_storm_leaves_nothing(fresh_default: None) -> None:
    """Hundreds of process starts cancelled at every stage (queued, starting,
    running) leave no process and no fd behind (fds: no_leaks)."""
    marker = f"{time.monotonic_ns() % 10**6}.5"
    with NamespaceSet.unshare(Kind.NET) as s:

        async def one(delay: float) -> None:
            with anyio.move_on_after(delay):
                async with await s.open_process(["sleep", marker]) as process:
                    await process.wait()

        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(one, (i % 20) * 0.002)
    # A start abandoned mid-way is killed on its worker thread: wait for it.
    await anyio.to_thread.run_sync(default_workers_idle)
    out = subprocess.run(["pgrep", "-f", f"^sleep {marker}$"], capture_output=True, text=True)
    assert out.stdout.strip() == ""


def default_workers_idle() -> None:
    assert wait_until(lambda: (st := default_workers().stats()).threads == st.idle)


async def test_run_process_input_check_and_output_options(fresh_default: None) -> None:
    """run_process mirrors anyio's: input goes to stdin, stdout=DEVNULL
    gives no output, check raises CalledProcessError with the output, and
    stdin with input together is refused."""
    with NamespaceSet.unshare(Kind.NET) as s:
        done = await s.run_process(["wc", "-c"], input=b"12345")
        assert done.stdout.strip() == b"5"
        quiet = await s.run_process(["echo", "hi"], stdout=subprocess.DEVNULL)
        assert quiet.stdout is None
        with pytest.raises(subprocess.CalledProcessError) as failed:
            await s.run_process(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (failed.value.returncode, failed.value.stdout, failed.value.stderr) == (
            3,
            b"out\n",
            b"err\n",
        )
        with pytest.raises(ValueError, match="only one of stdin and input"):
            await s.run_process(["true"], input=b"x", stdin=subprocess.DEVNULL)
