"""Rootless mode and user namespaces without privileges, tested as an
unprivileged user: each test runs a script in a child process started with
``setpriv --reuid=65534`` (nobody), which prints what it saw as JSON. The
rootless-mode scripts also run as root, whose process, once inside its own
user namespace, cannot go home either (and which can run an interpreter
installed where uid 65534 may not look).

The child needs nothing of root: it enters its own user namespace
(:func:`nspool.enter_user_namespace`), then makes a pool of network
namespaces, runs calls in them and closes everything. Its witnesses are its
own: a veth pair per pool set, with one end in a witness netns it holds,
disappears when the pool set's netns is destroyed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from typing import Any

import pytest

NOBODY = 65534

pytestmark = pytest.mark.skipif(
    shutil.which("setpriv") is None or os.geteuid() != 0,
    reason="needs root and setpriv to become an unprivileged user",
)


def nobody_can_run_python() -> bool:
    """Whether uid 65534 can start this interpreter: not when it (or its
    libpython) lives under a directory only root may enter, as a pyenv
    install under /root does."""
    done = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-c",
            "pass",
        ],
        capture_output=True,
        cwd="/",
    )
    return done.returncode == 0


@pytest.fixture(params=["nobody", "root"])
def who(request: pytest.FixtureRequest) -> str:
    """Who runs a rootless-mode script: uid 65534, or root (whose process,
    once in its own user namespace, is just as unable to go home)."""
    if request.param == "nobody" and not nobody_can_run_python():
        pytest.skip(
            f"uid {NOBODY} cannot run {sys.executable} (a directory on its path is private)"
        )
    return str(request.param)


def run_as(who: str, script: str, backend: str, timeout: float = 120) -> dict[str, Any]:
    """Run ``script`` with this Python as ``who`` ("nobody": uid/gid 65534
    through setpriv, or "root"); its last stdout line is JSON."""
    env = {**os.environ, "NSPOOL_SYSCALLS": backend}
    drop = (
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        if who == "nobody"
        else []
    )
    done = subprocess.run(
        [*drop, sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


ROOTLESS_POOL = """
    import itertools, json, os, socket, subprocess, threading, time
    import anyio
    import nspool
    from nspool import Kind, NamespaceSet, Pool
    from nspool.net import loopback_up

    SO_NETNS_COOKIE = 71
    fds_before = set(os.listdir("/proc/self/fd"))
    out = {"uid_before": os.getuid()}
    nspool.enter_user_namespace()
    out["uid_map"] = open("/proc/self/uid_map").read().split()

    witness = NamespaceSet.unshare(Kind.NET)
    wfd = witness.fds(Kind.NET)[Kind.NET]
    numbers = itertools.count()

    def plant_witness(s):
        loopback_up()
        n = next(numbers)
        subprocess.run(
            ["ip", "link", "add", f"in{n}", "type", "veth", "peer", "name", f"out{n}",
             "netns", f"/proc/self/fd/{wfd}"],
            check=True, pass_fds=[wfd],
        )

    def witness_peers():
        return sorted(name for _, name in socket.if_nameindex() if name != "lo")

    def call():
        server = socket.socket()
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())
        client.close()
        # The netns cookie, never reused (inode numbers are, at once).
        cookie = int.from_bytes(server.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8), "little")
        server.close()
        names = sorted(name for _, name in socket.if_nameindex())
        return cookie, names

    with Pool(Kind.NET, warm=4, after_create=plant_witness) as pool:
        results = [pool.run_sync(call) for _ in range(20)]

        async def awaited():
            got = [await pool.run(call) for _ in range(5)]
            async with pool.lease() as s:
                done = await s.run_process(["ip", "-o", "link", "show", "lo"])
                got.append(("process", done.stdout.decode()))
            return got

        results += anyio.run(awaited)
        pool.wait_ready(timeout=20)  # the last takes refilled: warm sets ready
        out["peers_while_open"] = len(witness.run_sync(witness_peers))
        out["stats"] = str(pool.stats())
    out["results"] = results

    deadline = time.monotonic() + 20
    while witness.run_sync(witness_peers) and time.monotonic() < deadline:
        time.sleep(0.05)
    out["peers_after_close"] = witness.run_sync(witness_peers)
    witness.close()
    workers = nspool.default_workers()
    out["discarded"] = workers.stats().discarded
    workers.shutdown()
    out["threads"] = [t.name for t in threading.enumerate()]
    out["fds_leaked"] = sorted(set(os.listdir("/proc/self/fd")) - fds_before)
    try:
        NamespaceSet.unshare(Kind.NET).call_inline(os.getpid)
    except nspool.UnsupportedKindError as exc:
        out["inline"] = str(exc)
    print(json.dumps(out))
