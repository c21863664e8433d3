"""Shared fixtures: leak checks, syscall backends, and outside witnesses.

Every test runs under ``no_leaks``: the process's fds, threads and mounts
must be the same after the test as before. Namespaces are checked with a
witness the kernel removes with them: a veth pair with one end inside the
netns and the other outside, whose outside end disappears when the netns is
destroyed (``lsns`` does not list namespaces held only by an fd).
"""

from __future__ import annotations

import itertools
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from nspool import NamespaceSet, _persist, _sys, _thread_ns, nsset, workers

T = TypeVar("T")

_names = itertools.count()


def unique_name(prefix: str = "nspt") -> str:
    """A name no other test (or test run) uses: for netns names and links."""
    return f"{prefix}{os.getpid() % 100000}x{next(_names)}"


def open_fds() -> set[str]:
    # listdir opens the directory itself; that fd is gone once it returns.
    return set(os.listdir("/proc/self/fd"))


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f)


def live_threads() -> set[threading.Thread]:
    # Trio's thread cache keeps its idle threads for 10 s by design (they
    # serve trio.to_thread, which anyio.to_thread uses under Trio): not ours.
    return {t for t in threading.enumerate() if not t.name.startswith("Trio thread")}


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture(scope="session", autouse=True)
def _netns_run_dir() -> None:
    """Set ``/run/netns`` up before any baseline is taken: once made a shared
    mount (by nspool or by ``ip netns add``) it stays one, as iproute2 leaves it."""
    _persist._prepare_netns_dir(_persist.NETNS_RUN_DIR)


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves an fd, a thread or a mount behind."""
    fds, threads, mounts = open_fds(), live_threads(), mount_points()
    yield
    # call_inline and s.socket() keep, per thread, an fd of the thread's own
    # namespaces for the way back (opened on first use, kept for the
    # thread's life); the test thread's is released here, before counting.
    _thread_ns.forget_thread_home()
    # Threads a test stopped may need a moment to leave threading.enumerate().
    wait_until(lambda: live_threads() <= threads, timeout=5)
    leaked_threads = live_threads() - threads
    assert not leaked_threads, f"threads leaked: {leaked_threads}"
    # Only new fds are leaks: an event loop made before the test (anyio's
    # plugin keeps one per backend across tests) may close its own during it.
    assert not open_fds() - fds, f"fds leaked: {sorted(open_fds() - fds)}"
    assert mount_points() == mounts, "mounts leaked"


@pytest.fixture(params=_sys.available_backends(), autouse=True)
def syscall_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run each test with every syscall backend this Python has (ctypes only
    on 3.11; os and ctypes on 3.12+)."""
    old = _sys.use_backend(request.param)
    try:
        yield request.param
    finally:
        _sys.use_backend(old)


def on_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` on a fresh thread that exits afterwards (whatever namespaces
    it entered die with it) and return its result or raise its error."""
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name="test-on-thread")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["result"]  # type: ignore[return-value]


def in_threads(fn: Callable[[], object], n: int, timeout: float = 60) -> list[BaseException]:
    """Run ``fn`` on ``n`` threads at once, wait for them (``timeout``
    seconds each at most), and return what they raised."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, name="test-in-threads") for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return errors


def thread_ns(kind_name: str) -> str:
    """The calling thread's namespace link, e.g. ``net:[4026531840]``."""
    return os.readlink(f"/proc/thread-self/ns/{kind_name}")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


class Witness:
    """A veth pair: ``inside`` moved into a network namespace, ``outside``
    left in the host's. The kernel deletes both ends when that namespace is
    destroyed, so ``outside`` vanishing proves the namespace is gone."""

    def __init__(self, netns_path: str) -> None:
        self.outside = unique_name("nspw")
        self.inside = unique_name("nspv")
        ip("link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
        try:
            ip("link", "set", "dev", self.inside, "netns", netns_path)
        except BaseException:
            ip("link", "del", self.outside, check=False)
            raise

    def alive(self) -> bool:
        return link_exists(self.outside)

    def wait_gone(self, timeout: float = 10.0) -> bool:
        """Whether the namespace was destroyed within ``timeout`` (the kernel
        frees a netns asynchronously, after its last reference is gone)."""
        return wait_until(lambda: not self.alive(), timeout)

    def remove(self) -> None:
        ip("link", "del", self.outside, check=False)


@pytest.fixture
def witness() -> Iterator[Callable[[NamespaceSet], Witness]]:
    """``witness(s)`` plants a veth witness in ``s``'s netns; any witness
    still alive at the end of the test is removed."""
    made: list[Witness] = []

    def plant(s: NamespaceSet) -> Witness:
        fd = s.fds("net")[nsset.Kind.NET]
        w = Witness(f"/proc/{os.getpid()}/fd/{fd}")
        made.append(w)
        return w

    yield plant
    for w in made:
        w.remove()


@pytest.fixture
def fresh_default() -> Iterator[None]:
    """Shut the lazily made default Workers down after the test, so that
    its threads end before the leak check."""
    yield
    with workers._default_lock:
        default, workers._default = workers._default, None
    if default is not None:
        default.shutdown(wait=True)
