"""The async front end on asyncio and Trio (anyio's pytest plugin runs each
test on both): results, exceptions, the loop kept free, cancellation, and
the pool's ``async with`` forms."""

from __future__ import annotations

import contextvars
import fcntl
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

from nspool import Kind, NamespaceSet, Pool, Workers, aio, nsset

from .conftest import Witness, thread_ns, wait_until

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
            results[i] = (i, await aio.run_in(pool_workers, s, thread_ns, "net"))

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
            await aio.run_in(pool_workers, s, time.sleep, 0.3)
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
            await aio.run_in(pool_workers, s, slow)
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
                    tg.start_soon(aio.run_in, pool_workers, s, time.sleep, 0.001)
                await anyio.sleep(0.01)
                scope.cancel()
        assert wait_until(lambda: pool_workers.stats().queued == 0, timeout=20)
        assert wait_until(
            lambda: pool_workers.stats().idle == pool_workers.stats().threads, timeout=20
        )
        assert pool_workers.stats().calls < 2000 or pool_workers.stats().queued == 0
        assert await aio.run_in(pool_workers, s, lambda: "still fine") == "still fine"


async def test_pool_run_and_lease(pool_workers: Workers) -> None:
    """async with pool; await pool.run(fn) runs each call in a fresh set;
    async with pool.lease() holds one set for several calls."""
    async with Pool(Kind.NET, warm=4, workers=pool_workers) as pool:
        a = await pool.run(thread_ns, "net")
        b = await pool.run(thread_ns, "net")
        assert a != b
        async with pool.lease() as s:
            first = await aio.run_in(pool_workers, s, thread_ns, "net")
            assert await aio.run_in(pool_workers, s, thread_ns, "net") == first
            assert pool.stats().leased == 1
        assert pool.stats().leased == 0
        assert pool.stats().discarded >= 3
    assert pool.stats().ready == 0


async def test_cancelled_pool_run_throws_its_set_away(pool_workers: Workers) -> None:
    """A pool call abandoned while running: its set is thrown away when the
    call finishes, never handed out again."""
    seen: list[str] = []
    gate = threading.Event()

    def hold() -> None:
        seen.append(thread_ns("net"))
        gate.wait(5)

    async with Pool(Kind.NET, warm=2, workers=pool_workers) as pool:
        with anyio.move_on_after(0.05):
            await pool.run(hold)
        assert pool.stats().leased == 1
        gate.set()
        assert wait_until(lambda: pool.stats().leased == 0)
        for _ in range(5):
            assert await pool.run(thread_ns, "net") != seen[0]


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
        nsset._forget_thread_home()


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