"""


def test_rootless_pool_runs_calls_with_lo_up_and_leaves_nothing(
    syscall_backend: str, who: str
) -> None:
    """As nobody, after enter_user_namespace(): a Pool of netns serves 25
    calls (sync and async) and a process, each in its own fresh netns with
    lo up; closing the pool destroys every netns it made (the witness ends
    vanish); no thread or fd is left; call_inline is refused plainly."""
    out = run_as(who, ROOTLESS_POOL, syscall_backend)
    uid = NOBODY if who == "nobody" else 0
    assert out["uid_before"] == uid
    assert out["uid_map"] == ["0", str(uid), "1"]
    calls = [r for r in out["results"] if r[0] != "process"]
    assert len(calls) == 25
    assert len({cookie for cookie, _ in calls}) == 25  # a fresh netns each
    # Each netns holds lo and its own witness end, and nothing else.
    for _, names in calls:
        assert len(names) == 2, names
        assert "lo" in names, names
        assert next(n for n in names if n != "lo").startswith("in"), names
    process = next(r[1] for r in out["results"] if r[0] == "process")
    assert "lo:" in process
    assert "UP" in process.split("<", 1)[1].split(">", 1)[0]
    assert out["peers_while_open"] >= 4
    assert out["peers_after_close"] == []
    assert out["discarded"] == 0  # spent workers retire; none is a fault
    assert out["threads"] == ["MainThread"]
    assert out["fds_leaked"] == []
    assert "rootless mode" in out["inline"]


UNPRIVILEGED_USER_SETS = """
    import json, os, subprocess
    import anyio
    import nspool
    from nspool import Kind, NamespaceSet, NamespaceError

    def children():
        found = []
        for tid in os.listdir("/proc/self/task"):
            found += open(f"/proc/self/task/{tid}/children").read().split()
        return found

    out = {}
    fds_before = set(os.listdir("/proc/self/fd"))
    with NamespaceSet.unshare(Kind.USER | Kind.NET | Kind.UTS, hostname="mine") as s:
        async def look():
            done = await s.run_process("cat /proc/self/uid_map /proc/self/gid_map; uname -n; id -u")
            return done.stdout.decode()
        out["inside"] = anyio.run(look).split()
        out["setgroups"] = "unknown"
    try:
        NamespaceSet.unshare(Kind.USER | Kind.NET, uid_map=[(0, 0, 1)])
    except NamespaceError as exc:
        out["error"] = str(exc)
        out["errno"] = exc.errno
    out["children"] = children()
    nspool.default_workers().shutdown()
    out["fds_leaked"] = sorted(set(os.listdir("/proc/self/fd")) - fds_before)
    print(json.dumps(out))
"""


def test_unprivileged_user_sets_and_a_refused_map(syscall_backend: str) -> None:
    """Without any privilege (and without rootless mode) a set with its own
    user namespace works: the default maps make nobody root inside (the gid
    map after denying setgroups, as the kernel requires). A map the kernel
    refuses (uid 0 outside, which nobody does not own) is a NamespaceError
    naming the map file and the write; no helper process or fd is left."""
    if not nobody_can_run_python():
        pytest.skip(
            f"uid {NOBODY} cannot run {sys.executable} (a directory on its path is private)"
        )
    out = run_as("nobody", UNPRIVILEGED_USER_SETS, syscall_backend)
    assert out["inside"] == ["0", str(NOBODY), "1", "0", str(NOBODY), "1", "mine", "0"]
    assert out["errno"] == 1
    assert "write(user, /proc/" in out["error"]
    assert "/uid_map" in out["error"]
    assert out["children"] == []
    assert out["fds_leaked"] == []


THREADED_TOO_LATE = """
    import json, threading
    import nspool
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    before = open("/proc/self/uid_map").read()
    out = {}
    try:
        nspool.enter_user_namespace()
    except nspool.UnsupportedKindError as exc:
        out["error"] = str(exc)
    out["unchanged"] = open("/proc/self/uid_map").read() == before
    stop.set()
    t.join()
    print(json.dumps(out))
