"""Sockets in a set's network namespace, used from the event loop.

Owns everything network of the async front end: a socket made in a set's
netns (:func:`socket_in`; a socket belongs to the netns it was made in,
whatever thread uses it later), a call on the calling thread in the netns
alone (:func:`call_in_netns`), names resolved inside the set
(:func:`resolve_in`), and anyio streams and listeners on such sockets
(:func:`connect_tcp_in`, :func:`create_tcp_listener_in`). All work on
anything with a handle (:class:`~nspool._handle.HasHandle`).

A socket is made with a ``setns`` into the netns and back on the calling
thread (microseconds, no thread hop); only name resolution, which reads the
set's files, waits for a worker (:mod:`nspool._wait`). Cancellation: as for
any anyio connect or accept; a socket made by a cancelled call is closed,
nothing is left open.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import anyio
import anyio.abc

from ._handle import HasHandle
from ._thread_ns import call_inline
from ._wait import run_in
from .errors import KindError, UnsupportedKindError, from_errno
from .kinds import Kind

__all__ = [
    "call_in_netns",
    "connect_tcp_in",
    "create_tcp_listener_in",
    "resolve_in",
    "socket_in",
]

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def socket_in(
    s: HasHandle,
    family: int = socket.AF_INET,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
) -> socket.socket:
    """A non-blocking socket that lives in ``s``'s netns, made on the
    calling thread (a ``setns`` into the netns and back: microseconds, no
    thread hop). Usable from the event loop like any socket. In rootless
    mode, where the calling thread could not come back, a worker makes it
    and the loop awaits it (a thread hop, without blocking the loop)."""
    try:
        sock = call_in_netns(s, socket.socket, family, type, proto)
    except UnsupportedKindError as exc:
        if exc.errno != errno.EPERM:
            raise
        # The calling thread could not come back (rootless mode): a worker,
        # which never has to, makes the socket instead (a thread hop).
        sock = await run_in(None, s, socket.socket, family, type, proto)
    sock.setblocking(False)
    return sock


def call_in_netns(s: HasHandle, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``fn`` on the calling thread inside ``s``'s netns only (the other
    kinds untouched), e.g. to make a socket there. A socket belongs to the
    netns it was made in, whatever thread uses it later."""
    if not s.handle.bits & int(Kind.NET):
        raise KindError(
            errno.EINVAL,
            syscall="socket",
            kind=Kind.NET,
            detail=f"the set holds no network namespace ({s.handle.kinds})",
        )
    return call_inline(s, Kind.NET, fn, *args, **kwargs)


async def resolve_in(
    s: HasHandle, host: str | None, port: int | str | None, *, type: int, flags: int = 0
) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` on a worker inside ``s``: the resolver's files and
    sockets are those of the set (asyncio's and anyio's ``getaddrinfo`` run
    on executor threads outside it)."""
    infos: list[tuple[Any, ...]] = await run_in(
        None, s, socket.getaddrinfo, host, port, 0, type, 0, flags
    )
    return infos


async def connect_tcp_in(s: HasHandle, host: str, port: int) -> anyio.abc.SocketStream:
    """An anyio stream connected to ``host:port`` from ``s``'s netns; the
    name is resolved inside the set, each address tried in turn."""
    infos = await resolve_in(s, host, port, type=socket.SOCK_STREAM)
    error: OSError | None = None
    for family, type_, proto, _name, address in infos:
        sock = await socket_in(s, family, type_, proto)
        try:
            try:
                sock.connect(address)
            except BlockingIOError:
                await anyio.wait_writable(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code), f"{host}:{port}") from None
            return await anyio.abc.SocketStream.from_socket(sock)
        except OSError as exc:
            sock.close()
            error = exc
        except BaseException:
            sock.close()
            raise
    if error is not None and error.errno == errno.ENETUNREACH and _is_loopback(infos):
        raise from_errno(
            errno.ENETUNREACH,
            syscall="connect",
            kind=Kind.NET,
            path=f"{host}:{port}",
            detail="lo is down in this set; hint: make it with "
            "NamespaceSet.unshare(..., loopback=True), or run nspool.net.loopback_up in it",
        ) from error
    raise error if error is not None else OSError(f"no address for {host}:{port}")


def _is_loopback(infos: Sequence[tuple[Any, ...]]) -> bool:
    """Whether every address ``getaddrinfo`` gave is a loopback one."""
    try:
        return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)
    except ValueError:
        return False


async def create_tcp_listener_in(
    s: HasHandle,
    local_host: str | None = None,
    local_port: int = 0,
    *,
    backlog: int = 65536,
    reuse_port: bool = False,
) -> anyio.abc.SocketListener:
    """An anyio listener bound in ``s``'s netns (the first address
    ``local_host`` resolves to there; all interfaces if ``None``)."""
    infos = await resolve_in(
        s, local_host, local_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, type_, proto, _name, address = infos[0]
    sock = await socket_in(s, family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(min(backlog, socket.SOMAXCONN))
        return await anyio.abc.SocketListener.from_socket(sock)
    except BaseException:
        sock.close()
        raise
