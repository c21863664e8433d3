"""User namespaces (made in a helper process) and the process-scoped options
of a new set: private /tmp and /proc, host and domain names, clock offsets.

Processes started in the sets are the witnesses: what they read from
/proc/self, /tmp, uname and their clocks is the kernel's answer.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator

import anyio
import pytest

from nspool import (
    Kind,
    KindError,
    NamespaceError,
    NamespaceSet,
    Pool,
    UnsupportedKindError,
    _sys,
    workers,
)

from .conftest import Witness, wait_until

WitnessFactory = Callable[[NamespaceSet], Witness]


@pytest.fixture
def fresh_workers() -> Iterator[None]:
    """Shut down the default Workers after the test (its threads joined)."""
    yield
    with workers._default_lock:
        default, workers._default = workers._default, None
    if default is not None:
        default.shutdown(wait=True)


def run(s: NamespaceSet, command: str) -> str:
    """Run ``command`` through the shell inside ``s`` and return its output."""

    async def main() -> bytes:
        done = await s.run_process(command)
        return done.stdout

    return anyio.run(main).decode()


def children() -> list[int]:
    """This process's live child processes (from every thread)."""
    found: list[int] = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                found += [int(p) for p in f.read().split()]
        except FileNotFoundError:
            continue  # a thread that ended since the listing (and so has no children)
    return found


# -- user namespaces ---------------------------------------------------------------


def test_maps_are_what_a_process_in_the_set_sees(fresh_workers: None) -> None:
    """uid_map and gid_map given to unshare are the ones a process in the
    set reads in /proc/self/uid_map and gid_map; the helper is gone."""
    with NamespaceSet.unshare(
        Kind.USER | Kind.NET,
        uid_map=[(0, 100000, 1000), (1000, 0, 1)],
        gid_map=[(0, 200000, 500)],
    ) as s:
        assert children() == []
        out = run(s, "cat /proc/self/uid_map /proc/self/gid_map; readlink /proc/self/ns/user")
        lines = [line.split() for line in out.splitlines()]
        assert lines[:3] == [["0", "100000", "1000"], ["1000", "0", "1"], ["0", "200000", "500"]]
        assert lines[3] == [f"user:[{s.id(Kind.USER)}]"]
        # We are uid 0 outside, mapped to 1000 inside.
        assert run(s, "id -u").strip() == "1000"


def test_default_map_makes_the_caller_root_inside(fresh_workers: None) -> None:
    """Without maps, root inside is the caller's effective uid and gid;
    empty maps leave every id unmapped (the overflow id)."""
    with NamespaceSet.unshare(Kind.USER) as s:
        assert run(s, "cat /proc/self/uid_map").split() == ["0", str(os.geteuid()), "1"]
        assert run(s, "id -u; id -g").split() == ["0", "0"]
    with NamespaceSet.unshare(Kind.USER, uid_map=[], gid_map=[]) as s:
        assert run(s, "cat /proc/self/uid_map") == ""
        assert run(s, "id -u").strip() == "65534"


def test_nested_sets_are_owned_by_the_user_namespace(fresh_workers: None) -> None:
    """s.unshare(Kind.NET) on a set holding a user namespace makes a netns
    owned by it (NS_GET_USERNS), and keeps the user namespace."""
    with NamespaceSet.unshare(Kind.USER | Kind.UTS) as s, s.unshare(Kind.NET) as nested:
        assert nested.kinds == Kind.USER | Kind.UTS | Kind.NET
        assert nested.id(Kind.USER) == s.id(Kind.USER)
        assert _sys.owner_id(nested.fds(Kind.NET)[Kind.NET]) == s.id(Kind.USER)
        assert _sys.owner_id(s.fds(Kind.UTS)[Kind.UTS]) == s.id(Kind.USER)
        out = run(nested, "readlink /proc/self/ns/net /proc/self/ns/user")
        assert out.split() == [f"net:[{nested.id(Kind.NET)}]", f"user:[{s.id(Kind.USER)}]"]


