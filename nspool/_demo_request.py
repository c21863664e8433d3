"""The demo's request, and the two ways of serving it without a pool.

A request (:func:`handle`) runs on a thread inside its own netns: it binds
``HOST:PORT`` (the same for every request), connects to itself, sends
``hello from request N``, echoes it back and checks the reply, and returns
its netns's cookie. The baselines make that netns inside the request
(:func:`fresh_netns_request`) or with ``ip netns`` (:func:`ip_netns_request`).
Shared by ``python -m nspool demo`` and ``bench/pool_paced.py``.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
from collections.abc import Callable

from . import _sys
from .kinds import Kind
from .net import loopback_up
from .nsset import NamespaceSet

__all__ = [
    "HOST",
    "PORT",
    "exchange",
    "fresh_netns_request",
    "handle",
    "ip_netns_request",
    "netns_cookie",
    "open_listener",
]

#: Every request binds this address, each in its own netns.
HOST = "127.0.0.1"
PORT = 8080
#: Seconds a request's socket waits before it gives up: a broken request
#: fails instead of hanging the demo.
SOCKET_TIMEOUT = 5.0
#: ``<asm-generic/socket.h>``; Python 3.11 does not name it (Linux 5.14+).
SO_NETNS_COOKIE = getattr(socket, "SO_NETNS_COOKIE", 71)

_THREAD_NETNS = "/proc/thread-self/ns/net"


# -- the request ------------------------------------------------------------------


def open_listener() -> socket.socket:
    """A TCP listener on ``HOST:PORT`` in the calling thread's netns (the
    thread's namespace decides, whichever thread uses the socket later).

    Raises ``OSError`` (``EADDRINUSE``) if the address is taken in that
    netns, including by a connection still in ``TIME_WAIT``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(SOCKET_TIMEOUT)
        # No SO_REUSEADDR, on purpose: a netns that already served a request
        # must refuse the port, which shows each request had a fresh one.
        sock.bind((HOST, PORT))
        sock.listen(1)
    except BaseException:
        sock.close()
        raise
    return sock


def exchange(listener: socket.socket, request: int) -> int | None:
    """Connect to ``listener`` from the calling thread's netns, send
    ``hello from request N``, accept, echo it back and check the reply.
    Returns the netns cookie of ``listener`` (see :func:`netns_cookie`).

    Blocks the calling thread for about 0.1 ms; raises ``OSError`` or
    ``ValueError`` (a wrong reply) if the exchange fails. The listener stays
    open; the connection is closed.
    """
    message = f"hello from request {request}".encode()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.settimeout(SOCKET_TIMEOUT)
        client.connect(listener.getsockname())
        conn, _peer = listener.accept()
        with conn:
            conn.settimeout(SOCKET_TIMEOUT)
            client.sendall(message)
            conn.sendall(_receive(conn, len(message)))
            reply = _receive(client, len(message))
    if reply != message:
        raise ValueError(f"request {request}: sent {message!r}, got back {reply!r}")
    return netns_cookie(listener)


def handle(request: int) -> int | None:
    """Serve request number ``request`` in the calling thread's netns: bind
    ``HOST:PORT``, talk to itself (:func:`exchange`), close. Returns the
    netns cookie. Meant for a thread inside a fresh netns with ``lo`` up."""
    with open_listener() as listener:
        return exchange(listener, request)


def netns_cookie(sock: socket.socket) -> int | None:
    """The cookie of the netns ``sock`` lives in: unique for the kernel's
    uptime, unlike the netns's inode number. ``None`` before Linux 5.14."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    except OSError:
        return None
    cookie: int = struct.unpack("=Q", raw)[0]
    return cookie


def _receive(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes from ``sock``, or fewer if it closes first."""
    chunks: list[bytes] = []
    left = size
    while left:
        chunk = sock.recv(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# -- the baselines (on anyio worker threads) ----------------------------------------


def _visit(enter: Callable[[], None], request: int) -> int | None:
    """On the calling thread: ``enter()`` moves it into a netns; then ``lo``
    up, :func:`handle`, and back home by fd, checked.

    The thread is one of anyio's, reused for other work: if going home
    failed it would stay in the netns, so that raises (and ends the demo).
    """
    home = _sys.open_ns(_THREAD_NETNS, Kind.NET)
    try:
        home_id = os.fstat(home).st_ino
        enter()
        try:
            loopback_up()
            return handle(request)
        finally:
            _sys.setns(home, Kind.NET)
            if os.stat(_THREAD_NETNS).st_ino != home_id:
                raise RuntimeError("a baseline thread could not go back to its netns")
    finally:
        os.close(home)


def fresh_netns_request(request: int) -> int | None:
    """The baseline: a netns made on the spot by the request's own thread."""
    return _visit(lambda: _sys.unshare(Kind.NET), request)


def _ip(*args: str) -> None:
    """Run ``ip ARGS``; raise ``RuntimeError`` with its message if it fails."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def ip_netns_request(request: int, name: str) -> int | None:
    """A named netns made and deleted by ``ip netns`` around the request."""
    _ip("netns", "add", name)
    try:
        with NamespaceSet.from_name(name) as s:
            fd = s.fds(Kind.NET)[Kind.NET]
            return _visit(lambda: _sys.setns(fd, Kind.NET), request)
    finally:
        _ip("netns", "del", name)
