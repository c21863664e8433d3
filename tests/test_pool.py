"""``Pool``: prewarmed sets, hooks, failures and back-off, recycling, bounds and
close, against the real kernel.

Namespaces are proved gone with veth witnesses. Sets made by the pool are
planted from inside, by the after-create hook: the pair is made in the new
netns and its outside end moved to this process's, so the hook needs no
access to the pool's internals.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import nspool
from nspool import Kind, NamespaceSet, Pool, Workers, _sys
from nspool import pool as pool_module

from .conftest import ip, link_exists, thread_ns, unique_name, wait_until

#: ``SO_NETNS_COOKIE`` (<asm-generic/socket.h>): a netns id the kernel never reuses.
SO_NETNS_COOKIE = 71


class HookError(Exception):
    """Raised by a test's after-create hook."""


@pytest.fixture
def executor() -> Iterator[Workers]:
    """A ``Workers`` for the pool under test, shut down (its threads joined) after."""
    w = Workers(max_workers=8)
    try:
        yield w
    finally:
        w.shutdown(wait=True)


class InsideWitnesses:
    """Veth witnesses planted from a thread inside a netns (an after-create
    hook's): the pair is made there and its outside end is moved to this
    process's netns, where it vanishes when the inside netns is destroyed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.of: dict[NamespaceSet, str] = {}

    def plant(self, s: NamespaceSet) -> str:
        """Plant a witness in the calling thread's netns, which is ``s``'s."""
        outside, inside = unique_name("nspw"), unique_name("nspv")
        ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        ip("link", "set", "dev", outside, "netns", f"/proc/{os.getpid()}/ns/net")
        with self._lock:
            self.of[s] = outside
        return outside

    def names(self) -> list[str]:
        with self._lock:
            return list(self.of.values())


@pytest.fixture
def inside_witness() -> Iterator[InsideWitnesses]:
    """Plants witnesses from inside sets; removes any still alive at the end."""
    witnesses = InsideWitnesses()
    yield witnesses
    for name in witnesses.names():
        ip("link", "del", name, check=False)


def gone(link: str, timeout: float = 10.0) -> bool:
    """Whether the host-side link ``link`` vanished (its netns was destroyed)."""
    return wait_until(lambda: not link_exists(link), timeout)


def loopback_connects() -> bool:
    """Whether a TCP connection to 127.0.0.1 works in the calling thread's netns."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        try:
            server.bind(("127.0.0.1", 0))
            server.listen()
            with socket.create_connection(server.getsockname(), timeout=2):
                return True
        except OSError:
            return False