def test_user_set_netns_dies_with_the_set(witness: WitnessFactory) -> None:
    """The namespaces a helper made live only as long as the set: the
    helper process is gone and a witness in the netns disappears on close."""
    s = NamespaceSet.unshare(Kind.USER | Kind.NET)
    w = witness(s)
    assert w.alive()
    assert children() == []
    s.close()
    assert w.wait_gone()


def test_pid_namespace_in_a_user_namespace(fresh_workers: None) -> None:
    """With pid and user namespaces the helper keeps the init (PID 1) for
    the set's life; a process in the set is PID 2 or later; closing the set
    ends the helper and its init."""
    s = NamespaceSet.unshare(Kind.USER | Kind.PID | Kind.MNT, private_proc=True)
    try:
        init = s.init_pid
        assert init is not None
        assert os.path.exists(f"/proc/{init}")
        pids = run(s, "echo $$; exec ls /proc").split()
        me = int(pids[0])
        assert me >= 2
        assert {int(p) for p in pids[1:] if p.isdigit()} == {1, me}
    finally:
        s.close()
    assert wait_until(lambda: not os.path.exists(f"/proc/{init}"))
    assert children() == []


@pytest.mark.parametrize(
    ("uid_map", "message"),
    [
        ([(0, 0, 1), (0, 5, 1)], "overlap inside"),
        ([(0, 0, 10), (10, 5, 1)], "overlap outside"),
        ([(0, 0, 0)], "count >= 1"),
        ([(-1, 0, 1)], "ids must be >= 0"),
        ([(0, 0)], "each entry is"),
        ([(i, i, 1) for i in range(341)], "at most 340"),
    ],
)
def test_bad_maps_are_refused_before_anything_starts(
    uid_map: list[tuple[int, ...]], message: str
) -> None:
    """Malformed maps: a ValueError naming the problem, and no helper
    process, fd or thread left (no_leaks)."""
    with pytest.raises(ValueError, match=message):
        NamespaceSet.unshare(Kind.USER, uid_map=uid_map)  # type: ignore[arg-type]
    assert children() == []


def test_a_map_the_kernel_refuses_leaves_no_helper(monkeypatch: pytest.MonkeyPatch) -> None:
    """A map the kernel rejects (here: written twice, which it never allows)
    is a NamespaceError naming the file and syscall; the helper is reaped.
    The second write is a fake: root may map any ids, so a first write that
    the kernel refuses needs an unprivileged caller (tests/test_rootless.py
    has that case)."""
    real_write = _sys.write_proc

    def write_twice(path: str, text: str, **kw: object) -> None:
        real_write(path, text, **kw)  # type: ignore[arg-type]
        if path.endswith("/uid_map"):
            real_write(path, text, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_sys, "write_proc", write_twice)
    with pytest.raises(NamespaceError, match=r"write\(user, /proc/\d+/uid_map") as raised:
        NamespaceSet.unshare(Kind.USER | Kind.NET)
    assert raised.value.errno == 1  # EPERM: a map is written once
    assert children() == []


def test_workers_refuse_a_set_with_another_user_namespace() -> None:
    """A thread cannot join a user namespace: run_sync says so, and the set
    without its user namespace (dup) runs in the netns."""
    w = workers.Workers()
    try:
        with NamespaceSet.unshare(Kind.USER | Kind.NET) as s:
            with pytest.raises(UnsupportedKindError, match="user"):
                w.run_sync(s, lambda: None)
            with s.dup(Kind.NET) as net_only:
                ino = w.run_sync(net_only, lambda: os.stat("/proc/thread-self/ns/net").st_ino)
            assert ino == s.id(Kind.NET)
    finally:
        w.shutdown()


