"""nspool's pytest plugin, run on made-up test files by ``pytester`` in a
subprocess (its pool and threads die with it, whatever happens), with
warnings as errors and strict markers."""

from __future__ import annotations

import os

import pytest

pytest_plugins = ["pytester"]

#: Written by the inner session's last hook: what was left once it ended.
LEFTOVERS = """
import os, threading
import nspool

def pytest_unconfigure(config):
    # s.run_sync uses the process's default Workers, which outlive any
    # session by design: shut down here, so that only what the plugin left
    # is counted.
    nspool.default_workers().shutdown(wait=True)
    # Trio keeps idle threads of its own cache for 10 s by design: not ours.
    threads = sorted(
        t.name
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.name.startswith("Trio thread")
    )
    children = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                children += f.read().split()
        except FileNotFoundError:
            pass
    namespaces = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the listing's own fd
            continue
        # The process's own namespaces are held for good (nspool.workers
        # opens home at import); only others would be a set left open.
        own = {os.readlink(f"/proc/self/ns/{k}") for k in ("net", "uts", "ipc", "mnt")}
        if link.startswith(("net:[", "uts:[", "ipc:[", "mnt:[")) and link not in own:
            namespaces.append(link)
    with open(os.environ["NSPOOL_LEFTOVERS"], "w") as f:
        f.write(f"threads={threads} children={children} namespaces={namespaces}")
"""

HOST_NETNS = os.readlink("/proc/self/ns/net")


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makeconftest(LEFTOVERS)
    pytester.makepyfile(test_inner=source)
    pytester.makeini(
        "[pytest]\nfilterwarnings = error\nasyncio_default_fixture_loop_scope = function\n"
    )
    leftovers = pytester.path / "leftovers.txt"
    os.environ["NSPOOL_LEFTOVERS"] = str(leftovers)
    os.environ["HOST_NETNS"] = HOST_NETNS
    try:
        result = pytester.runpytest_subprocess(
            "--strict-markers", "-p", "no:cacheprovider", "-W", "error", *args, timeout=120
        )
    finally:
        del os.environ["NSPOOL_LEFTOVERS"], os.environ["HOST_NETNS"]
    assert leftovers.read_text() == "threads=[] children=[] namespaces=[]", (
        "the session left its pool running"
    )
    return result


def test_netns_fixture(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
import os, socket

seen = []

def test_first(netns):
    assert netns.run_sync(socket.if_nameindex) == [(1, "lo")]
    link = netns.run_sync(os.readlink, "/proc/thread-self/ns/net")
    assert link != os.environ["HOST_NETNS"]
    seen.append(netns.ids())

def test_second(netns):
    assert netns.ids() not in seen   # a fresh one for each test
    assert os.readlink("/proc/thread-self/ns/net") == os.environ["HOST_NETNS"]

def test_pool_is_shared(nspool_pool, netns):
    assert nspool_pool.stats().leased == 1
""",
    )
    result.assert_outcomes(passed=3)


def test_marker_runs_the_test_inside(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
import os, socket, subprocess
import pytest

@pytest.mark.netns
def test_inside(tmp_path):
    assert os.readlink("/proc/thread-self/ns/net") != os.environ["HOST_NETNS"]
    assert socket.if_nameindex() == [(1, "lo")]
    out = subprocess.run(["readlink", "/proc/self/ns/net"], capture_output=True, text=True)
    assert out.stdout.strip() == os.readlink("/proc/thread-self/ns/net")
    (tmp_path / "x").write_text("fixtures work")

@pytest.mark.netns
def test_fails_inside():
    value = 41
    assert value == 42

@pytest.mark.netns
async def test_async_is_refused():
    pass

def test_unmarked_stays_home():
    assert os.readlink("/proc/thread-self/ns/net") == os.environ["HOST_NETNS"]
""",
    )
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines(["*assert 41 == 42*", "*runs sync tests only*anetns*"])


def test_anetns_for_anyio(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
import os, socket
import pytest

@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request):
    return request.param

@pytest.mark.anyio
async def test_async(anetns):
    assert await anetns.run(socket.if_nameindex) == [(1, "lo")]
    out = await anetns.run_process(["readlink", "/proc/self/ns/net"])
    assert out.stdout.decode().strip() != os.environ["HOST_NETNS"]
""",
    )
    result.assert_outcomes(passed=2)


def test_no_pool_unless_asked(pytester: pytest.Pytester) -> None:
    """A session that uses nothing of the plugin makes no pool (the hook
    checks no thread is left; this test that none ran meanwhile) and the
    marker is registered."""
    result = run(
        pytester,
        """
import threading

def test_plain():
    assert threading.active_count() == 1
""",
    )
    result.assert_outcomes(passed=1)
    markers = pytester.runpytest_subprocess("--markers", timeout=60)
    markers.stdout.fnmatch_lines(["@pytest.mark.netns: run this (sync) test inside*"])