"""


def test_enter_user_namespace_refuses_a_threaded_process(syscall_backend: str, who: str) -> None:
    """Called once a thread exists, enter_user_namespace raises a clear
    error and changes nothing."""
    out = run_as(who, THREADED_TOO_LATE, syscall_backend)
    assert "already has 2 threads" in out["error"]
    assert out["unchanged"]


LIMBO = """
    import json, os, socket, subprocess, threading, time
    import nspool
    from nspool import Kind, NamespaceSet, Workers

    nspool.enter_user_namespace()
    out = {}
    witness = NamespaceSet.unshare(Kind.NET)
    wfd = witness.fds(Kind.NET)[Kind.NET]

    def planted(n):
        # A veth pair made inside s (by ip run on a default worker there),
        # its other end in the witness netns.
        s = NamespaceSet.unshare(Kind.NET)
        s.run_sync(
            subprocess.run,
            ["ip", "link", "add", f"in{n}", "type", "veth", "peer", "name", f"out{n}",
             "netns", f"/proc/self/fd/{wfd}"],
            check=True, pass_fds=[wfd],
        )
        return s

    def peers():
        return sorted(name for _, name in socket.if_nameindex() if name != "lo")

    def where():
        return threading.current_thread().name, os.stat("/proc/thread-self/ns/net").st_ino

    home_net = os.stat("/proc/thread-self/ns/net").st_ino
    w = Workers(max_workers=1)
    s1, s2 = planted(1), planted(2)
    out["first"] = w.run_sync(s1, where)
    out["second"] = w.run_sync(s2, where)
    out["ids"] = [s1.id(Kind.NET), s2.id(Kind.NET)]
    s1.close()
    deadline = time.monotonic() + 20
    while "out1" in witness.run_sync(peers) and time.monotonic() < deadline:
        time.sleep(0.05)
    out["peers_after_s1_closed"] = witness.run_sync(peers)
    out["threads_while_idle"] = w.stats().threads
    out["no_set"] = w.submit(where).result()
    out["home_net"] = home_net
    with NamespaceSet.unshare(Kind.MNT) as m:
        out["mnt_call"] = w.run_sync(m, where)[0]
    out["after_mnt"] = w.run_sync(s2, where)[0]
    s2.close()
    w.shutdown()
    witness.close()
    nspool.default_workers().shutdown()
    out["discarded"] = w.stats().discarded
    out["threads"] = [t.name for t in threading.enumerate()]
    print(json.dumps(out))
"""


def test_rootless_workers_wait_in_limbo(syscall_backend: str, who: str) -> None:
    """In rootless mode a worker that ran in one set serves the next set
    too (one thread, max_workers=1), and idle in limbo it keeps no set
    alive: the witness of a closed set vanishes while the worker lives. A
    call without a set gets a fresh thread at home; a worker that entered a
    mount namespace is replaced after its call. None of it is a fault."""
    out = run_as(who, LIMBO, syscall_backend)
    first, second = out["first"], out["second"]
    assert first[0] == second[0]  # the same thread served both sets
    assert [first[1], second[1]] == out["ids"]
    assert out["peers_after_s1_closed"] == ["out2"]
    assert out["threads_while_idle"] == 1
    no_set_thread, no_set_net = out["no_set"]
    assert no_set_thread != first[0]
    assert no_set_net == out["home_net"]
    assert out["after_mnt"] != out["mnt_call"]
    assert out["discarded"] == 0
    assert out["threads"] == ["MainThread"]