def test_pool_of_user_sets_brings_lo_up(fresh_workers: None) -> None:
    """A Pool of user+net sets: each made in a helper, lo up by the default
    hook (run on a thread inside the netns), distinct namespaces."""
    seen: set[int] = set()
    with Pool(Kind.USER | Kind.NET, warm=2, creators=1) as pool:
        for _ in range(3):
            with pool.lease() as s:
                seen.add(s.id(Kind.USER))
                assert run(s, "cat /sys/class/net/lo/operstate 2>/dev/null; ip -br link") != ""
                links = run(s, "ip -o link show lo")
                assert "UP" in links.split("<", 1)[1].split(">", 1)[0]
    assert len(seen) == 3
    assert children() == []


# -- process-scoped options ---------------------------------------------------------


@pytest.mark.parametrize("user", [False, True], ids=["thread", "helper"])
def test_private_tmp_is_invisible_from_the_host(fresh_workers: None, user: bool) -> None:
    """A file a process makes in the set's private /tmp is not in the
    host's /tmp, and the host's files are not in the set's."""
    marker = f"nspool-private-tmp-{os.getpid()}-{time.monotonic_ns()}"
    host_file = f"/tmp/{marker}.host"
    with open(host_file, "w"):
        pass
    try:
        kinds = Kind.MNT | (Kind.USER if user else Kind(0))
        with NamespaceSet.unshare(kinds, private_tmp=True) as s:
            out = run(s, f"touch /tmp/{marker}.inside && ls -A /tmp")
            assert out.split() == [f"{marker}.inside"]
            assert not os.path.exists(f"/tmp/{marker}.inside")
            assert run(s, "grep ' /tmp ' /proc/self/mounts | cut -d' ' -f3").strip() == "tmpfs"
    finally:
        os.unlink(host_file)


@pytest.mark.parametrize("user", [False, True], ids=["thread", "helper"])
def test_private_proc_lists_only_the_sets_processes(fresh_workers: None, user: bool) -> None:
    """A process in a set with private_proc lists only PID 1 (the set's
    init) and itself in /proc."""
    kinds = Kind.PID | Kind.MNT | (Kind.USER if user else Kind(0))
    with NamespaceSet.unshare(kinds, private_proc=True) as s:
        pids = run(s, "echo $$; exec ls /proc").split()
        me = int(pids[0])
        assert {int(p) for p in pids[1:] if p.isdigit()} == {1, me}
    # The host's /proc is untouched.
    assert os.path.exists(f"/proc/{os.getpid()}")


@pytest.mark.parametrize("user", [False, True], ids=["thread", "helper"])
def test_hostname_and_domainname(fresh_workers: None, user: bool) -> None:
    """The names given are the set's, not the host's."""
    host = socket.gethostname()
    kinds = Kind.UTS | (Kind.USER if user else Kind(0))
    with NamespaceSet.unshare(kinds, hostname="inside-set", domainname="example.test") as s:
        assert run(s, "uname -n; cat /proc/sys/kernel/domainname").split() == [
            "inside-set",
            "example.test",
        ]
        if not user:
            assert s.run_sync(socket.gethostname) == "inside-set"
    assert socket.gethostname() == host


@pytest.mark.parametrize("user", [False, True], ids=["thread", "helper"])
def test_clock_offsets_seen_by_a_process(fresh_workers: None, user: bool) -> None:
    """A process in a set with a time namespace sees its monotonic and boot
    clocks moved by the offsets; the host's are not."""
    kinds = Kind.TIME | (Kind.USER if user else Kind(0))
    day = 86400.0
    with NamespaceSet.unshare(kinds, clock_offsets={"monotonic": day, "boottime": 2 * day}) as s:
        before = time.monotonic()
        out = run(s, "cat /proc/self/timens_offsets; cut -d' ' -f1 /proc/uptime")
        after = time.monotonic()
        lines = out.splitlines()
        assert lines[0].split() == ["monotonic", "86400", "0"]
        assert lines[1].split() == ["boottime", "172800", "0"]
        inside_uptime = float(lines[2])
        assert inside_uptime > 2 * day
        code = "import time; print(time.monotonic())"
        inside = float(run(s, f"python3 -c '{code}'"))
        assert before + day < inside < time.monotonic() + day + 5
        assert after < before + 60  # the host's clock did not move


