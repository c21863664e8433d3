"""Network helpers.

:func:`loopback_up` acts on the calling thread's network namespace: call it
on a thread inside the set (a worker, ``call_inline``, or the pool's
after-create hook), since a socket belongs to the netns of the thread that
creates it.

:func:`veth` links two sets' network namespaces with a veth pair. It needs
pyroute2 (the ``net`` extra: ``pip install 'nspool[net]'``), imported only
when it is called, so that ``import nspool`` works without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import importlib
import ipaddress
from typing import Any

from ._loopback import loopback_up
from .errors import from_errno
from .kinds import Kind
from .nsset import NamespaceSet

__all__ = ["DEFAULT_ADDRESSES", "DEFAULT_NAMES", "Veth", "loopback_up", "veth"]

#: The addresses :func:`veth` gives the two ends unless told otherwise.
DEFAULT_ADDRESSES = ("10.200.0.1/30", "10.200.0.2/30")
#: The interface names :func:`veth` gives the two ends unless told otherwise.
DEFAULT_NAMES = ("veth0", "veth1")
#: The longest interface name the kernel takes (``IFNAMSIZ`` - 1).
IFNAME_MAX = 15


@dataclasses.dataclass(frozen=True)
class Veth:
    """A veth pair made by :func:`veth`: end 0 in set ``a``, end 1 in set
    ``b``, each with its name, interface index (in its own netns) and
    address."""

    names: tuple[str, str]
    indexes: tuple[int, int]
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]


def _iproute() -> Any:
    """A pyroute2 ``IPRoute`` netlink socket in the calling thread's netns."""
    try:
        pyroute2: Any = importlib.import_module("pyroute2")
    except ImportError as exc:
        raise ModuleNotFoundError(
            "nspool.net.veth needs pyroute2: install nspool's `net` extra "
            "(pip install 'nspool[net]')",
            name="pyroute2",
        ) from exc
    return pyroute2.IPRoute()


def _netlink_error(exc: Exception, step: str, name: str) -> Exception:
    """The nspool error for pyroute2's ``NetlinkError`` (its ``code`` is an
    errno); anything else unchanged."""
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        return from_errno(code, syscall=f"netlink {step}", kind=Kind.NET, path=name)
    return exc


def _check_name(name: str) -> str:
    if not name or len(name.encode()) > IFNAME_MAX or any(c in name for c in "/: \t\n"):
        raise ValueError(
            f"interface name {name!r}: 1 to {IFNAME_MAX} bytes, no '/', ':' or whitespace"
        )
    return name


def _configure(
    ipr: Any, name: str, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
) -> int:
    """Give interface ``name`` ``address``, set it up; return its index."""
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise from_errno(errno.ENODEV, syscall="netlink RTM_GETLINK", kind=Kind.NET, path=name)
    index = int(found[0])
    try:
        ipr.addr("add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        ipr.link("set", index=index, state="up")
    except Exception as exc:
        raise _netlink_error(exc, "RTM_NEWADDR", name) from exc
    return index


def veth(
    a: NamespaceSet,
    b: NamespaceSet,
    *,
    addresses: tuple[str, str] = DEFAULT_ADDRESSES,
    names: tuple[str, str] = DEFAULT_NAMES,
) -> Veth:
    """Link the network namespaces of sets ``a`` and ``b`` with a veth pair:
    end ``names[0]`` in ``a`` with ``addresses[0]``, end ``names[1]`` in
    ``b`` with ``addresses[1]`` (``"ADDRESS/PREFIX"``, IPv4 or IPv6), both
    up. Returns what was made.

    The pair is made by a worker inside ``a`` (netlink, through pyroute2),
    with the peer created directly in ``b``'s netns by its fd; ``b``'s end
    is then configured by a worker inside ``b``. If that fails, the pair is
    deleted again before the error is raised.

    There is nothing to close: a veth end lives in its netns, and the kernel
    deletes the whole pair when either netns is destroyed, so the link goes
    when the sets are closed (and nothing else holds their netns).

    Raises :class:`ValueError` for a set without a netns or a bad name or
    address, :class:`ModuleNotFoundError` without pyroute2, and the nspool
    error for the errno netlink returned (e.g. ``NamespaceExistsError`` if
    a name is taken).
    """
    for label, s in (("a", a), ("b", b)):
        if Kind.NET not in s.kinds:
            raise ValueError(f"veth(): set {label} holds no network namespace ({s.kinds!r})")
    first, second = (_check_name(name) for name in names)
    if first == second and a.id(Kind.NET) == b.id(Kind.NET):
        raise ValueError(f"veth(): both ends named {first!r} in the same netns")
    here, there = (ipaddress.ip_interface(address) for address in addresses)
    peer_fd = b.fds(Kind.NET)[Kind.NET]

    def make_pair() -> int:
        with _iproute() as ipr:
            try:
                ipr.link(
                    "add",
                    ifname=first,
                    kind="veth",
                    peer={"ifname": second, "net_ns_fd": peer_fd},
                )
            except Exception as exc:
                raise _netlink_error(exc, "RTM_NEWLINK", first) from exc
            try:
                return _configure(ipr, first, here)
            except BaseException:
                _delete(ipr, first)
                raise

    def configure_peer() -> int:
        with _iproute() as ipr:
            return _configure(ipr, second, there)

    def delete_pair() -> None:
        with _iproute() as ipr:
            _delete(ipr, first)

    index_a = a.run_sync(make_pair)
    try:
        index_b = b.run_sync(configure_peer)
    except BaseException:
        # The error raised is b's; failing to delete the pair must not hide it.
        with contextlib.suppress(Exception):
            a.run_sync(delete_pair)
        raise
    return Veth(names=(first, second), indexes=(index_a, index_b), addresses=(here, there))


def _delete(ipr: Any, name: str) -> None:
    """Delete interface ``name`` (and so its veth peer), if it is there."""
    found = ipr.link_lookup(ifname=name)
    if found:
        ipr.link("del", index=found[0])
