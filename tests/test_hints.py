"""Errors and warnings that say what to do: root or rootless mode for EPERM,
``ip netns add`` for a missing name, ``lo`` left down by a plain unshare and
brought up by ``loopback=True``, a warning for ``s.run_sync`` on an event
loop's thread."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import anyio
import pytest

from nspool import Kind, KindError, NamespaceNotFoundError, NamespaceSet, errors, nsset, workers

from .test_pool import loopback_connects


@pytest.fixture
def fresh_default() -> Iterator[None]:
    yield
    with workers._default_lock:
        default, workers._default = workers._default, None
    if default is not None:
        default.shutdown(wait=True)


def test_eperm_from_unshare_names_root_and_rootless_mode() -> None:
    err = errors.from_errno(errno.EPERM, syscall="unshare", kind=Kind.NET)
    assert "root" in str(err)
    assert "enter_user_namespace()" in str(err)
    # Only for the syscalls that make or join namespaces.
    assert "enter_user_namespace" not in str(errors.from_errno(errno.EPERM, syscall="kill"))


def test_eperm_as_an_unprivileged_user_carries_the_hint() -> None:
    """As uid 65534, NamespaceSet.unshare(Kind.NET) fails with the hint (the
    real kernel's EPERM)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("no setpriv to drop privileges with")
    script = textwrap.dedent(
        """
        import sys
        from nspool import Kind, NamespaceSet
        try:
            NamespaceSet.unshare(Kind.NET)
        except PermissionError as exc:
            print(exc)
            sys.exit(0)
        sys.exit(3)
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(nsset.__file__)))
    result = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": root},
        check=False,
    )
    if result.returncode not in (0, 3):
        pytest.skip(f"uid 65534 cannot run this interpreter: {result.stderr.strip()[-200:]}")
    assert result.returncode == 0, "unshare(net) worked unprivileged"
    assert "enter_user_namespace()" in result.stdout


def test_a_missing_netns_name_says_ip_netns_add() -> None:
    with pytest.raises(NamespaceNotFoundError, match="ip netns add nspool-no-such"):
        NamespaceSet.from_name("nspool-no-such")


def test_plain_unshare_leaves_lo_down_and_loopback_true_brings_it_up(
    fresh_default: None,
) -> None:
    with NamespaceSet.unshare(Kind.NET) as s:
        assert not s.run_sync(loopback_connects)
    with NamespaceSet.unshare(Kind.NET, loopback=True) as s:
        assert s.run_sync(loopback_connects)
    with NamespaceSet.unshare(Kind.UTS) as outer, outer.unshare(Kind.NET, loopback=True) as s:
        assert s.run_sync(loopback_connects)
    with pytest.raises(KindError, match="needs a new netns"):
        NamespaceSet.unshare(Kind.UTS, loopback=True)
    with pytest.raises(TypeError, match="loopback"):
        NamespaceSet.unshare(Kind.NET, loopback="yes")  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_run_sync_on_the_event_loop_warns_once(
    monkeypatch: pytest.MonkeyPatch, fresh_default: None
) -> None:
    monkeypatch.setattr(nsset, "_warned_blocking", False)
    with NamespaceSet.unshare(Kind.UTS) as s:
        with pytest.warns(RuntimeWarning, match="await s.run"):
            assert s.run_sync(int) == 0
        assert nsset._warned_blocking
        assert s.run_sync(int) == 0  # once: no second warning (warnings are errors here)
        assert await s.run(int) == 0


def test_run_sync_off_the_loop_does_not_warn(
    monkeypatch: pytest.MonkeyPatch, fresh_default: None
) -> None:
    monkeypatch.setattr(nsset, "_warned_blocking", False)
    with NamespaceSet.unshare(Kind.UTS) as s:
        assert s.run_sync(int) == 0

        async def from_a_thread() -> int:
            return await anyio.to_thread.run_sync(s.run_sync, int)

        assert anyio.run(from_a_thread) == 0
    assert not nsset._warned_blocking


@pytest.mark.anyio
async def test_connect_to_loopback_with_lo_down_says_so(fresh_default: None) -> None:
    with NamespaceSet.unshare(Kind.NET) as s:
        with pytest.raises(OSError, match="lo is down in this set") as info:
            await s.connect_tcp("127.0.0.1", 9)
        assert info.value.errno == errno.ENETUNREACH