def netns_cookie() -> int:
    """The calling thread's netns cookie (unlike the inode, never reused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int.from_bytes(raw, sys.byteorder)


def sh(argv: list[str], check: bool = True) -> None:
    """Run a command (from a worker: inside the worker's netns)."""
    subprocess.run(argv, check=check, capture_output=True)


def net_link(s: NamespaceSet) -> str:
    return f"net:[{s.id(Kind.NET)}]"


# -- filling, taking, counting ------------------------------------------------------


def test_fills_to_warm_and_refills_after_a_take(executor: Workers) -> None:
    """The pool fills to warm; a take is a hit and is refilled; a put discards the set."""
    with Pool(Kind.NET, warm=3, workers=executor) as p:
        assert wait_until(lambda: p.stats().ready == 3)
        st = p.stats()
        assert (st.created, st.hits, st.misses, st.failures, st.leased) == (3, 0, 0, 0, 0)
        assert st.create_p50 is not None
        assert st.create_p99 is not None
        assert 0 < st.create_p50 <= st.create_p99
        s = p.get()
        st = p.stats()
        assert (st.hits, st.misses, st.leased) == (1, 0, 1)
        assert wait_until(lambda: p.stats().ready == 3 and p.stats().created == 4)
        time.sleep(0.05)
        assert (p.stats().ready, p.stats().created) == (3, 4), "made more than warm"
        assert executor.run_sync(s, thread_ns, "net") == net_link(s)
        assert executor.run_sync(s, loopback_connects)
        p.put(s)
        st = p.stats()
        assert (st.discarded, st.leased, st.ready, st.recycled) == (1, 0, 3, 0)
        assert wait_until(lambda: s.closed), "the closer did not close the discarded set"
        assert "warm=3" in repr(p)


def test_get_without_a_ready_set_is_a_miss(executor: Workers) -> None:
    """With warm=0 nothing is made ahead; get creates a working set on the spot."""
    with Pool(Kind.NET, warm=0, workers=executor) as p:
        time.sleep(0.05)
        assert p.stats().created == 0
        s = p.get()
        st = p.stats()
        assert (st.misses, st.hits, st.created, st.leased, st.ready) == (1, 0, 1, 1, 0)
        assert executor.run_sync(s, thread_ns, "net") == net_link(s)
        assert executor.run_sync(s, loopback_connects)
        p.put(s)
        assert p.stats().discarded == 1


def test_constructor_checks_its_arguments() -> None:
    """Negative warm, no creators, or max_sets below warm (or 0) are refused."""
    with pytest.raises(ValueError, match="warm must be"):
        Pool(Kind.NET, warm=-1)
    with pytest.raises(ValueError, match="creators"):
        Pool(Kind.NET, creators=0)
    with pytest.raises(ValueError, match="max_sets"):
        Pool(Kind.NET, warm=4, max_sets=3)
    with pytest.raises(ValueError, match="max_sets"):
        Pool(Kind.NET, warm=0, max_sets=0)


# -- after-create hooks -------------------------------------------------------------


@pytest.mark.parametrize("processes", [True, False], ids=["creator-process", "creator-thread"])
def test_lo_comes_up_before_the_users_hook_unless_loopback_is_false(
    executor: Workers, processes: bool
) -> None:
    """lo is up in a net pool's sets, also with a hook of the user's (which
    runs after it, inside the set); loopback=False leaves it down."""
    seen: list[bool] = []
    with (
        Pool(Kind.NET, warm=1, workers=executor, creator_processes=processes) as p,
        p.lease() as s,
    ):
        assert executor.run_sync(s, loopback_connects)
    with (
        Pool(
            Kind.NET,
            warm=1,
            after_create=lambda _s: seen.append(loopback_connects()),
            workers=executor,
            creator_processes=processes,
        ) as p,
        p.lease() as s,
    ):
        assert executor.run_sync(s, loopback_connects)
    assert seen
    assert all(seen), "the user's hook ran before lo was up"
    with (
        Pool(Kind.NET, warm=1, loopback=False, workers=executor, creator_processes=processes) as p,
        p.lease() as s,
    ):
        assert not executor.run_sync(s, loopback_connects)


def test_custom_after_create_runs_inside_the_new_set(executor: Workers) -> None:
    """A custom hook runs on a thread inside the new set, before the set is offered."""
    seen: list[tuple[NamespaceSet, NamespaceSet | None, str]] = []
    lock = threading.Lock()

    def hook(s: NamespaceSet) -> None:
        with lock:
            seen.append((s, nspool.current(), thread_ns("net")))
        socket.sethostname("made-by-hook")

    host_name = socket.gethostname()
    with Pool(Kind.NET | Kind.UTS, warm=2, after_create=hook, workers=executor) as p:
        assert wait_until(lambda: p.stats().ready == 2)
        with p.lease() as s:
            with lock:
                mine = [(cur, link) for made, cur, link in seen if made is s]
            assert mine == [(s, net_link(s))]
            assert executor.run_sync(s, socket.gethostname) == "made-by-hook"
            assert thread_ns("net") != net_link(s)
        with lock:
            assert len(seen) >= 2
            assert all(cur is made for made, cur, _ in seen)
    assert socket.gethostname() == host_name
    assert nspool.current() is None


def test_failing_hook_closes_the_set_and_raises_on_a_miss(
    executor: Workers, inside_witness: InsideWitnesses
) -> None:
    """A hook that raises: its set's netns is destroyed, the failure counted, the taker gets it."""
    made: list[NamespaceSet] = []

    def hook(s: NamespaceSet) -> None:
        made.append(s)
        inside_witness.plant(s)
        raise HookError("hook failed on purpose")

    with Pool(Kind.NET, warm=0, after_create=hook, workers=executor) as p:
        with pytest.raises(HookError, match="on purpose"):
            p.get()
        st = p.stats()
        assert (st.failures, st.misses, st.created, st.leased, st.creating) == (1, 1, 0, 0, 0)
        assert st.last_failure is not None
        assert "HookError" in st.last_failure
        assert "on purpose" in st.last_failure
    assert len(made) == 1
    assert made[0].closed
    [witness] = inside_witness.names()
    assert gone(witness), "the netns of a set whose hook failed outlived it"


def test_creators_back_off_after_failures(
    monkeypatch: pytest.MonkeyPatch, executor: Workers
) -> None:
    """Failing creators back off instead of spinning, and fill the pool once creation works."""
    monkeypatch.setattr(pool_module, "BACKOFF_MIN", 0.01)
    monkeypatch.setattr(pool_module, "BACKOFF_MAX", 0.05)
    failing = threading.Event()
    failing.set()

    def hook(_s: NamespaceSet) -> None:
        if failing.is_set():
            raise HookError("not yet")

    with Pool(Kind.NET, warm=4, creators=2, after_create=hook, workers=executor) as p:
        time.sleep(0.25)
        early = p.stats().failures
        time.sleep(0.25)
        st = p.stats()
        # Unchecked, two creators fail every ~1.5 ms: hundreds in 0.5 s.
        assert 2 <= early < st.failures < 50, (early, st.failures)
        assert st.last_failure == "HookError: not yet"
        assert (st.ready, st.created) == (0, 0)
        failing.clear()
        assert wait_until(lambda: p.stats().ready == 4, timeout=2)
        assert p.stats().failures < 50


def test_hook_that_moves_its_thread_for_good(
    executor: Workers, inside_witness: InsideWitnesses
) -> None:
    """A hook that leaves its thread in a new mount ns: the pool still fills, no set leaks."""
    moved = threading.Event()

    def hook(s: NamespaceSet) -> None:
        inside_witness.plant(s)
        if not moved.is_set():
            moved.set()
            _sys.unshare(Kind.MNT)

    with Pool(Kind.NET, warm=2, after_create=hook, workers=executor) as p:
        assert wait_until(lambda: p.stats().ready == 2)
        with p.lease() as s:
            assert executor.run_sync(s, thread_ns, "net") == net_link(s)
        assert moved.is_set()
        assert p.stats().failures == 0
    assert all(gone(name) for name in inside_witness.names())


def test_creation_error_reaches_a_taker_at_max_sets(
    monkeypatch: pytest.MonkeyPatch, executor: Workers
) -> None:
    """A taker at max_sets while every creation fails gets the creation's error, not a timeout."""
    monkeypatch.setattr(pool_module, "BACKOFF_MIN", 0.05)
    monkeypatch.setattr(pool_module, "BACKOFF_MAX", 0.05)

    def hook(_s: NamespaceSet) -> None:
        raise HookError("creation keeps failing")

    with Pool(Kind.NET, warm=2, max_sets=2, after_create=hook, workers=executor) as p:
        assert wait_until(lambda: p.stats().failures >= 2)
        with pytest.raises(HookError):
            p.get(timeout=1.0)


def test_close_does_not_wait_out_a_backoff(
    monkeypatch: pytest.MonkeyPatch, executor: Workers
) -> None:
    """close() returns promptly while creators back off, and no creation starts after it."""
    monkeypatch.setattr(pool_module, "BACKOFF_MIN", 0.5)
    monkeypatch.setattr(pool_module, "BACKOFF_MAX", 0.5)
    closing = threading.Event()
    ran_after_close: list[bool] = []

    def hook(_s: NamespaceSet) -> None:
        ran_after_close.append(closing.is_set())
        raise HookError("creation keeps failing")

    p = Pool(Kind.NET, warm=2, after_create=hook, workers=executor).start()
    try:
        assert wait_until(lambda: p.stats().failures >= 1)
        time.sleep(0.05)  # the creators are now in a 0.5 s back-off
    finally:
        closing.set()
        started = time.monotonic()
        p.close()
        took = time.monotonic() - started
    assert not any(ran_after_close), "a set was created after close()"
    assert took < 0.25, f"close() took {took:.2f} s"


# -- close ----------------------------------------------------------------------------


def test_close_destroys_every_set_it_holds_and_leased_ones_on_return(
    monkeypatch: pytest.MonkeyPatch, executor: Workers, inside_witness: InsideWitnesses
) -> None:
    """After close no set of the pool outlives it; a set leased at close dies when put back."""
    # Slow the closer so that discarded sets are still waiting when the pool closes.
    monkeypatch.setattr(pool_module, "CLOSE_TICK", 0.1)
    monkeypatch.setattr(pool_module, "CLOSE_RATE", 1)
    with Pool(Kind.NET, warm=3, after_create=inside_witness.plant, workers=executor) as p:
        assert wait_until(lambda: p.stats().ready == 3)
        leased = p.get()
        for _ in range(3):
            p.put(p.get())
        assert wait_until(lambda: p.stats().ready == 3)
    st = p.stats()
    assert (st.ready, st.creating, st.leased, st.discarded) == (0, 0, 1, 3)
    mine = inside_witness.of[leased]
    others = [name for name in inside_witness.names() if name != mine]
    assert len(others) >= 6
    assert all(gone(name) for name in others), "a ready or discarded set outlived its pool"
    assert link_exists(mine)
    assert executor.run_sync(leased, thread_ns, "net") == net_link(leased)
    with pytest.raises(RuntimeError, match="closed"):
        p.get()
    with pytest.raises(RuntimeError, match="closed"):
        p.start()
    p.put(leased)
    assert leased.closed
    assert gone(mine), "a set leased at close outlived its return"
    st = p.stats()
    assert (st.leased, st.discarded) == (0, 4)
    p.close()  # idempotent


# -- the namespace limit ------------------------------------------------------------

LIMIT = 3

# Runs in a child process. While still single-threaded it makes a user
# namespace (root mapped to root) and lowers the netns limit there: the limit
# is per user namespace and is checked at every level, so the host's own
# limit is untouched.
LIMIT_SCRIPT = textwrap.dedent(
    f"""
    import ctypes, json, os, sys, time
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        print(json.dumps({{"skip": "unshare(CLONE_NEWUSER): " + os.strerror(ctypes.get_errno())}}))
        sys.exit(0)
    for name, text in (("setgroups", "deny"), ("uid_map", "0 0 1"), ("gid_map", "0 0 1")):
        with open("/proc/self/" + name, "w") as f:
            f.write(text)
    # One more for nspool's limbo: a process in its own user namespace is in
    # rootless mode, where idle threads wait in a netns of nspool's own.
    with open("/proc/sys/user/max_net_namespaces", "w") as f:
        f.write("{LIMIT + 1}")

    import nspool
    from nspool import pool as pool_module

    pool_module.BACKOFF_MIN = 0.005
    pool_module.BACKOFF_MAX = 0.02
    out = {{}}
    with nspool.Pool(nspool.Kind.NET, warm=8) as p:
        deadline = time.monotonic() + 5
        while p.stats().ready < {LIMIT} and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        out["filled"] = p.stats().__dict__.copy()
        taken = []
        try:
            for _ in range({LIMIT} + 1):
                taken.append(p.get(timeout=5))
        except Exception as exc:
            out["error"] = [
                type(exc).__name__,
                isinstance(exc, nspool.NamespaceError),
                getattr(exc, "errno", None),
            ]
        out["taken"] = len(taken)
        out["after"] = p.stats().__dict__.copy()
        for s in taken:
            p.put(s)
    print(json.dumps(out))
    """
)


def test_namespace_limit_is_counted_and_raised() -> None:
    """At the kernel's netns limit (ENOSPC) creators count failures and a miss raises it."""
    with open("/proc/sys/user/max_net_namespaces") as f:
        host_limit = f.read()
    proc = subprocess.run(
        [sys.executable, "-c", LIMIT_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    if "skip" in out:
        pytest.skip(out["skip"])
    filled, after = out["filled"], out["after"]
    assert filled["ready"] == LIMIT
    assert filled["created"] == LIMIT
    assert filled["failures"] > 0
    assert f"[Errno {errno.ENOSPC}]" in filled["last_failure"]
    assert out["taken"] == LIMIT
    assert out["error"] == ["NamespaceError", True, errno.ENOSPC]
    assert (after["hits"], after["misses"]) == (LIMIT, 1)
    assert after["failures"] > filled["failures"]
    with open("/proc/sys/user/max_net_namespaces") as f:
        assert f.read() == host_limit


# -- recycling -------------------------------------------------------------------------

# What a tenant may leave in its netns, and how to undo it. The tenant's
# link is a bridge: this kernel has no dummy driver.
TENANT_CHANGES = {
    "link": (["ip", "link", "add", "tenant0", "type", "bridge"], ["ip", "link", "del", "tenant0"]),
    "address": (
        ["ip", "addr", "add", "10.200.0.1/32", "dev", "lo"],
        ["ip", "addr", "del", "10.200.0.1/32", "dev", "lo"],
    ),
    "route": (
        ["ip", "route", "add", "10.9.0.0/16", "dev", "lo"],
        ["ip", "route", "del", "10.9.0.0/16", "dev", "lo"],
    ),
    "lo-down": (["ip", "link", "set", "lo", "down"], ["ip", "link", "set", "lo", "up"]),
    "nft": (
        ["nft", "add", "table", "inet", "tenant"],
        ["nft", "delete", "table", "inet", "tenant"],
    ),
}
CHANGES = [
    pytest.param(
        name,
        marks=pytest.mark.skipif(shutil.which("nft") is None, reason="no nft binary"),
    )
    if name == "nft"
    else name
    for name in TENANT_CHANGES
]


@pytest.mark.parametrize("change", CHANGES)
def test_recycle_that_resets_reuses_the_set(executor: Workers, change: str) -> None:
    """A recycle hook that undoes the tenant's change gets the same set handed out again."""
    do, undo = TENANT_CHANGES[change]
    inside: list[bool] = []

    def reset(s: NamespaceSet) -> None:
        inside.append(nspool.current() is s and thread_ns("net") == net_link(s))
        sh(undo, check=False)

    with Pool(Kind.NET, warm=0, recycle=reset, workers=executor) as p:
        s = p.get()
        executor.run_sync(s, sh, do)
        p.put(s)
        st = p.stats()
        assert (st.recycled, st.discarded, st.ready, st.leased) == (1, 0, 1, 0)
        assert inside == [True]
        with p.lease() as again:
            assert again is s
            assert executor.run_sync(again, loopback_connects)
        st = p.stats()
        assert (st.hits, st.misses, st.recycled, st.discarded) == (1, 1, 2, 0)
        assert not s.closed
    assert s.closed


@pytest.mark.parametrize("change", CHANGES)
def test_recycle_that_does_not_reset_discards_the_set(executor: Workers, change: str) -> None:
    """A reset that does not hold: the set is thrown away and never handed out again."""
    do, _ = TENANT_CHANGES[change]
    with Pool(Kind.NET, warm=0, recycle=lambda _s: None, workers=executor) as p:
        s = p.get()
        executor.run_sync(s, sh, do)
        p.put(s)
        st = p.stats()
        assert (st.recycled, st.discarded, st.ready, st.leased) == (0, 1, 0, 0)
        assert wait_until(lambda: s.closed)
        for _ in range(3):
            with p.lease() as other:
                assert other is not s
        # The next set is new and clean, so it is recycled each time.
        st = p.stats()
        assert (st.misses, st.hits, st.recycled, st.discarded) == (2, 2, 3, 1)


def test_recycle_hook_that_raises_discards_the_set(executor: Workers) -> None:
    """A recycle hook that raises: put() does not raise, and the set is thrown away."""

    def reset(_s: NamespaceSet) -> None:
        raise HookError("cannot reset")

    with Pool(Kind.NET, warm=0, recycle=reset, workers=executor) as p:
        s = p.get()
        p.put(s)
        st = p.stats()
        assert (st.recycled, st.discarded, st.ready) == (0, 1, 0)
        assert wait_until(lambda: s.closed)


def test_recycle_ignores_changes_to_the_hosts_links(executor: Workers) -> None:
    """The reuse check looks at the set's netns only: a link added on the host meanwhile is fine."""
    with Pool(Kind.NET, warm=0, recycle=lambda _s: None, workers=executor) as p:
        s = p.get()
        host_link = unique_name("nsph")
        ip("link", "add", host_link, "type", "veth", "peer", "name", host_link + "p")
        try:
            p.put(s)
        finally:
            ip("link", "del", host_link, check=False)
        assert p.stats().recycled == 1
        with p.lease() as again:
            assert again is s


def test_max_sets_counts_a_set_being_recycled(executor: Workers) -> None:
    """While a returned set is being reset it still counts against max_sets."""
    resetting, release = threading.Event(), threading.Event()

    def reset(_s: NamespaceSet) -> None:
        resetting.set()
        release.wait(5)

    with Pool(Kind.NET, warm=0, max_sets=1, recycle=reset, workers=executor) as p:
        s = p.get()
        putter = threading.Thread(target=p.put, args=(s,))
        putter.start()
        extra: NamespaceSet | None = None
        try:
            assert resetting.wait(5)
            with contextlib.suppress(TimeoutError):
                extra = p.get(timeout=0.1)
        finally:
            release.set()
            putter.join(5)
            if extra is not None:
                p.put(extra)
        st = p.stats()
        assert extra is None, f"a second set was made at max_sets=1: {st}"
        assert st.ready + st.leased + st.creating <= 1


# -- concurrency ----------------------------------------------------------------------


@pytest.mark.parametrize("recycle", [False, True], ids=["discard", "recycle"])
def test_no_set_is_handed_to_two_takers(executor: Workers, recycle: bool) -> None:
    """Threads taking and giving back sets at once (get/put and run_sync) never share one."""
    iterations = 100
    lock = threading.Lock()
    holders: dict[int, str] = {}
    problems: list[str] = []

    def hold(s: NamespaceSet, who: str) -> None:
        with lock:
            other = holders.get(id(s))
            if other is not None:
                problems.append(f"{who} was handed {s!r}, held by {other}")
            holders[id(s)] = who

    def release(s: NamespaceSet, who: str) -> None:
        with lock:
            if holders.pop(id(s), None) != who:
                problems.append(f"{who} gave back {s!r}, which it did not hold alone")

    def in_set(who: str) -> None:
        s = nspool.current()
        if s is None:
            problems.append(f"{who} ran outside any set")
            return
        hold(s, who)
        try:
            if thread_ns("net") != net_link(s):
                problems.append(f"{who} ran outside its set {s!r}")
        finally:
            release(s, who)

    def taker(who: str) -> None:
        for i in range(iterations):
            s = p.get(timeout=10)
            hold(s, who)
            try:
                if i % 5 == 0 and executor.run_sync(s, thread_ns, "net") != net_link(s):
                    problems.append(f"{who}: a call in {s!r} ran elsewhere")
            finally:
                release(s, who)
                p.put(s)

    def runner(who: str) -> None:
        for _ in range(iterations):
            p.run_sync(in_set, who)

    def guarded(target: Callable[[str], None], who: str) -> None:
        try:
            target(who)
        except BaseException as exc:
            with lock:
                problems.append(f"{who} raised {exc!r}")

    with Pool(
        Kind.NET,
        warm=4,
        max_sets=8,
        recycle=(lambda _s: None) if recycle else None,
        workers=executor,
    ) as p:
        threads = [
            threading.Thread(target=guarded, args=(fn, f"{fn.__name__}-{n}"))
            for n in range(3)
            for fn in (taker, runner)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert problems == []
        st = p.stats()
        takes = 6 * iterations
        assert st.hits + st.misses == takes
        assert st.leased == 0
        assert st.recycled + st.discarded == takes
        if recycle:
            assert st.recycled > 0
        else:
            assert st.discarded == takes
    assert p.stats().ready == 0
    assert executor.stats().discarded == 0


# -- bounds, put, lease, run_sync -------------------------------------------------------


def test_get_waits_at_max_sets(executor: Workers) -> None:
    """At max_sets get waits: it times out, or returns once another thread puts a set back."""
    with Pool(Kind.NET, warm=2, max_sets=2, workers=executor) as p:
        assert wait_until(lambda: p.stats().ready == 2)
        a, b = p.get(), p.get()
        time.sleep(0.05)
        assert (p.stats().created, p.stats().creating) == (2, 0), "creators passed max_sets"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            p.get(timeout=0.2)
        assert time.monotonic() - started >= 0.2
        box: dict[str, NamespaceSet] = {}
        waiter = threading.Thread(target=lambda: box.setdefault("s", p.get(timeout=10)))
        waiter.start()
        time.sleep(0.1)
        assert waiter.is_alive()
        assert not box
        p.put(a)
        waiter.join(10)
        assert not waiter.is_alive()
        c = box["s"]
        assert c is not a
        assert c is not b
        assert executor.run_sync(c, thread_ns, "net") == net_link(c)
        p.put(b)
        p.put(c)


def test_put_of_a_foreign_set_is_refused(executor: Workers) -> None:
    """put() of a set not taken from this pool (or given back twice) raises ValueError."""
    with Pool(Kind.NET, warm=0, workers=executor) as p, Pool(Kind.NET, warm=0) as q:
        with NamespaceSet.unshare(Kind.NET) as foreign:
            with pytest.raises(ValueError, match="not taken from this pool"):
                p.put(foreign)
            assert not foreign.closed
        s = q.get()
        with pytest.raises(ValueError, match="not taken from this pool"):
            p.put(s)
        q.put(s)
        with pytest.raises(ValueError, match="not taken from this pool"):
            q.put(s)
        assert p.stats().discarded == 0
        assert q.stats().discarded == 1


def test_lease_hands_out_a_set_and_takes_it_back(executor: Workers) -> None:
    """lease() gives a set for a with block and discards it after, even on error."""
    with Pool(Kind.NET, warm=1, workers=executor) as p:
        with p.lease() as s:
            assert isinstance(s, NamespaceSet)
            assert p.stats().leased == 1
            assert executor.run_sync(s, thread_ns, "net") == net_link(s)
        assert p.stats().leased == 0
        assert p.stats().discarded == 1
        assert wait_until(lambda: s.closed)
        lease = p.lease()
        with pytest.raises(HookError), lease:
            raise HookError("in the block")
        assert p.stats().leased == 0
        assert p.stats().discarded == 2


def test_run_sync_uses_a_fresh_set_each_call(executor: Workers) -> None:
    """run_sync runs in a fresh set each call (different netns) and discards it after."""

    def where() -> tuple[NamespaceSet | None, int, bool]:
        return nspool.current(), netns_cookie(), loopback_connects()

    with Pool(Kind.NET, warm=2, workers=executor) as p:
        results = [p.run_sync(where) for _ in range(3)]
        sets = [s for s, _, _ in results]
        cookies = {cookie for _, cookie, _ in results}
        assert all(s is not None for s in sets)
        assert len({id(s) for s in sets}) == 3
        assert len(cookies) == 3
        assert netns_cookie() not in cookies
        assert all(up for _, _, up in results)
        assert wait_until(lambda: all(s is not None and s.closed for s in sets))
        st = p.stats()
        assert (st.discarded, st.leased, st.hits + st.misses) == (3, 0, 3)

        def fails() -> None:
            raise HookError("from the call")

        with pytest.raises(HookError, match="from the call"):
            p.run_sync(fails)
        assert p.stats().discarded == 4
        assert p.stats().leased == 0