def test_fractional_and_negative_offsets() -> None:
    """Offsets are written as seconds and nanoseconds."""
    from nspool._options import offsets_text

    assert offsets_text([("monotonic", 1.5), ("boottime", -0.25)]) == (
        "monotonic 1 500000000\nboottime -1 750000000\n"
    )


@pytest.mark.parametrize(
    ("kinds", "options", "needs"),
    [
        (Kind.NET, {"hostname": "x"}, "uts"),
        (Kind.NET, {"domainname": "x"}, "uts"),
        (Kind.NET, {"private_tmp": True}, "mnt"),
        (Kind.MNT, {"private_proc": True}, "pid"),
        (Kind.PID, {"private_proc": True}, "mnt"),
        (Kind.NET, {"clock_offsets": {"monotonic": 1}}, "time"),
        (Kind.NET, {"uid_map": [(0, 0, 1)]}, "user"),
    ],
)
def test_an_option_needs_its_namespace(kinds: Kind, options: dict[str, object], needs: str) -> None:
    """An option for a namespace the call does not create is a KindError
    naming that kind; nothing is made (no_leaks)."""
    with pytest.raises(KindError, match=rf"\({needs}\).*needs a new {needs} namespace"):
        NamespaceSet.unshare(kinds, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hostname": "h" * 65}, "longer than 64 bytes"),
        ({"clock_offsets": {"realtime": 1}}, "no clock 'realtime'"),
        ({"clock_offsets": {"monotonic": float("nan")}}, "must be finite"),
    ],
)
def test_bad_option_values(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NamespaceSet.unshare(Kind.UTS | Kind.TIME, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("user", [False, True], ids=["thread", "helper"])
def test_a_refused_clock_offset_leaves_nothing(user: bool) -> None:
    """An offset the kernel refuses (one that would make the boot clock
    negative) is a NamespaceError naming the time namespace and the write;
    no process, fd or thread is left."""
    kinds = Kind.TIME | (Kind.USER if user else Kind(0))
    with pytest.raises(NamespaceError, match=r"write\(time"):
        NamespaceSet.unshare(kinds, clock_offsets={"boottime": -(10**9)})
    assert children() == []


def test_pool_sets_get_the_options(fresh_workers: None) -> None:
    """Pool(..., hostname=...) gives every set the name (made in place by
    the creators)."""
    with Pool(Kind.NET | Kind.UTS, warm=2, hostname="pooled") as pool:
        assert pool.run_sync(socket.gethostname) == "pooled"
        assert pool.run_sync(socket.gethostname) == "pooled"
    assert socket.gethostname() != "pooled"


def test_private_proc_set_in_a_recycling_pool(fresh_workers: None) -> None:
    """The library's own reads inside a set with a private /proc (the
    recycle check's net_state) go through the host's /proc: inside, the
    set's /proc has no entry for the worker thread, yet net_state sees the
    netns's lo, and a recycled set is verified and reused.

    max_sets=1, so that no creator can make a second set to be handed out in
    place of the recycled one (the race that made this test flaky)."""
    from nspool.pool import net_state

    with Pool(
        Kind.NET | Kind.PID | Kind.MNT,
        warm=1,
        max_sets=1,
        private_proc=True,
        recycle=lambda s: None,
    ) as pool:
        pool.wait_ready(timeout=30)
        first = pool.get()
        ino = first.id(Kind.NET)
        assert not first.run_sync(os.path.exists, "/proc/thread-self")
        assert first.run_sync(net_state)[0] == "lo"
        pool.put(first)
        again = pool.get()
        assert again.id(Kind.NET) == ino  # verified and reused
        pool.put(again)
