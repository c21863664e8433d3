"""``nspool.net.veth``: a veth pair between two sets' network namespaces,
against the real kernel. Every netns here is made by the test; the outside
witnesses (``tests/conftest.py``) show the namespaces, and so the pair, gone
after the sets are closed."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from nspool import Kind, NamespaceExistsError, NamespaceSet, net
from nspool.net import DEFAULT_ADDRESSES, DEFAULT_NAMES, veth

from .conftest import Witness, wait_until

pytest.importorskip("pyroute2")

pytestmark = pytest.mark.usefixtures("fresh_default")

WitnessFactory = Callable[[NamespaceSet], Witness]


def names_in(s: NamespaceSet) -> list[str]:
    """The interface names in ``s``'s netns, seen from a worker inside it."""
    return sorted(name for _, name in s.run_sync(socket.if_nameindex))


def addresses_of(s: NamespaceSet, name: str) -> str:
    """``ip -o addr show dev NAME`` run from a worker inside ``s`` (a child
    process starts in the namespaces of the thread that forks it)."""
    done = s.run_sync(
        subprocess.run,
        ["ip", "-o", "addr", "show", "dev", name],
        capture_output=True,
        text=True,
        check=True,
    )
    return str(done.stdout)


def echo_across(a: NamespaceSet, b: NamespaceSet, address: str) -> tuple[bytes, str]:
    """Listen in ``b`` on ``address``, connect from ``a``, send a line and
    read it back: the reply and the client's address as ``b`` saw it."""
    server: socket.socket = b.run_sync(socket.create_server, (address, 0))
    with server:
        server.settimeout(10)
        port = server.getsockname()[1]

        def client() -> socket.socket:
            return socket.create_connection((address, port), timeout=10)

        conn = a.run_sync(client)
        with conn:
            accepted, peer = server.accept()
            with accepted:
                accepted.settimeout(10)
                conn.sendall(b"ping\n")
                accepted.sendall(accepted.recv(64).upper())
                reply = conn.recv(64)
    return reply, str(peer[0])


def test_tcp_crosses_the_pair_and_it_goes_with_the_sets(witness: WitnessFactory) -> None:
    """veth(a, b) puts veth0 (10.200.0.1/30) in a and veth1 (10.200.0.2/30)
    in b, both up; a TCP connection from a reaches a listener in b on its
    address; after both sets are closed their netns (and so the pair) are
    destroyed: the outside witnesses vanish."""
    with NamespaceSet.unshare(Kind.NET) as a, NamespaceSet.unshare(Kind.NET) as b:
        witnesses = [witness(a), witness(b)]
        made = veth(a, b)
        assert made.names == DEFAULT_NAMES
        assert [str(x) for x in made.addresses] == list(DEFAULT_ADDRESSES)
        assert "veth0" in names_in(a)
        assert "veth0" not in names_in(b)
        assert "veth1" in names_in(b)
        assert "veth1" not in names_in(a)
        shown_a, shown_b = addresses_of(a, "veth0"), addresses_of(b, "veth1")
        assert "inet 10.200.0.1/30" in shown_a, shown_a
        assert "inet 10.200.0.2/30" in shown_b, shown_b
        reply, peer = echo_across(a, b, "10.200.0.2")
        assert reply == b"PING\n"
        assert peer == "10.200.0.1"
        # And the other way round.
        reply, peer = echo_across(b, a, "10.200.0.1")
        assert (reply, peer) == (b"PING\n", "10.200.0.2")
        assert all(w.alive() for w in witnesses)
    for w in witnesses:
        assert w.wait_gone(), "a set's netns outlived close()"


def test_the_pair_dies_with_either_netns() -> None:
    """Closing a (the only holder of its netns) deletes the whole pair: b's
    end vanishes from b, which stays open."""
    with NamespaceSet.unshare(Kind.NET) as b:
        with NamespaceSet.unshare(Kind.NET) as a:
            veth(a, b, names=("left", "right"), addresses=("10.200.1.1/24", "10.200.1.2/24"))
            assert "right" in names_in(b)
            assert "inet 10.200.1.2/24" in addresses_of(b, "right")
        assert wait_until(lambda: "right" not in names_in(b)), names_in(b)
        assert names_in(b) == ["lo"]


def test_taken_name_is_refused_and_nothing_is_left() -> None:
    """A peer name already used in b is EEXIST (NamespaceExistsError naming
    netlink) and leaves no new interface in a or b."""
    with NamespaceSet.unshare(Kind.NET) as a, NamespaceSet.unshare(Kind.NET) as b:
        veth(a, b)
        before_a, before_b = names_in(a), names_in(b)
        with pytest.raises(NamespaceExistsError, match="netlink"):
            veth(a, b, names=("other0", "veth1"), addresses=("10.200.2.1/30", "10.200.2.2/30"))
        assert names_in(a) == before_a
        assert names_in(b) == before_b


def test_a_bad_address_is_refused_before_anything_is_made() -> None:
    with NamespaceSet.unshare(Kind.NET) as a, NamespaceSet.unshare(Kind.NET) as b:
        with pytest.raises(ValueError, match="does not appear to be"):
            veth(a, b, addresses=("10.200.0.1/30", "not an address"))
        assert names_in(a) == ["lo"]
        assert names_in(b) == ["lo"]


def test_a_failure_in_b_removes_the_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    """If b's end cannot be configured, the pair made from a is deleted
    again (from a, which deletes b's end too) and the error is raised."""
    real = net._configure

    def failing(ipr: Any, name: str, address: Any) -> int:
        if name == "veth1":
            raise OSError(errno.EADDRNOTAVAIL, "injected")
        return real(ipr, name, address)

    monkeypatch.setattr(net, "_configure", failing)
    with NamespaceSet.unshare(Kind.NET) as a, NamespaceSet.unshare(Kind.NET) as b:
        with pytest.raises(OSError, match="injected"):
            veth(a, b)
        assert names_in(a) == ["lo"]
        assert wait_until(lambda: names_in(b) == ["lo"]), names_in(b)


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a b"])
def test_bad_names_are_refused_before_anything_is_made(name: str) -> None:
    with NamespaceSet.unshare(Kind.NET) as a, NamespaceSet.unshare(Kind.NET) as b:
        with pytest.raises(ValueError, match="interface name"):
            veth(a, b, names=(name, "ok"))
        assert names_in(a) == ["lo"]
        assert names_in(b) == ["lo"]


def test_a_set_without_netns_is_refused() -> None:
    with NamespaceSet.unshare(Kind.NET) as a, NamespaceSet.unshare(Kind.UTS) as b:
        with pytest.raises(ValueError, match="no network namespace"):
            veth(a, b)
        assert names_in(a) == ["lo"]


def test_without_pyroute2_import_works_and_veth_names_the_extra() -> None:
    """With pyroute2 unimportable, ``import nspool`` and ``nspool.net``
    still work, and veth() raises ModuleNotFoundError naming the extra."""
    script = (
        "import sys\n"
        "sys.modules['pyroute2'] = None\n"
        "import nspool, nspool.net\n"
        "from nspool import Kind, NamespaceSet\n"
        "with NamespaceSet.unshare(Kind.NET) as a, NamespaceSet.unshare(Kind.NET) as b:\n"
        "    try:\n"
        "        nspool.net.veth(a, b)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        print(exc)\n"
        "nspool.default_workers().shutdown()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "nspool[net]" in done.stdout, done.stdout
